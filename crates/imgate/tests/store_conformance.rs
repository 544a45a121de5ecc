//! The `Store` contract (see `store/mod.rs`), checked against every engine with the same
//! tests. A new engine adds one line to `engines!` at the bottom.

mod common;

use common::store::msg;

use std::sync::Arc;
use std::time::Duration;

use imgate::config::StoreConfig;
use imgate::store::{Appended, DynStore, Erased, Fanout, StoreError, Watch};
use imgate_protocol::EncodedMessage;
use parking_lot::Mutex;
use tempfile::TempDir;

/// Records what the store fanned out, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, u64, String)>>);

impl Fanout for Recorder {
    fn committed(&self, user: &str, seq: u64, frame: &EncodedMessage) {
        let id = frame.decode(seq).unwrap().data.id;
        self.0.lock().push((user.to_owned(), seq, id));
    }
}

/// A way to open a store of one engine, over one place that survives reopening.
trait Engine {
    fn open(&self, config: &StoreConfig, fanout: Arc<dyn Fanout>) -> DynStore;

    /// The mailboxes of the sentinel messages [`fanned`] appends: one is enough where
    /// fan-out has one order for all users; a cluster needs one on each shard.
    fn sentinels(&self) -> Vec<String> {
        vec![SENTINEL.into()]
    }

    /// Fan-out comes in commit order across users, not only per user (one broker).
    fn ordered(&self) -> bool {
        true
    }
}

/// The mailbox of the sentinel message [`fanned`] appends.
const SENTINEL: &str = "~sentinel";

/// `list` as far as `e` promises an order: whole, or (a cluster, whose users' channels
/// live on several shards) per user.
fn as_promised(e: &impl Engine, mut list: Vec<(String, u64, String)>) -> Vec<(String, u64, String)> {
    if !e.ordered() {
        // Stable: each user's own order stays.
        list.sort_by(|a, b| a.0.cmp(&b.0));
    }
    list
}

