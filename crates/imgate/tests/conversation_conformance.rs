//! The `Conversations` contract (see `inbox/mod.rs`), checked against every engine with
//! the same tests. A new engine adds one line to `engines!` at the bottom.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use imgate::inbox::model::{ConvState, Conversation, ListQuery, Page, Rank, View, page};
use imgate::inbox::{DynConversations, Edit, InboxError};
use serde_json::json;
use tempfile::TempDir;

/// A way to open the conversations of one engine, over one place that survives reopening.
trait Engine {
    fn open(&self) -> DynConversations;
}

struct Sqlite(TempDir);

impl Engine for Sqlite {
    fn open(&self) -> DynConversations {
        imgate::inbox::sqlite::SqliteConversations::open(self.0.path()).unwrap()
    }
}

/// Each test its own redis-server; "reopening" is a new node on the same server.
struct Redis(common::Redis);

impl Engine for Redis {
    fn open(&self) -> DynConversations {
        imgate::inbox::redis::RedisConversations::open(&self.0.url()).unwrap()
    }
}

/// Each test its own three-master Redis Cluster: the inbox's keys share one hash tag.
struct Cluster(common::RedisCluster);

impl Engine for Cluster {
    fn open(&self) -> DynConversations {
        let config = imgate::config::StoreConfig {
            redis_mode: imgate::config::RedisMode::Cluster,
            redis_urls: self.0.urls(),
            ..Default::default()
        };
        let target = imgate::redis_conn::Target::from_config(&config).unwrap();
        imgate::inbox::redis::RedisConversations::open_at(&target).unwrap()
    }
}

fn edit(
    f: impl Fn(Option<Conversation>) -> Result<Option<Conversation>, InboxError> + Send + Sync + 'static,
) -> Edit {
    Arc::new(f)
}

fn create(appid: &'static str, contact: &'static str) -> Edit {
    edit(move |cur| Ok(Some(cur.unwrap_or_else(|| Conversation::new(appid, contact, "acme")))))
}

async fn an_update_creates_and_changes_and_a_refused_one_stores_nothing(e: impl Engine) {
    let c = e.open();
    assert_eq!(c.get("wxA", "o1").await.unwrap(), None);
    let (before, after) = c.update("wxA", "o1", create("wxA", "o1")).await.unwrap();
    assert_eq!(before, None);
    assert_eq!(after.as_ref().unwrap().contact_id, "o1");
    // Ok(None): nothing written, the record as it was.
    let (before, after) = c.update("wxA", "o1", edit(|_| Ok(None))).await.unwrap();
    assert_eq!((before.unwrap().contact_id.as_str(), after), ("o1", None));
    // A refusal: its error, and nothing written.
    let refused = c
        .update(
            "wxA",
            "o1",
            edit(|cur| {
                let _changed = Conversation { assignee: Some("x".into()), ..cur.unwrap() };
                Err(InboxError::Taken { assignee: "someone".into() })
            }),
        )
        .await;
    assert!(matches!(refused, Err(InboxError::Taken { .. })), "{refused:?}");
    assert_eq!(c.get("wxA", "o1").await.unwrap().unwrap().assignee, None);
    let mut names: Vec<String> = c.list("wxA").await.unwrap().into_iter().map(|c| c.contact_id).collect();
    names.sort();
    assert_eq!(names, vec!["o1"]);
    assert_eq!(c.list("wxB").await.unwrap(), vec![]);
}