/// Everything fanned out before now, in order. Appends a sentinel message (one per shard)
/// and waits for it (fan-out is in commit order, across users or per shard), so a
/// duplicate or stray fan-out of an earlier commit is in the list, not lost behind a
/// count; fails if a sentinel never comes (the Redis engine fans out through pub/sub, a
/// moment after the commit).
async fn fanned(e: &impl Engine, store: &DynStore, rec: &Recorder) -> Vec<(String, u64, String)> {
    let sentinels = e.sentinels();
    let names: Vec<&str> = sentinels.iter().map(String::as_str).collect();
    let _w = watching(store, &names).await;
    for s in &sentinels {
        store.append(vec![msg(s, "sentinel", "x", None)]).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        {
            let got = rec.0.lock();
            let mut seen = 0;
            for (i, (user, _, _)) in got.iter().enumerate() {
                if sentinels.contains(user) {
                    seen += 1;
                    if seen == sentinels.len() {
                        let before = got[..i].iter().filter(|(u, _, _)| !sentinels.contains(u)).cloned();
                        return as_promised(e, before.collect());
                    }
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sentinel was never fanned out: {:?}",
            rec.0.lock()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Watch `users` ([`imgate::store::Store::watch`]: an engine with a broker fans out only
/// the commits of users watched), once the store is ready.
async fn watching(store: &DynStore, users: &[&str]) -> Vec<Watch> {
    let mut held = Vec::new();
    for u in users {
        held.push(store.watch(u).await);
    }
    common::eventually("the store is ready", || async { store.ready().await.ok() }).await;
    held
}

struct Sqlite(TempDir);

impl Sqlite {
    fn new() -> Sqlite {
        Sqlite(tempfile::tempdir().unwrap())
    }
}

impl Engine for Sqlite {
    fn open(&self, config: &StoreConfig, fanout: Arc<dyn Fanout>) -> DynStore {
        imgate::store::sqlite::SqliteStore::open(self.0.path(), config, fanout).unwrap()
    }
}

/// Each test its own redis-server; "reopening" is a new store on the same server.
struct Redis(common::Redis);

impl Redis {
    fn new() -> Redis {
        Redis(common::Redis::start())
    }
}

impl Engine for Redis {
    fn open(&self, config: &StoreConfig, fanout: Arc<dyn Fanout>) -> DynStore {
        imgate::store::redis::RedisStore::open(&self.0.url(), config, fanout).unwrap()
    }
}

/// Each test its own three-master Redis Cluster (`store.redis_mode = "cluster"`).
struct Cluster {
    cluster: common::RedisCluster,
    /// A sentinel mailbox on each master.
    sentinels: Vec<String>,
}

impl Cluster {
    fn new() -> Cluster {
        let cluster = common::RedisCluster::start(3, 0);
        let mut sentinels: Vec<Option<String>> = vec![None; cluster.masters.len()];
        for i in 0.. {
            let name = format!("{SENTINEL}-{i}");
            let slot_of = format!("imgate:m:{{{}:{name}}}:seq", name.len());
            let at = cluster.master_of(&slot_of);
            sentinels[at].get_or_insert(name);
            if sentinels.iter().all(Option::is_some) {
                break;
            }
        }
        Cluster { cluster, sentinels: sentinels.into_iter().flatten().collect() }
    }

    fn config(&self, config: &StoreConfig) -> StoreConfig {
        let mut c = config.clone();
        c.redis_mode = imgate::config::RedisMode::Cluster;
        c.redis_urls = self.cluster.urls();
        c
    }
}

impl Engine for Cluster {
    fn open(&self, config: &StoreConfig, fanout: Arc<dyn Fanout>) -> DynStore {
        let config = self.config(config);
        let target = imgate::redis_conn::Target::from_config(&config).unwrap();
        imgate::store::redis::RedisStore::open_at(&target, &config, fanout).unwrap()
    }

    fn sentinels(&self) -> Vec<String> {
        self.sentinels.clone()
    }

    fn ordered(&self) -> bool {
        false
    }
}

fn stored(seq: u64, id: &str) -> Appended {
    Appended { seq, id: id.into(), duplicate: false }
}

fn open(e: &impl Engine) -> (DynStore, Arc<Recorder>) {
    open_with(e, StoreConfig::default())
}

fn open_with(e: &impl Engine, config: StoreConfig) -> (DynStore, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (e.open(&config, rec.clone()), rec)
}

async fn ids(store: &DynStore, user: &str, after: u64) -> Vec<(u64, String)> {
    store
        .read_after(user, after, 1000, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.seq, s.frame.decode(s.seq).unwrap().data.id))
        .collect()
}

async fn seqs_start_at_one_per_mailbox_in_slice_order(e: impl Engine) {
    let (store, rec) = open(&e);
    let _w = watching(&store, &["a", "b"]).await;
    let got = store
        .append(vec![msg("a", "1", "x", None), msg("b", "2", "x", None), msg("a", "3", "x", None)])
        .await
        .unwrap();
    assert_eq!(got, [stored(1, "1"), stored(1, "2"), stored(2, "3")]);
    let got = store.append(vec![msg("a", "4", "x", None)]).await.unwrap();
    assert_eq!(got, [stored(3, "4")]);
    assert_eq!(
        fanned(&e, &store, &rec).await,
        as_promised(
            &e,
            vec![
                ("a".into(), 1, "1".into()),
                ("b".into(), 1, "2".into()),
                ("a".into(), 2, "3".into()),
                ("a".into(), 3, "4".into())
            ]
        )
    );
    assert_eq!(ids(&store, "a", 0).await, [(1, "1".into()), (2, "3".into()), (3, "4".into())]);
    assert_eq!(ids(&store, "a", 2).await, [(3, "4".into())]);
    assert_eq!(store.read_after("a", 0, 2, usize::MAX).await.unwrap().len(), 2);
    assert!(store.read_after("nobody", 0, 10, usize::MAX).await.unwrap().is_empty());
}

/// A page holds up to `limit` messages and at most `max_bytes` of frames, but always one
/// message when there is one, however large.
async fn pages_are_bounded_in_bytes_and_always_progress(e: impl Engine) {
    let (store, _rec) = open(&e);
    let sizes = [100, 3000, 50, 20_000, 10];
    let batch = sizes.iter().enumerate().map(|(i, n)| msg("a", &format!("{i}{}", "x".repeat(*n)), "x", None));
    store.append(batch.collect()).await.unwrap();
    let all = store.read_after("a", 0, 100, usize::MAX).await.unwrap();
    let len: Vec<usize> = all.iter().map(|m| m.frame.as_stored().len()).collect();
    assert_eq!(len.len(), 5);
    let page = |after: u64, limit: usize, max_bytes: usize| {
        let store = store.clone();
        async move {
            let got = store.read_after("a", after, limit, max_bytes).await.unwrap();
            got.iter().map(|m| m.seq).collect::<Vec<_>>()
        }
    };
    // Exactly as many as fit.
    assert_eq!(page(0, 100, len[0] + len[1]).await, [1, 2]);
    assert_eq!(page(0, 100, len[0] + len[1] - 1).await, [1]);
    assert_eq!(page(0, 100, len[0] + len[1] + len[2]).await, [1, 2, 3]);
    // One message larger than the bound still comes, alone.
    assert_eq!(page(0, 100, 1).await, [1]);
    assert_eq!(page(3, 100, len[3] - 1).await, [4]);
    assert_eq!(page(3, 100, len[3] + len[4]).await, [4, 5]);
    // The count bound still holds, and the end is empty.
    assert_eq!(page(0, 2, usize::MAX).await, [1, 2]);
    assert_eq!(page(5, 100, 1).await, Vec::<u64>::new());
}

async fn duplicates_repeat_the_original_and_are_not_fanned_out(e: impl Engine) {
    let (store, rec) = open(&e);
    let _w = watching(&store, &["a", "b"]).await;
    store.append(vec![msg("a", "m1", "x", Some("k1"))]).await.unwrap();
    // The same key: for the same mailbox a duplicate, in another mailbox a new message,
    // and twice within one batch only once.
    let got = store
        .append(vec![
            msg("a", "m1-retry", "x", Some("k1")),
            msg("b", "m1", "x", Some("k1")),
            msg("a", "m2", "x", Some("k2")),
            msg("a", "m2-again", "x", Some("k2")),
        ])
        .await
        .unwrap();
    assert_eq!(
        got,
        [
            Appended { seq: 1, id: "m1".into(), duplicate: true },
            stored(1, "m1"),
            stored(2, "m2"),
            Appended { seq: 2, id: "m2".into(), duplicate: true },
        ]
    );
    assert_eq!(
        fanned(&e, &store, &rec).await,
        as_promised(
            &e,
            vec![("a".into(), 1, "m1".into()), ("b".into(), 1, "m1".into()), ("a".into(), 2, "m2".into())]
        )
    );
    assert_eq!(ids(&store, "a", 0).await, [(1, "m1".into()), (2, "m2".into())]);
}

async fn history_is_newest_first_by_contact_and_before(e: impl Engine) {
    let (store, _) = open(&e);
    let batch =
        (1..=6).map(|i| msg("u", &i.to_string(), if i % 2 == 0 { "even" } else { "odd" }, None)).collect();
    store.append(batch).await.unwrap();
    let seqs = |v: Vec<imgate::store::Stored>| v.into_iter().map(|s| s.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.history("u", None, None, 10).await.unwrap()), [6, 5, 4, 3, 2, 1]);
    assert_eq!(seqs(store.history("u", Some("even"), None, 10).await.unwrap()), [6, 4, 2]);
    assert_eq!(seqs(store.history("u", Some("odd"), Some(5), 1).await.unwrap()), [3]);
    assert_eq!(seqs(store.history("u", None, Some(3), 10).await.unwrap()), [2, 1]);
    assert!(store.history("u", Some("nobody"), None, 10).await.unwrap().is_empty());
}

async fn delivered_marks_only_rise(e: impl Engine) {
    let (store, _) = open(&e);
    assert_eq!(store.delivered("u").await.unwrap(), 0);
    store.set_delivered("u", 5).await.unwrap();
    store.set_delivered("u", 3).await.unwrap();
    assert_eq!(store.delivered("u").await.unwrap(), 5);
    store.set_delivered("u", 9).await.unwrap();
    assert_eq!(store.delivered("u").await.unwrap(), 9);
    assert_eq!(store.delivered("v").await.unwrap(), 0);
}

async fn everything_survives_reopening_and_seqs_are_never_reused(e: impl Engine) {
    {
        let (store, _) = open(&e);
        store.append(vec![msg("u", "1", "x", Some("k")), msg("u", "2", "x", None)]).await.unwrap();
        store.set_delivered("u", 1).await.unwrap();
        store.close().await;
        assert!(matches!(store.append(vec![msg("u", "3", "x", None)]).await, Err(StoreError::Closed)));
    }
    let (store, _) = open(&e);
    assert_eq!(ids(&store, "u", 0).await, [(1, "1".into()), (2, "2".into())]);
    assert_eq!(store.delivered("u").await.unwrap(), 1);
    let got =
        store.append(vec![msg("u", "1-retry", "x", Some("k")), msg("u", "3", "x", None)]).await.unwrap();
    assert_eq!(got, [Appended { seq: 1, id: "1".into(), duplicate: true }, stored(3, "3")]);
}

async fn retention_by_count_keeps_seqs_rising(e: impl Engine) {
    let config = StoreConfig { retention_max_messages: 3, ..StoreConfig::default() };
    let (store, _) = open_with(&e, config);
    let batch = (1..=5).map(|i| msg("u", &i.to_string(), "x", None)).collect();
    store.append(batch).await.unwrap();
    // An engine may hold the count on append already (Redis); after trim, it holds.
    store.trim().await.unwrap();
    assert_eq!(ids(&store, "u", 0).await.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(store.append(vec![msg("u", "6", "x", None)]).await.unwrap(), [stored(6, "6")]);
}

/// Count retention is per conversation (mailbox and contact): a flood from one sender
/// removes that sender's oldest messages, never another's.
async fn retention_by_count_never_lets_one_sender_erase_another(e: impl Engine) {
    let config = StoreConfig { retention_max_messages: 3, ..StoreConfig::default() };
    let (store, _) = open_with(&e, config);
    store
        .append(vec![msg("agent", "f1", "follower", None), msg("agent", "f2", "follower", None)])
        .await
        .unwrap();
    for i in 1..=20 {
        store.append(vec![msg("agent", &format!("x{i}"), "flooder", None)]).await.unwrap();
    }
    store.trim().await.unwrap();
    assert_eq!(
        ids(&store, "agent", 0).await,
        [(1, "f1".into()), (2, "f2".into()), (20, "x18".into()), (21, "x19".into()), (22, "x20".into())]
    );
    let seqs = |v: Vec<imgate::store::Stored>| v.into_iter().map(|s| s.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.history("agent", Some("follower"), None, 10).await.unwrap()), [2, 1]);
    assert_eq!(seqs(store.history("agent", Some("flooder"), None, 10).await.unwrap()), [22, 21, 20]);
    // The follower's conversation has its own count.
    for i in 3..=5 {
        store.append(vec![msg("agent", &format!("f{i}"), "follower", None)]).await.unwrap();
    }
    store.trim().await.unwrap();
    assert_eq!(seqs(store.history("agent", Some("follower"), None, 10).await.unwrap()), [25, 24, 23]);
    assert_eq!(seqs(store.history("agent", Some("flooder"), None, 10).await.unwrap()), [22, 21, 20]);
}

/// A dedupe key lives no longer than its message: once retention removed the message,
/// the same key is a new message (memory and keys stay bounded by retention).
async fn a_dedupe_key_goes_with_its_message(e: impl Engine) {
    let config = StoreConfig { retention_max_messages: 2, ..StoreConfig::default() };
    let (store, _) = open_with(&e, config);
    store.append(vec![msg("u", "m1", "x", Some("k1"))]).await.unwrap();
    store.append(vec![msg("u", "m2", "x", Some("k2")), msg("u", "m3", "x", Some("k3"))]).await.unwrap();
    store.trim().await.unwrap();
    assert_eq!(ids(&store, "u", 0).await, [(2, "m2".into()), (3, "m3".into())]);
    let got = store
        .append(vec![msg("u", "m1-again", "x", Some("k1")), msg("u", "m3-retry", "x", Some("k3"))])
        .await
        .unwrap();
    assert_eq!(got, [stored(4, "m1-again"), Appended { seq: 3, id: "m3".into(), duplicate: true }]);
}

/// After `store.dedupe_window`, a retry with the same key is a new message.
async fn a_dedupe_key_expires_after_the_window(e: impl Engine) {
    let config = StoreConfig { dedupe_window: Duration::ZERO, ..StoreConfig::default() };
    let (store, _) = open_with(&e, config);
    store.append(vec![msg("u", "m1", "x", Some("k"))]).await.unwrap();
    // Windows are whole seconds in the embedded engine: retry until the key is older.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let mut retries = 0;
    loop {
        store.trim().await.unwrap();
        let got = store.append(vec![msg("u", "m1-retry", "x", Some("k"))]).await.unwrap();
        if !got[0].duplicate {
            assert_eq!(got, [stored(2, "m1-retry")]);
            break;
        }
        assert_eq!(got, [Appended { seq: 1, id: "m1".into(), duplicate: true }]);
        assert!(tokio::time::Instant::now() < deadline, "the key outlived its window ({retries} retries)");
        retries += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ids(&store, "u", 0).await, [(1, "m1".into()), (2, "m1-retry".into())]);
}

async fn retention_by_age_empties_a_mailbox_without_resetting_it(e: impl Engine) {
    let config = StoreConfig { retention_max_age: Duration::ZERO, ..StoreConfig::default() };
    let (store, _) = open_with(&e, config);
    store.append(vec![msg("u", "1", "x", None), msg("u", "2", "x", None)]).await.unwrap();
    // Ages are whole seconds: wait for these to become older than "now".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.trim().await.unwrap() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "age retention never removed anything");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ids(&store, "u", 0).await.is_empty());
    assert_eq!(store.append(vec![msg("u", "3", "x", None)]).await.unwrap(), [stored(3, "3")]);
    // Emptied again and reopened: the mailbox still knows where it was.
    while store.trim().await.unwrap() == 0 {
        assert!(tokio::time::Instant::now() < deadline + Duration::from_secs(20), "age retention stalled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.close().await;
    drop(store);
    let (store, _) =
        open_with(&e, StoreConfig { retention_max_age: Duration::ZERO, ..StoreConfig::default() });
    assert_eq!(store.last_seq("u").await.unwrap(), 3);
    assert_eq!(store.append(vec![msg("u", "4", "x", None)]).await.unwrap(), [stored(4, "4")]);
}

async fn concurrent_appends_get_distinct_contiguous_seqs(e: impl Engine) {
    let (store, rec) = open(&e);
    let _w = watching(&store, &["hot"]).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..50 {
                let got = store.append(vec![msg("hot", &format!("{t}-{i}"), "x", None)]).await.unwrap();
                seqs.push(got[0].seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>());
    // Fan-out saw them in seq order.
    let order: Vec<u64> = fanned(&e, &store, &rec).await.iter().map(|(_, s, _)| *s).collect();
    assert_eq!(order, (1..=400).collect::<Vec<_>>());
    assert!(store.ready().await.is_ok());
}

/// Mailbox names are data: no user id, whatever it holds, reaches another's messages.
async fn mailboxes_are_separate_whatever_their_names(e: impl Engine) {
    let (store, _) = open(&e);
    store.append(vec![msg("a:d:c:s", "1", "x", None)]).await.unwrap();
    // A dedupe key shaped like another mailbox's name.
    store.append(vec![msg("a", "2", "x", Some("c:s:log"))]).await.unwrap();
    store.append(vec![msg("a:d:c:s", "3", "x", None), msg("a", "4", "x", Some("log"))]).await.unwrap();
    assert_eq!(ids(&store, "a:d:c:s", 0).await, [(1, "1".into()), (2, "3".into())]);
    assert_eq!(ids(&store, "a", 0).await, [(1, "2".into()), (2, "4".into())]);
    assert_eq!(ids(&store, "中文 user", 0).await, []);
}

/// A message carrying media at `path` (as a WeChat image does).
fn with_media(user: &str, id: &str, contact: &str, path: &str) -> imgate::store::NewMessage {
    let mut m = msg(user, id, contact, None);
    let data = imgate_protocol::MessageData {
        id: id.into(),
        name: String::new(),
        avatar: String::new(),
        msg_type: "image".into(),
        contact_id: contact.into(),
        company_id: String::new(),
        send_time: 1,
        msg: serde_json::json!({"media_path": path}),
        direction: None,
        status: None,
        window: None,
    };
    m.frame = EncodedMessage::encode(&data, imgate_protocol::Code::IMAGE);
    m
}

/// Erasing a contact (docs/operations.md, "Erasure") removes every message with them in
/// every mailbox, and their own mailbox's, with their dedupe keys; everyone else's stay
/// exactly; seqs are never reused, after a reopen too; a second erase finds nothing.
async fn erasing_a_contact_removes_its_messages_everywhere_and_keeps_seqs(e: impl Engine) {
    const IMG: &str = "/im_component/wx_official_account/media/abc123";
    {
        let (store, rec) = open(&e);
        let _w = watching(&store, &["a", "b", "c", "F"]).await;
        store
            .append(vec![
                msg("a", "1", "F", Some("k1")),
                msg("a", "2", "G", Some("k2")),
                msg("b", "3", "F", None),
                with_media("b", "4", "F", IMG),
                msg("F", "5", "a", Some("k5")),
                msg("a", "6", "F", None),
                msg("c", "7", "G", None),
            ])
            .await
            .unwrap();
        let erased = store.erase("F").await.unwrap();
        assert_eq!(
            erased,
            Erased {
                messages: 5,
                mailboxes: vec!["F".into(), "a".into(), "b".into()],
                media_paths: vec![IMG.into()],
            }
        );
        assert_eq!(ids(&store, "a", 0).await, [(2, "2".into())]);
        assert_eq!(ids(&store, "b", 0).await, []);
        assert_eq!(ids(&store, "F", 0).await, []);
        assert_eq!(ids(&store, "c", 0).await, [(1, "7".into())]);
        assert!(store.history("a", Some("F"), None, 10).await.unwrap().is_empty());
        assert_eq!(store.history("a", None, None, 10).await.unwrap().len(), 1);
        // Idempotent: nothing is left to remove.
        assert_eq!(store.erase("F").await.unwrap(), Erased::default());
        // Erasing wrote nothing to fan out: the sentinel comes first after the appends.
        let after: Vec<String> = fanned(&e, &store, &rec).await.into_iter().map(|(_, _, id)| id).collect();
        let users = [("a", "1"), ("a", "2"), ("b", "3"), ("b", "4"), ("F", "5"), ("a", "6"), ("c", "7")];
        let want = as_promised(&e, users.iter().map(|(u, id)| (u.to_string(), 0, id.to_string())).collect());
        assert_eq!(after, want.into_iter().map(|(_, _, id)| id).collect::<Vec<_>>());
        // The seqs are where they were, though each mailbox's highest was F's.
        assert_eq!(store.last_seq("a").await.unwrap(), 3);
        assert_eq!(store.last_seq("b").await.unwrap(), 2);
        assert_eq!(store.last_seq("F").await.unwrap(), 1);
        // The dedupe keys went with their messages; another's stayed.
        let got = store
            .append(vec![msg("a", "1-again", "F", Some("k1")), msg("a", "2-retry", "G", Some("k2"))])
            .await
            .unwrap();
        assert_eq!(got, [stored(4, "1-again"), Appended { seq: 2, id: "2".into(), duplicate: true }]);
        assert_eq!(
            store.append(vec![msg("F", "5-again", "a", Some("k5"))]).await.unwrap(),
            [stored(2, "5-again")]
        );
        assert_eq!(store.erase("F").await.unwrap().messages, 2);
        store.close().await;
    }
    // Reopened: an emptied mailbox still knows where its seqs were.
    let (store, _) = open(&e);
    assert_eq!(store.append(vec![msg("b", "8", "H", None)]).await.unwrap(), [stored(3, "8")]);
    assert_eq!(store.append(vec![msg("F", "9", "a", None)]).await.unwrap(), [stored(3, "9")]);
    assert_eq!(store.append(vec![msg("a", "10", "F", None)]).await.unwrap(), [stored(5, "10")]);
}

macro_rules! engines {
    ($($engine:ident => $make:expr),* $(,)?) => {$(
        mod $engine {
            use super::*;
            #[tokio::test] async fn seqs() { seqs_start_at_one_per_mailbox_in_slice_order($make).await }
            #[tokio::test] async fn page_bytes() { pages_are_bounded_in_bytes_and_always_progress($make).await }
            #[tokio::test] async fn duplicates() { duplicates_repeat_the_original_and_are_not_fanned_out($make).await }
            #[tokio::test] async fn history() { history_is_newest_first_by_contact_and_before($make).await }
            #[tokio::test] async fn delivered() { delivered_marks_only_rise($make).await }
            #[tokio::test] async fn reopen() { everything_survives_reopening_and_seqs_are_never_reused($make).await }
            #[tokio::test] async fn retention_count() { retention_by_count_keeps_seqs_rising($make).await }
            #[tokio::test] async fn retention_per_conversation() { retention_by_count_never_lets_one_sender_erase_another($make).await }
            #[tokio::test] async fn dedupe_bounded_by_retention() { a_dedupe_key_goes_with_its_message($make).await }
            #[tokio::test] async fn dedupe_window() { a_dedupe_key_expires_after_the_window($make).await }
            #[tokio::test] async fn retention_age() { retention_by_age_empties_a_mailbox_without_resetting_it($make).await }
            #[tokio::test] async fn concurrency() { concurrent_appends_get_distinct_contiguous_seqs($make).await }
            #[tokio::test] async fn names() { mailboxes_are_separate_whatever_their_names($make).await }
            #[tokio::test] async fn erase() { erasing_a_contact_removes_its_messages_everywhere_and_keeps_seqs($make).await }
        }
    )*};
}

engines! {
    sqlite => Sqlite::new(),
    redis => Redis::new(),
    redis_cluster => Cluster::new(),
}

/// Work over every user runs on one node a period (#12): two nodes on one Redis, and the
/// lease goes to the first that asks; the other, and the first again, are refused until
/// it runs out. Another lease is another name.
#[tokio::test]
async fn a_lease_goes_to_one_node_on_one_redis_until_it_runs_out() {
    let e = Redis::new();
    let (a, _) = open(&e);
    let (b, _) = open(&e);
    let period = Duration::from_secs(60);
    assert!(a.lease("retention", period).await.unwrap());
    assert!(!b.lease("retention", period).await.unwrap());
    assert!(!a.lease("retention", period).await.unwrap());
    assert!(b.lease("other-work", period).await.unwrap());
    // A short lease runs out; then it is anyone's again.
    assert!(a.lease("short", Duration::from_millis(50)).await.unwrap());
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while !b.lease("short", Duration::from_secs(60)).await.unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "the lease never ran out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One process alone (the embedded store) always gets it.
    let s = Sqlite::new();
    let (one, _) = open(&s);
    assert!(one.lease("retention", period).await.unwrap());
    assert!(one.lease("retention", period).await.unwrap());
}

/// A node hears only its users (#12): the Redis engine fans out a user's commits while the
/// user is watched on it, and none of an unwatched user's, before or after.
#[tokio::test]
async fn the_redis_engine_fans_out_only_watched_users() {
    let e = Redis::new();
    let (store, rec) = open(&e);
    let (other, _) = open(&e);
    let w = watching(&store, &["mine"]).await;
    let got = |user: &'static str| {
        let rec = rec.clone();
        move || rec.0.lock().iter().filter(|(u, _, _)| u == user).count()
    };
    // Through another node: the broker carries it; "theirs" is watched nowhere.
    other.append(vec![msg("theirs", "t1", "x", None), msg("mine", "m1", "x", None)]).await.unwrap();
    let after: Vec<String> = fanned(&e, &store, &rec).await.into_iter().map(|(_, _, id)| id).collect();
    assert_eq!(after, ["m1"], "heard only the watched user's");
    // Unwatched: the channel goes (Redis says no one listens), and nothing more is heard.
    drop(w);
    let channel = format!("imgate:u:{}:mine", "mine".len());
    let c = ::redis::Client::open(e.0.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    common::eventually("the node still listens to the user's channel", || {
        let (mut c, ch) = (c.clone(), channel.clone());
        async move {
            let n: Vec<(String, i64)> =
                ::redis::cmd("PUBSUB").arg("NUMSUB").arg(&ch).query_async(&mut c).await.unwrap();
            (n[0].1 == 0).then_some(())
        }
    })
    .await;
    other.append(vec![msg("mine", "m2", "x", None)]).await.unwrap();
    let mine = got("mine");
    fanned(&e, &store, &rec).await;
    assert_eq!(mine(), 1, "nothing heard once unwatched: {:?}", rec.0.lock());
}

/// Commits in a Redis Cluster (#12, ARCHITECTURE.md): a send to two mailboxes on two
/// shards, one of which refuses writes (out of memory), is not acknowledged, though the
/// other shard committed its part; the retry with the same dedupe key, once the shard
/// takes writes again, completes it: each mailbox holds the message once, the first
/// answers that it had it, and seqs go on contiguous.
#[tokio::test]
async fn a_cluster_append_cut_short_between_mailboxes_is_refused_and_completed_by_its_retry() {
    let e = Cluster::new();
    let (store, rec) = open(&e);
    // Two users on two different masters.
    let names: Vec<String> = (0..).map(|i| format!("user-{i}")).take(64).collect();
    let at = |u: &str| e.cluster.master_of(&format!("imgate:m:{{{}:{u}}}:seq", u.len()));
    let a = names[0].clone();
    let b = names.iter().find(|u| at(u) != at(&a)).expect("a user on another master").clone();
    let _w = watching(&store, &[a.as_str(), b.as_str()]).await;
    let send = || vec![msg(&a, "m1", "F", Some("k1")), msg(&b, "m1", "F", Some("k1"))];

    let full = e.cluster.masters[at(&b)];
    assert_eq!(e.cluster.cli(full, &["config", "set", "maxmemory", "1"]).trim(), "OK");
    let refused = store.append(send()).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "acknowledged though a mailbox refused: {refused:?}"
    );
    assert_eq!(ids(&store, &a, 0).await, [(1, "m1".into())], "the other shard committed its part");
    assert_eq!(ids(&store, &b, 0).await, []);

    assert_eq!(e.cluster.cli(full, &["config", "set", "maxmemory", "0"]).trim(), "OK");
    let got = store.append(send()).await.unwrap();
    assert_eq!(got, [Appended { seq: 1, id: "m1".into(), duplicate: true }, stored(1, "m1")]);
    assert_eq!(ids(&store, &a, 0).await, [(1, "m1".into())]);
    assert_eq!(ids(&store, &b, 0).await, [(1, "m1".into())]);
    let got = store.append(vec![msg(&a, "m2", "F", None), msg(&b, "m2", "F", None)]).await.unwrap();
    assert_eq!(got, [stored(2, "m2"), stored(2, "m2")]);
    // Each mailbox's message was fanned out once.
    let heard = fanned(&e, &store, &rec).await;
    let count = |u: &str, id: &str| heard.iter().filter(|(x, _, i)| x == u && i == id).count();
    assert_eq!(
        (count(&a, "m1"), count(&b, "m1"), count(&a, "m2"), count(&b, "m2")),
        (1, 1, 1, 1),
        "{heard:?}"
    );
}

/// Seq safety (#12): a mailbox last written under another lineage of the data (a promoted
/// replica, a restarted server: a new `master_replid`) may have lost its last writes and
/// their seqs, which clients may hold. Its next seq jumps past any that lineage can have
/// handed out, and then goes on by one; a mailbox of this lineage is untouched.
#[tokio::test]
async fn a_mailbox_written_under_another_lineage_jumps_past_its_seqs() {
    let e = Redis::new();
    let (store, _) = open(&e);
    store
        .append(vec![msg("u", "1", "x", None), msg("u", "2", "x", None), msg("v", "3", "x", None)])
        .await
        .unwrap();
    // As if u's last writes were under a master that is gone.
    let mut c = ::redis::Client::open(e.0.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = format!("imgate:m:{}:u:lineage", "u".len());
    let _: () = ::redis::cmd("SET").arg(&key).arg("an-old-master").query_async(&mut c).await.unwrap();
    let got = store.append(vec![msg("u", "4", "x", None), msg("v", "5", "x", None)]).await.unwrap();
    let jumped = got[0].seq;
    assert!(jumped > 1_000_000_000_000_000, "u jumped to the clock in microseconds: {jumped}");
    assert_eq!(got[1], stored(2, "5"), "v, of this lineage, goes on by one");
    assert_eq!(store.append(vec![msg("u", "6", "x", None)]).await.unwrap(), [stored(jumped + 1, "6")]);
    assert_eq!(store.last_seq("u").await.unwrap(), jumped + 1);
    // A client holding seq 2 gets everything after it, nothing twice.
    assert_eq!(ids(&store, "u", 2).await, [(jumped, "4".into()), (jumped + 1, "6".into())]);
}