async fn concurrent_updates_lose_nothing_and_a_claim_race_has_one_winner(e: impl Engine) {
    // Two handles: with Redis, two nodes.
    let (one, two) = (e.open(), e.open());
    one.update("wxA", "o1", create("wxA", "o1")).await.unwrap();
    let bump = edit(|cur| {
        let mut c = cur.unwrap();
        *c.unread.entry("agent".into()).or_default() += 1;
        Ok(Some(c))
    });
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (c, b) = (if i % 2 == 0 { one.clone() } else { two.clone() }, bump.clone());
            tokio::spawn(async move { c.update("wxA", "o1", b).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(one.get("wxA", "o1").await.unwrap().unwrap().unread.get("agent"), Some(&40));
    let claims: Vec<_> = (0..10)
        .map(|i| {
            let c = if i % 2 == 0 { one.clone() } else { two.clone() };
            let me = format!("agent{i}");
            tokio::spawn(async move {
                let me2 = me.clone();
                let claim = edit(move |cur| {
                    let mut c = cur.unwrap();
                    match &c.assignee {
                        Some(a) => Err(InboxError::Taken { assignee: a.clone() }),
                        None => {
                            c.assignee = Some(me2.clone());
                            Ok(Some(c))
                        }
                    }
                });
                (me, c.update("wxA", "o1", claim).await)
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers_saw = Vec::new();
    for t in claims {
        match t.await.unwrap() {
            (me, Ok(_)) => winners.push(me),
            (_, Err(InboxError::Taken { assignee })) => losers_saw.push(assignee),
            (_, Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(losers_saw, vec![winners[0].clone(); 9]);
    assert_eq!(two.get("wxA", "o1").await.unwrap().unwrap().assignee, Some(winners[0].clone()));
}

async fn everything_survives_reopening(e: impl Engine) {
    let c = e.open();
    c.update(
        "wxA",
        "o1",
        edit(|_| {
            let mut c = Conversation::new("wxA", "o1", "acme");
            c.unread = BTreeMap::from([("a".into(), 3)]);
            c.assignee = Some("a".into());
            Ok(Some(c))
        }),
    )
    .await
    .unwrap();
    c.set_canned("wxA", json!([{"shortcut": "hi", "text": "您好"}])).await.unwrap();
    drop(c);
    let c = e.open();
    let got = c.get("wxA", "o1").await.unwrap().unwrap();
    assert_eq!((got.assignee.as_deref(), got.unread.get("a")), (Some("a"), Some(&3)));
    assert_eq!(c.canned("wxA").await.unwrap(), json!([{"shortcut": "hi", "text": "您好"}]));
}

async fn canned_replies_are_per_account(e: impl Engine) {
    let c = e.open();
    assert_eq!(c.canned("wxA").await.unwrap(), json!([]));
    c.set_canned("wxA", json!([{"shortcut": "a", "text": "A"}])).await.unwrap();
    c.set_canned("wxB", json!([{"shortcut": "b", "text": "B"}])).await.unwrap();
    c.set_canned("wxA", json!([{"shortcut": "a2", "text": "A2"}])).await.unwrap();
    assert_eq!(c.canned("wxA").await.unwrap(), json!([{"shortcut": "a2", "text": "A2"}]));
    assert_eq!(c.canned("wxB").await.unwrap(), json!([{"shortcut": "b", "text": "B"}]));
}

async fn presence_counts_sockets_and_remembers_away(e: impl Engine) {
    let c = e.open();
    assert_eq!(c.presence("a").await.unwrap().status(), "offline");
    assert!(c.connected("a").await.unwrap(), "the first socket brings a online");
    assert!(!c.connected("a").await.unwrap(), "a second socket changes nothing");
    assert_eq!(c.presence("a").await.unwrap().connections, 2);
    c.set_away("a", true).await.unwrap();
    assert_eq!(c.presence("a").await.unwrap().status(), "away");
    assert!(!c.disconnected("a", 1_000).await.unwrap());
    assert!(c.disconnected("a", 2_000).await.unwrap(), "the last socket takes a offline");
    let p = c.presence("a").await.unwrap();
    assert_eq!((p.status(), p.offline_since, p.away), ("offline", Some(2_000), true));
    c.set_away("a", false).await.unwrap();
    assert!(c.connected("a").await.unwrap());
    assert_eq!(c.presence("a").await.unwrap().status(), "online");
    assert_eq!(c.presence("b").await.unwrap().status(), "offline", "agents are separate");
    // Away is the agent's choice and survives a restart; sockets do not.
    c.set_away("b", true).await.unwrap();
    drop(c);
    let again = e.open();
    let b = again.presence("b").await.unwrap();
    assert_eq!((b.away, b.connections), (true, 0), "away is remembered across reopening");
}

async fn many_updates_apply_each_and_a_refusal_stops_only_its_own(e: impl Engine) {
    let c = e.open();
    c.update("~u", "o1", create("~u", "o1")).await.unwrap();
    let bump = || {
        edit(|cur| {
            let mut v = cur.unwrap_or_else(|| Conversation::new("~u", "new", "acme"));
            *v.unread.entry("u".into()).or_default() += 1;
            Ok(Some(v))
        })
    };
    let refuse = edit(|_| Err(InboxError::BadRequest("no".into())));
    let out = c
        .update_many(vec![
            ("~u".into(), "o1".into(), bump()),
            ("~u".into(), "o2".into(), refuse),
            ("~u".into(), "o3".into(), bump()),
        ])
        .await;
    let outcomes: Vec<bool> = out.iter().map(Result::is_ok).collect();
    assert_eq!(outcomes, vec![true, false, true]);
    assert_eq!(c.get("~u", "o1").await.unwrap().unwrap().unread.get("u"), Some(&1));
    assert_eq!(c.get("~u", "o2").await.unwrap(), None, "the refused one is not written");
    assert_eq!(c.get("~u", "o3").await.unwrap().unwrap().unread.get("u"), Some(&1));
}

async fn conversations_are_separate_whatever_their_names(e: impl Engine) {
    let c = e.open();
    c.update("a:b", "c", create("a:b", "c")).await.unwrap();
    c.update("a", "b:c", create("a", "b:c")).await.unwrap();
    assert_eq!(c.get("a:b", "c").await.unwrap().unwrap().appid, "a:b");
    assert_eq!(c.get("a", "b:c").await.unwrap().unwrap().appid, "a");
    assert_eq!(c.list("a").await.unwrap().len(), 1);
    assert_eq!(c.list("a:b").await.unwrap().len(), 1);
}

fn set(assignee: Option<&'static str>, state: ConvState) -> Edit {
    edit(move |cur| {
        let mut c = cur.unwrap();
        c.assignee = assignee.map(str::to_owned);
        c.state = state;
        Ok(Some(c))
    })
}

async fn open_load_follows_assignees_and_states(e: impl Engine) {
    let c = e.open();
    let load = |c: &DynConversations| {
        let c = c.clone();
        async move {
            c.open_load("wxA").await.unwrap().into_iter().filter(|(_, n)| *n > 0).collect::<BTreeMap<_, _>>()
        }
    };
    for f in ["o1", "o2", "o3"] {
        c.update("wxA", f, create("wxA", f)).await.unwrap();
    }
    assert_eq!(load(&c).await, BTreeMap::new());
    c.update("wxA", "o1", set(Some("a"), ConvState::Open)).await.unwrap();
    c.update("wxA", "o2", set(Some("a"), ConvState::Open)).await.unwrap();
    c.update("wxA", "o3", set(Some("b"), ConvState::Open)).await.unwrap();
    assert_eq!(load(&c).await, BTreeMap::from([("a".to_owned(), 2), ("b".to_owned(), 1)]));
    // A transfer moves one; a resolve frees one; a reopen takes it back.
    c.update("wxA", "o2", set(Some("b"), ConvState::Open)).await.unwrap();
    c.update("wxA", "o1", set(Some("a"), ConvState::Resolved)).await.unwrap();
    assert_eq!(load(&c).await, BTreeMap::from([("b".to_owned(), 2)]));
    c.update("wxA", "o1", set(Some("a"), ConvState::Open)).await.unwrap();
    c.update("wxA", "o3", set(None, ConvState::Open)).await.unwrap();
    assert_eq!(load(&c).await, BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]));
    assert_eq!(c.open_load("wxB").await.unwrap().len(), 0, "accounts are separate");
}

/// Every page an engine gives is the reference's (`model::page` over `list`), in every
/// view, state and search, paged by every cursor.
async fn pages_are_the_references(e: impl Engine) {
    let c = e.open();
    // Followers of two accounts, and the viewer's own conversations with other gateway
    // users (`~a`: in its view "mine", never "unassigned").
    for i in 0..36i64 {
        let contact: &'static str = Box::leak(format!("o{i:02}").into_boxed_str());
        let appid = if i >= 30 {
            "~a"
        } else if i % 5 == 0 {
            "wxB"
        } else {
            "wxA"
        };
        c.update(
            appid,
            contact,
            edit(move |_| {
                let mut v = Conversation::new(appid, contact, "acme");
                v.assignee = match i {
                    30.. => None,
                    _ => [None, Some("a".to_owned()), Some("b".to_owned())][(i % 3) as usize].clone(),
                };
                v.state = if i % 4 == 0 { ConvState::Resolved } else { ConvState::Open };
                v.waiting_since = (i % 2 == 0).then_some(1_000 + (i * 7) % 11);
                v.last_at = 2_000 + (i * 13) % 17;
                v.remember_text(if i % 3 == 0 { "where is my PARCEL" } else { "hello" });
                Ok(Some(v))
            }),
        )
        .await
        .unwrap();
    }
    let appids = vec!["wxA".to_owned(), "wxB".to_owned(), "~a".to_owned()];
    let mut all = Vec::new();
    for appid in &appids {
        all.extend(c.list(appid).await.unwrap());
    }
    assert_eq!(all.iter().filter(|c| c.is_direct()).count(), 6);
    for view in [View::Mine, View::Unassigned, View::All, View::Waiting] {
        for state in [None, Some(ConvState::Open), Some(ConvState::Resolved)] {
            for q in [None, Some("parcel".to_owned())] {
                for limit in [1, 7, 50] {
                    let mut cursor = None;
                    loop {
                        let query = ListQuery { view, state, q: q.clone(), limit, cursor: cursor.clone() };
                        let got = c.page(&appids, "a", &query).await.unwrap();
                        let want = page(all.clone(), "a", &query);
                        let ids = |p: &Page| p.0.iter().map(|c| c.contact_id.clone()).collect::<Vec<_>>();
                        assert_eq!((ids(&got), &got.1, &got.2), (ids(&want), &want.1, &want.2), "{query:?}");
                        match got.1 {
                            Some(n) => cursor = Rank::parse(&n),
                            None => break,
                        }
                    }
                }
            }
        }
    }
}

/// Erasure (docs/operations.md): removing a conversation takes its record, its place in
/// the list and its count against its assignee, and nothing of another's; twice is once.
async fn a_removed_conversation_is_gone_with_its_load(e: impl Engine) {
    let c = e.open();
    for f in ["o1", "o2"] {
        c.update("wxA", f, create("wxA", f)).await.unwrap();
        c.update("wxA", f, set(Some("a"), ConvState::Open)).await.unwrap();
    }
    c.update("wxB", "o1", create("wxB", "o1")).await.unwrap();
    assert!(c.remove("wxA", "o1").await.unwrap());
    assert_eq!(c.get("wxA", "o1").await.unwrap(), None);
    let names = |v: Vec<Conversation>| v.into_iter().map(|c| c.contact_id).collect::<Vec<_>>();
    assert_eq!(names(c.list("wxA").await.unwrap()), ["o2"]);
    let all = ListQuery { view: View::All, state: None, q: None, limit: 50, cursor: None };
    let got = c.page(&["wxA".to_owned()], "a", &all).await.unwrap();
    assert_eq!(got.0.iter().map(|c| c.contact_id.as_str()).collect::<Vec<_>>(), ["o2"]);
    assert_eq!(got.2["all"], 1);
    let load =
        c.open_load("wxA").await.unwrap().into_iter().filter(|(_, n)| *n > 0).collect::<BTreeMap<_, _>>();
    assert_eq!(load, BTreeMap::from([("a".to_owned(), 1)]));
    // Another account's conversation with the same follower is its own.
    assert_eq!(names(c.list("wxB").await.unwrap()), ["o1"]);
    assert!(!c.remove("wxA", "o1").await.unwrap());
    // Reopened (another node): still gone.
    assert_eq!(e.open().get("wxA", "o1").await.unwrap(), None);
}

macro_rules! engines {
    ($($engine:ident => $make:expr),* $(,)?) => {$(
        mod $engine {
            use super::*;
            #[tokio::test] async fn update() { an_update_creates_and_changes_and_a_refused_one_stores_nothing($make).await }
            #[tokio::test] async fn concurrency() { concurrent_updates_lose_nothing_and_a_claim_race_has_one_winner($make).await }
            #[tokio::test] async fn reopen() { everything_survives_reopening($make).await }
            #[tokio::test] async fn canned() { canned_replies_are_per_account($make).await }
            #[tokio::test] async fn presence() { presence_counts_sockets_and_remembers_away($make).await }
            #[tokio::test] async fn open_load() { open_load_follows_assignees_and_states($make).await }
            #[tokio::test] async fn pages() { pages_are_the_references($make).await }
            #[tokio::test] async fn many() { many_updates_apply_each_and_a_refusal_stops_only_its_own($make).await }
            #[tokio::test] async fn names() { conversations_are_separate_whatever_their_names($make).await }
            #[tokio::test] async fn remove() { a_removed_conversation_is_gone_with_its_load($make).await }
        }
    )*};
}

engines! {
    sqlite => Sqlite(tempfile::tempdir().unwrap()),
    redis => Redis(common::Redis::start()),
    redis_cluster => Cluster(common::RedisCluster::start(3, 0)),
}

/// With Redis, a socket on each of two nodes: one agent online on both; a node that stops
/// saying it is alive stops counting.
#[tokio::test]
async fn redis_presence_spans_nodes() {
    let r = Redis(common::Redis::start());
    let (one, two) = (r.open(), r.open());
    assert!(one.connected("a").await.unwrap());
    assert!(!two.connected("a").await.unwrap(), "already online through the other node");
    assert_eq!(one.presence("a").await.unwrap().connections, 2);
    assert!(!one.disconnected("a", 5).await.unwrap());
    assert!(two.disconnected("a", 6).await.unwrap());
    assert_eq!(one.presence("a").await.unwrap().offline_since, Some(6));
}
