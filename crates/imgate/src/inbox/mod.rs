//! The team inbox (docs/inbox.md): who owns a follower's conversation, its state, unread
//! counts, notes, canned replies and the agents' presence.
//!
//! Conversations live in a [`Conversations`] engine (`sqlite`, a file of its own in the
//! data dir; `redis`, shared by every node), as one record per follower, changed only by
//! an atomic read-modify-write ([`Conversations::update`]): that is what makes a claim
//! race have exactly one winner, across nodes too. Every change the agents must see is
//! committed to each agent's mailbox as a frame (104 conversation, 105 note, 106 presence)
//! through the [`Store`](crate::store::Store), so a console that reconnects with `since`
//! misses none. This module knows nothing of HTTP, sockets or WeChat's API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imgate_protocol::{Code, EncodedMessage, MessageData};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{AccountConfig, Routing};
use crate::store::{DynStore, NewMessage, StoreError};

pub mod direct;
pub mod model;
pub mod redis;
pub mod sqlite;

use model::{ConvState, Conversation, ListQuery};

/// Canned replies one account keeps at most, and their sizes.
pub const CANNED_MAX: usize = 200;
const SHORTCUT_MAX: usize = 32;
const TEXT_MAX: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0} is not an agent of any WeChat account with this follower (wechat.accounts.agents)")]
    NotAgent(String),
    /// Between two gateway users nobody is assigned: only reading applies (400).
    #[error("the conversation with {0} is between two gateway users: it has no assignee, state or notes")]
    Direct(String),
    #[error("no conversation with {0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// Someone else owns it (409, with `data.assignee`).
    #[error("the conversation is already claimed by {assignee}")]
    Taken { assignee: String },
    /// Only the assignee may do this (403).
    #[error("{0}")]
    NotAssignee(String),
}

/// What an agent's presence is, across every node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// Open sockets of the agent, on every live node.
    pub connections: u64,
    pub away: bool,
    /// Unix ms of the last socket's close, when known.
    pub offline_since: Option<i64>,
}

impl Presence {
    pub fn status(&self) -> &'static str {
        match (self.connections, self.away) {
            (0, _) => "offline",
            (_, true) => "away",
            _ => "online",
        }
    }
}

/// A change to a conversation: given the record as stored (or `None`), the record to
/// store, `Ok(None)` to leave it as it is, or an error to refuse (nothing stored). It may
/// run more than once (Redis retries it when another node wrote first).
pub type Edit = Arc<dyn Fn(Option<Conversation>) -> Result<Option<Conversation>, InboxError> + Send + Sync>;

/// The engine contract. Every engine passes `tests/conversation_conformance.rs`.
#[async_trait]
pub trait Conversations: Send + Sync + 'static {
    async fn get(&self, appid: &str, contact: &str) -> Result<Option<Conversation>, StoreError>;
    /// Apply `edit` atomically: no other update of this conversation, on any node, comes
    /// between its read and its write. Returns the record before, and after when written.
    async fn update(
        &self,
        appid: &str,
        contact: &str,
        edit: Edit,
    ) -> Result<(Option<Conversation>, Option<Conversation>), InboxError>;
    /// Apply many edits, each as [`update`](Self::update) would, of distinct conversations;
    /// each outcome is only logged by the caller (the index of gateway users' pairs). By
    /// default one after another; an engine may apply them in one transaction.
    async fn update_many(&self, edits: Vec<(String, String, Edit)>) -> Vec<Result<(), InboxError>> {
        let mut out = Vec::with_capacity(edits.len());
        for (appid, contact, edit) in edits {
            out.push(self.update(&appid, &contact, edit).await.map(|_| ()));
        }
        out
    }
    /// Remove the conversation (erasure): its record, its place in the list and its
    /// count against its assignee. True when there was one.
    async fn remove(&self, appid: &str, contact: &str) -> Result<bool, StoreError>;
    /// Every conversation of an account (the index, not the mailboxes).
    async fn list(&self, appid: &str) -> Result<Vec<Conversation>, StoreError>;
    /// One page of the conversations of `appids` as `viewer` asks for it (see
    /// [`model::page`], whose result every engine must give). By default, in this process
    /// over [`list`](Self::list); an engine may answer from its own index.
    async fn page(
        &self,
        appids: &[String],
        viewer: &str,
        query: &ListQuery,
    ) -> Result<model::Page, StoreError> {
        let mut all = Vec::new();
        for appid in appids {
            all.extend(self.list(appid).await?);
        }
        Ok(model::page(all, viewer, query))
    }
    /// How many open conversations each agent of an account holds (agents holding none
    /// may be missing). Kept with every update, so routing does not read every record.
    async fn open_load(&self, appid: &str) -> Result<HashMap<String, usize>, StoreError>;
    async fn canned(&self, appid: &str) -> Result<Value, StoreError>;
    async fn set_canned(&self, appid: &str, canned: Value) -> Result<(), StoreError>;
    /// A socket of `agent` opened; true when it is the first, on every node.
    async fn connected(&self, agent: &str) -> Result<bool, StoreError>;
    /// A socket of `agent` closed; true when it was the last, on every node.
    async fn disconnected(&self, agent: &str, now_ms: i64) -> Result<bool, StoreError>;
    async fn set_away(&self, agent: &str, away: bool) -> Result<(), StoreError>;
    async fn presence(&self, agent: &str) -> Result<Presence, StoreError>;
    /// Take the right to route `appid`'s conversations, on every node sharing this engine:
    /// routing reads every agent's load, then assigns, and two routers between those steps
    /// would choose the same agent. Returns what [`routing_unlock`](Self::routing_unlock)
    /// needs. By default nothing: one node (the caller also locks in its process).
    async fn routing_lock(&self, _appid: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    async fn routing_unlock(&self, _appid: &str, _token: Option<String>) -> Result<(), StoreError> {
        Ok(())
    }
    /// Say this node is alive (its sockets count); called every few seconds.
    async fn heartbeat(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

pub type DynConversations = Arc<dyn Conversations>;

/// A follower's or an agent's message, as the conversation shows it last.
pub struct Message<'a> {
    pub id: &'a str,
    pub msg_type: &'a str,
    pub msg: &'a Value,
}

impl Message<'_> {
    /// The words a list shows for it: a text's content, a menu's heading, a card's title;
    /// else its type.
    fn text(&self) -> String {
        ["content", "head_content", "title"]
            .iter()
            .find_map(|k| self.msg.get(*k).and_then(Value::as_str).filter(|t| !t.is_empty()))
            .map_or_else(|| format!("[{}]", self.msg_type), str::to_owned)
    }

    fn last(&self, direction: &str) -> Value {
        let preview: String = self.text().chars().take(60).collect();
        json!({"seq": 0, "id": self.id, "msg_type": self.msg_type, "direction": direction, "preview": preview})
    }
}

pub struct Inbox {
    /// Per account: one router at a time in this process (see `Conversations::routing_lock`).
    routing: HashMap<String, tokio::sync::Mutex<()>>,
    accounts: Vec<AccountConfig>,
    mailboxes: DynStore,
    convs: DynConversations,
    direct: direct::Indexer,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// An edit finds no record only when it went between `find` and the update: name it.
fn named(e: InboxError, contact: &str) -> InboxError {
    match e {
        InboxError::NotFound(s) if s.is_empty() => InboxError::NotFound(contact.to_owned()),
        e => e,
    }
}

fn edit(
    f: impl Fn(Option<Conversation>) -> Result<Option<Conversation>, InboxError> + Send + Sync + 'static,
) -> Edit {
    Arc::new(f)
}

impl Inbox {
    pub fn new(accounts: Vec<AccountConfig>, mailboxes: DynStore, convs: DynConversations) -> Arc<Inbox> {
        let direct = direct::Indexer::spawn(convs.clone());
        let routing = accounts.iter().map(|a| (a.appid.clone(), tokio::sync::Mutex::new(()))).collect();
        Arc::new(Inbox { routing, accounts, mailboxes, convs, direct })
    }

    /// A message between two gateway users was committed (see [`direct`]).
    pub async fn direct(
        &self,
        company_id: &str,
        from: &str,
        to: &str,
        to_seq: u64,
        from_seq: Option<u64>,
        m: Message<'_>,
    ) {
        self.direct.message(company_id, from, to, to_seq, from_seq, m);
    }

    /// `user`'s own conversation with the gateway user `contact`, if they have one.
    async fn find_direct(&self, user: &str, contact: &str) -> Result<Option<Conversation>, StoreError> {
        self.convs.get(&direct::account_of(user), contact).await
    }

    /// An action that needs an account's conversation: refused on a pair of gateway users
    /// with its own reason rather than "not found".
    async fn find_followed(
        &self,
        agent: &str,
        contact: &str,
    ) -> Result<(&AccountConfig, Conversation), InboxError> {
        match self.find(agent, contact).await {
            Err(e @ (InboxError::NotFound(_) | InboxError::NotAgent(_))) => {
                match self.find_direct(agent, contact).await? {
                    Some(_) => Err(InboxError::Direct(contact.to_owned())),
                    None => Err(e),
                }
            }
            r => r,
        }
    }

    fn account(&self, appid: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.appid == appid)
    }

    fn accounts_of(&self, agent: &str) -> std::vec::IntoIter<&AccountConfig> {
        self.accounts.iter().filter(|a| a.agents().iter().any(|g| g == agent)).collect::<Vec<_>>().into_iter()
    }

    /// Erasure: the conversations with `contact` in every account, with their notes'
    /// place and unread counts; and between gateway users, the rows of the `users` who
    /// wrote with them (the mailboxes that held their messages) and `contact`'s own. How
    /// many there were, and who lists them (whose consoles must hear of it).
    pub async fn forget(&self, contact: &str, users: &[String]) -> Result<(u64, Vec<String>), StoreError> {
        let (mut n, mut agents) = (0, Vec::new());
        for acct in &self.accounts {
            if self.convs.remove(&acct.appid, contact).await? {
                n += 1;
                agents.extend(acct.agents());
            }
        }
        for user in users {
            if self.convs.remove(&direct::account_of(user), contact).await? {
                n += 1;
                agents.push(user.clone());
            }
        }
        let own = direct::account_of(contact);
        for c in self.convs.list(&own).await? {
            n += u64::from(self.convs.remove(&own, &c.contact_id).await?);
        }
        Ok((n, agents))
    }

    /// The conversation with `contact` in one of `agent`'s accounts.
    async fn find(&self, agent: &str, contact: &str) -> Result<(&AccountConfig, Conversation), InboxError> {
        let mut member = false;
        for acct in self.accounts_of(agent) {
            member = true;
            if let Some(c) = self.convs.get(&acct.appid, contact).await? {
                return Ok((acct, c));
            }
        }
        if member {
            Err(InboxError::NotFound(contact.to_owned()))
        } else {
            Err(InboxError::NotAgent(agent.to_owned()))
        }
    }

    /// Commit one frame to the mailbox of every agent of `acct`.
    async fn tell(
        &self,
        agents: &[String],
        company_id: &str,
        contact: &str,
        code: Code,
        name: &str,
        msg: Value,
    ) -> Result<(), StoreError> {
        let msg_type = match code {
            Code::CONVERSATION => "conversation",
            Code::NOTE => "note",
            _ => "presence",
        };
        let data = MessageData {
            id: uuid::Uuid::now_v7().simple().to_string(),
            name: name.to_owned(),
            avatar: String::new(),
            msg_type: msg_type.to_owned(),
            contact_id: contact.to_owned(),
            company_id: company_id.to_owned(),
            send_time: now(),
            msg,
            direction: None,
            status: None,
            window: None,
        };
        let frame = EncodedMessage::encode(&data, code);
        let msgs = agents
            .iter()
            .map(|a| NewMessage {
                user: a.clone(),
                id: data.id.clone(),
                contact: contact.to_owned(),
                dedupe_key: None,
                frame: frame.clone(),
            })
            .collect();
        self.mailboxes.append(msgs).await.map(|_| ())
    }

    /// A 104 frame for a change of `c`.
    async fn told(
        &self,
        acct: &AccountConfig,
        c: &Conversation,
        action: &str,
        by: Option<&str>,
        to: Option<&str>,
        note: Option<&str>,
    ) -> Result<(), StoreError> {
        metrics::counter!("imgate_inbox_changes_total", "action" => action.to_owned()).increment(1);
        let msg = json!({"action": action, "by": by, "to": to, "note": note, "state": c.state.as_str(),
            "assignee": c.assignee});
        self.tell(&acct.agents(), &c.company_id, &c.contact_id, Code::CONVERSATION, by.unwrap_or(""), msg)
            .await
    }

    // --- from ingest -----------------------------------------------------------------

    /// A follower's message was committed to the agents' mailboxes (`seqs`: each agent's
    /// seq). The conversation is created or reopened, waits, counts unread; under
    /// round_robin a new one is given to an agent. `profile`: the follower's, when the
    /// WeChat channel has it (a conversation may start after it was fetched).
    pub async fn inbound(
        &self,
        appid: &str,
        company_id: &str,
        contact: &str,
        seqs: &[(String, u64)],
        m: Message<'_>,
        profile: Option<Value>,
    ) -> Result<(), InboxError> {
        let Some(acct) = self.account(appid) else { return Ok(()) };
        let seqs = seqs.to_vec();
        let (before, after) = self
            .record(appid, company_id, contact, m, "in", move |c, at| {
                if let Some(p) = &profile {
                    c.set_profile(p);
                }
                c.state = ConvState::Open;
                c.waiting_since.get_or_insert(at);
                for (agent, seq) in &seqs {
                    *c.unread.entry(agent.clone()).or_default() += 1;
                    c.last_in.insert(agent.clone(), *seq);
                    c.last_seq.insert(agent.clone(), *seq);
                }
            })
            .await?;
        let Some(after) = after else { return Ok(()) };
        if before.as_ref().is_some_and(|b| b.state == ConvState::Resolved) {
            self.told(acct, &after, "reopen", None, None, None).await?;
        }
        if acct.routing == Routing::RoundRobin && after.assignee.is_none() {
            self.route(acct, contact, &mut HashMap::new()).await?;
        }
        Ok(())
    }

    /// The follower's profile was fetched or their remark set: their conversation (if
    /// they have one) shows it. No frame: consoles read it with the conversation.
    pub async fn profile(&self, appid: &str, contact: &str, profile: Value) -> Result<(), InboxError> {
        self.convs
            .update(
                appid,
                contact,
                edit(move |cur| {
                    let Some(mut c) = cur else { return Ok(None) };
                    if c.profile.as_ref() == Some(&profile) {
                        return Ok(None);
                    }
                    c.set_profile(&profile);
                    Ok(Some(c))
                }),
            )
            .await?;
        Ok(())
    }

    /// Agent `by` named the follower `contact` (their remark, `profile` afterwards): the
    /// conversation shows the new profile, and every agent of the account hears it (104,
    /// action `remark`, the new name in `name`), so that each console names the follower
    /// at once. No conversation yet: nothing to tell.
    pub async fn remarked(
        &self,
        appid: &str,
        contact: &str,
        by: &str,
        profile: Value,
    ) -> Result<(), InboxError> {
        let Some(acct) = self.account(appid) else { return Ok(()) };
        let name = profile.get("remark").and_then(Value::as_str).unwrap_or_default().to_owned();
        // Before the frame: a console that reads the conversation on hearing it sees the name.
        self.profile(appid, contact, profile).await?;
        let Some(c) = self.convs.get(appid, contact).await? else { return Ok(()) };
        metrics::counter!("imgate_inbox_changes_total", "action" => "remark").increment(1);
        let msg = json!({"action": "remark", "by": by, "name": name, "state": c.state.as_str(),
            "assignee": c.assignee});
        self.tell(&acct.agents(), &c.company_id, contact, Code::CONVERSATION, by, msg).await?;
        Ok(())
    }

    /// Whether `agent` may reply to `contact` of account `appid`: under claim and
    /// round_robin only the assignee does.
    pub async fn may_reply(&self, appid: &str, agent: &str, contact: &str) -> Result<(), InboxError> {
        let Some(acct) = self.account(appid) else { return Ok(()) };
        if acct.routing == Routing::All {
            return Ok(());
        }
        let c = self.convs.get(appid, contact).await?;
        match c.and_then(|c| c.assignee) {
            Some(a) if a == agent => Ok(()),
            Some(a) => Err(InboxError::NotAssignee(format!(
                "this conversation is assigned to {a}: only {a} may reply (nothing was sent)"
            ))),
            None => Err(InboxError::NotAssignee(
                "this conversation is unassigned: claim it before replying (nothing was sent)".into(),
            )),
        }
    }

    /// An agent's reply was committed (`seqs`: each reader's seq) and WeChat took it: the
    /// follower is answered.
    pub async fn replied(
        &self,
        appid: &str,
        agent: &str,
        contact: &str,
        seqs: &[(String, u64)],
        m: Message<'_>,
    ) -> Result<(), InboxError> {
        let Some(acct) = self.account(appid) else { return Ok(()) };
        let (seqs, agent_) = (seqs.to_vec(), agent.to_owned());
        self.record(appid, &acct.company_id, contact, m, "out", move |c, _| {
            c.waiting_since = None;
            c.unread.insert(agent_.clone(), 0);
            c.last_seq.extend(seqs.iter().cloned());
        })
        .await?;
        Ok(())
    }

    /// Record message `m` in `contact`'s conversation, created if new: its time, its
    /// preview (`direction`: "in" or "out") and its words for search, and what `also`
    /// changes besides (given the message's time). The edit may run more than once (the
    /// Redis engine retries it when the record changed under it), so `also` is `Fn`.
    async fn record(
        &self,
        appid: &str,
        company_id: &str,
        contact: &str,
        m: Message<'_>,
        direction: &str,
        also: impl Fn(&mut Conversation, i64) + Send + Sync + 'static,
    ) -> Result<(Option<Conversation>, Option<Conversation>), InboxError> {
        let at = now();
        let (last, text) = (m.last(direction), m.text());
        let (appid_, contact_, company) = (appid.to_owned(), contact.to_owned(), company_id.to_owned());
        self.convs
            .update(
                appid,
                contact,
                edit(move |cur| {
                    let mut c = cur.unwrap_or_else(|| Conversation::new(&appid_, &contact_, &company));
                    c.last_at = c.last_at.max(at);
                    c.last_message = Some(last.clone());
                    also(&mut c, at);
                    c.remember_text(&text);
                    Ok(Some(c))
                }),
            )
            .await
    }

    // --- actions ---------------------------------------------------------------------

    pub async fn get(&self, agent: &str, contact: &str) -> Result<Value, InboxError> {
        match self.find(agent, contact).await {
            Ok((_, c)) => Ok(c.view(agent)),
            // Not a follower of the agent's accounts: a conversation with another gateway
            // user, which reaches the index up to a second after its first message. Until
            // then it is not found (404, asked again by the console), whether or not the
            // asker is an agent of any account: a gateway user has conversations of its own.
            Err(InboxError::NotFound(_) | InboxError::NotAgent(_)) => Ok(self
                .find_direct(agent, contact)
                .await?
                .ok_or_else(|| InboxError::NotFound(contact.to_owned()))?
                .view(agent)),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, agent: &str, query: &ListQuery) -> Result<Value, InboxError> {
        // The agent's accounts, and its own conversations with other gateway users.
        let mut appids: Vec<String> = self.accounts_of(agent).map(|a| a.appid.clone()).collect();
        appids.push(direct::account_of(agent));
        let (rows, next, counts) = self.convs.page(&appids, agent, query).await?;
        let conversations: Vec<Value> = rows.iter().map(|c| c.view(agent)).collect();
        Ok(json!({"conversations": conversations, "next": next, "counts": counts}))
    }

    /// Apply an action's `edit` to `contact`, then tell every agent (104) when it changed.
    async fn act(
        &self,
        agent: &str,
        contact: &str,
        action: &str,
        to: Option<&str>,
        note: Option<&str>,
        e: Edit,
    ) -> Result<Value, InboxError> {
        let (acct, _) = self.find_followed(agent, contact).await?;
        let (before, after) =
            self.convs.update(&acct.appid, contact, e).await.map_err(|e| named(e, contact))?;
        let Some(after) = after else {
            let c = before.ok_or_else(|| InboxError::NotFound(contact.to_owned()))?;
            return Ok(c.view(agent));
        };
        self.told(acct, &after, action, Some(agent), to, note).await?;
        // A change may free an agent (resolve, transfer) or a conversation (reopen): under
        // round_robin, what waits is routed now rather than at the next sweep.
        if acct.routing == Routing::RoundRobin {
            self.route_unassigned(acct).await?;
        }
        Ok(after.view(agent))
    }

    pub async fn claim(&self, agent: &str, contact: &str) -> Result<Value, InboxError> {
        let me = agent.to_owned();
        self.act(
            agent,
            contact,
            "claim",
            Some(agent),
            None,
            edit(move |cur| {
                let mut c = cur.ok_or_else(|| InboxError::NotFound(String::new()))?;
                match &c.assignee {
                    Some(a) if *a == me => Ok(None),
                    Some(a) => Err(InboxError::Taken { assignee: a.clone() }),
                    None => {
                        c.assignee = Some(me.clone());
                        Ok(Some(c))
                    }
                }
            }),
        )
        .await
    }

    /// Only the assignee, or anyone while nobody is, may hand over or resolve.
    fn owner_check(c: &Conversation, me: &str, what: &str) -> Result<(), InboxError> {
        match &c.assignee {
            Some(a) if a != me => Err(InboxError::NotAssignee(format!(
                "this conversation is assigned to {a}: only {a} may {what} it"
            ))),
            _ => Ok(()),
        }
    }

    pub async fn transfer(
        &self,
        agent: &str,
        contact: &str,
        to: &str,
        note: Option<&str>,
    ) -> Result<Value, InboxError> {
        let (acct, _) = self.find_followed(agent, contact).await?;
        if !acct.agents().iter().any(|a| a == to) {
            return Err(InboxError::BadRequest(format!("{to:?} is not an agent of this account")));
        }
        if note.is_some_and(|n| n.chars().count() > TEXT_MAX) {
            return Err(InboxError::BadRequest(format!("the note is longer than {TEXT_MAX} characters")));
        }
        let (me, target) = (agent.to_owned(), to.to_owned());
        self.act(
            agent,
            contact,
            "transfer",
            Some(to),
            note,
            edit(move |cur| {
                let mut c = cur.ok_or_else(|| InboxError::NotFound(String::new()))?;
                Self::owner_check(&c, &me, "transfer")?;
                if c.assignee.as_deref() == Some(target.as_str()) {
                    return Ok(None);
                }
                c.assignee = Some(target.clone());
                Ok(Some(c))
            }),
        )
        .await
    }

    pub async fn resolve(&self, agent: &str, contact: &str) -> Result<Value, InboxError> {
        let me = agent.to_owned();
        self.act(
            agent,
            contact,
            "resolve",
            None,
            None,
            edit(move |cur| {
                let mut c = cur.ok_or_else(|| InboxError::NotFound(String::new()))?;
                Self::owner_check(&c, &me, "resolve")?;
                if c.state == ConvState::Resolved {
                    return Ok(None);
                }
                c.state = ConvState::Resolved;
                c.waiting_since = None;
                Ok(Some(c))
            }),
        )
        .await
    }

    pub async fn reopen(&self, agent: &str, contact: &str) -> Result<Value, InboxError> {
        self.act(
            agent,
            contact,
            "reopen",
            None,
            None,
            edit(move |cur| {
                let mut c = cur.ok_or_else(|| InboxError::NotFound(String::new()))?;
                if c.state == ConvState::Open {
                    return Ok(None);
                }
                c.state = ConvState::Open;
                Ok(Some(c))
            }),
        )
        .await
    }

    /// An internal note (105): into every agent's mailbox, never to WeChat.
    pub async fn note(&self, agent: &str, contact: &str, text: &str) -> Result<Value, InboxError> {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > TEXT_MAX {
            return Err(InboxError::BadRequest(format!("a note needs a text of 1 to {TEXT_MAX} characters")));
        }
        let (acct, c) = self.find_followed(agent, contact).await?;
        self.tell(&acct.agents(), &c.company_id, contact, Code::NOTE, agent, json!({"text": text})).await?;
        Ok(c.view(agent))
    }

    /// `agent` read the conversation up to its mailbox's `seq` (all of it when `None`).
    pub async fn read(&self, agent: &str, contact: &str, seq: Option<u64>) -> Result<Value, InboxError> {
        let appid = match self.find(agent, contact).await {
            Ok((acct, _)) => acct.appid.clone(),
            Err(e @ (InboxError::NotFound(_) | InboxError::NotAgent(_))) => {
                self.find_direct(agent, contact).await?.ok_or(e)?.appid
            }
            Err(e) => return Err(e),
        };
        let me = agent.to_owned();
        let (before, after) = self
            .convs
            .update(
                &appid,
                contact,
                edit(move |cur| {
                    let mut c = cur.ok_or_else(|| InboxError::NotFound(String::new()))?;
                    let latest = c.last_in.get(&me).copied().unwrap_or(0);
                    // A message newer than what the console showed stays unread.
                    if seq.is_some_and(|s| s < latest) || c.unread.get(&me).copied().unwrap_or(0) == 0 {
                        return Ok(None);
                    }
                    c.unread.insert(me.clone(), 0);
                    Ok(Some(c))
                }),
            )
            .await
            .map_err(|e| named(e, contact))?;
        let c = after.or(before).ok_or_else(|| InboxError::NotFound(contact.to_owned()))?;
        Ok(c.view(agent))
    }

    // --- canned replies --------------------------------------------------------------

    fn account_for(&self, agent: &str, appid: Option<&str>) -> Result<&AccountConfig, InboxError> {
        let mut mine = self.accounts_of(agent);
        match appid {
            Some(id) => mine.find(|a| a.appid == id),
            None => mine.next(),
        }
        .ok_or_else(|| InboxError::NotAgent(agent.to_owned()))
    }

    pub async fn canned(&self, agent: &str, appid: Option<&str>) -> Result<Value, InboxError> {
        // A gateway user of no account has none (its console asks all the same).
        if appid.is_none() && self.accounts_of(agent).next().is_none() {
            return Ok(json!({"canned": []}));
        }
        let acct = self.account_for(agent, appid)?;
        Ok(json!({"canned": self.convs.canned(&acct.appid).await?}))
    }

    pub async fn set_canned(
        &self,
        agent: &str,
        appid: Option<&str>,
        body: &Value,
    ) -> Result<Value, InboxError> {
        let acct = self.account_for(agent, appid)?;
        let bad = |r: &str| InboxError::BadRequest(format!("canned: {r}"));
        let list =
            body.get("canned").and_then(Value::as_array).ok_or_else(|| bad("give {\"canned\":[…]}"))?;
        if list.len() > CANNED_MAX {
            return Err(bad(&format!("at most {CANNED_MAX} replies")));
        }
        let mut clean = Vec::with_capacity(list.len());
        for item in list {
            let s = item.get("shortcut").and_then(Value::as_str).map(str::trim).unwrap_or_default();
            let t = item.get("text").and_then(Value::as_str).map(str::trim).unwrap_or_default();
            if s.is_empty() || s.chars().count() > SHORTCUT_MAX {
                return Err(bad(&format!("every reply needs a shortcut of 1 to {SHORTCUT_MAX} characters")));
            }
            if t.is_empty() || t.chars().count() > TEXT_MAX {
                return Err(bad(&format!("every reply needs a text of 1 to {TEXT_MAX} characters")));
            }
            clean.push(json!({"shortcut": s, "text": t}));
        }
        let canned = Value::Array(clean);
        self.convs.set_canned(&acct.appid, canned.clone()).await?;
        Ok(json!({"canned": canned}))
    }

    // --- presence --------------------------------------------------------------------

    /// Everyone who must hear of `agent`'s presence: the agents of its routed accounts.
    fn colleagues(&self, agent: &str) -> Vec<String> {
        let mut all: Vec<String> =
            self.accounts_of(agent).filter(|a| a.routing != Routing::All).flat_map(|a| a.agents()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// Presence is kept for every agent (`GET P/presence`), but told (106) only to the
    /// agents of accounts that route: under `all`, consoles see no new frame.
    async fn tell_presence(&self, agent: &str, status: &str) -> Result<(), StoreError> {
        let to = self.colleagues(agent);
        if to.is_empty() {
            return Ok(());
        }
        self.tell(&to, "", "", Code::PRESENCE, agent, json!({"agent": agent, "status": status})).await
    }

    /// A socket of `user` opened. Failures only delay presence: they are logged.
    pub async fn connected(self: &Arc<Self>, user: &str) {
        if self.accounts_of(user).next().is_none() {
            return;
        }
        let r = async {
            if self.convs.connected(user).await? {
                let p = self.convs.presence(user).await?;
                self.tell_presence(user, p.status()).await?;
                if p.status() == "online" {
                    self.clone().route_waiting(user);
                }
            }
            Ok::<_, StoreError>(())
        };
        if let Err(e) = r.await {
            tracing::warn!(agent = %user, error = %e, "presence not recorded");
        }
    }

    /// `agent` became available: under round_robin, conversations waiting unassigned in
    /// its accounts find an agent now rather than at the next sweep.
    fn route_waiting(self: Arc<Self>, agent: &str) {
        let accounts: Vec<AccountConfig> =
            self.accounts_of(agent).filter(|a| a.routing == Routing::RoundRobin).cloned().collect();
        if accounts.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for acct in &accounts {
                if let Err(e) = self.route_unassigned(acct).await {
                    tracing::warn!(error = %e, "routing waiting conversations failed; the sweep retries");
                }
            }
        });
    }

    /// Route every open, unassigned conversation of a round_robin `acct`.
    async fn route_unassigned(&self, acct: &AccountConfig) -> Result<(), InboxError> {
        let mut seen = HashMap::new();
        for c in self.convs.list(&acct.appid).await? {
            if c.assignee.is_none() && c.state == ConvState::Open {
                self.route(acct, &c.contact_id, &mut seen).await?;
            }
        }
        Ok(())
    }

    /// A socket of `user` closed.
    pub async fn disconnected(&self, user: &str) {
        if self.accounts_of(user).next().is_none() {
            return;
        }
        let r = async {
            if self.convs.disconnected(user, now_ms()).await? {
                self.tell_presence(user, "offline").await?;
            }
            Ok::<_, StoreError>(())
        };
        if let Err(e) = r.await {
            tracing::warn!(agent = %user, error = %e, "presence not recorded");
        }
    }

    pub async fn set_presence(self: &Arc<Self>, agent: &str, status: &str) -> Result<Value, InboxError> {
        let away = match status {
            "away" => true,
            "online" => false,
            _ => return Err(InboxError::BadRequest("status must be \"online\" or \"away\"".into())),
        };
        if self.accounts_of(agent).next().is_none() {
            return Err(InboxError::NotAgent(agent.to_owned()));
        }
        let before = self.convs.presence(agent).await?;
        self.convs.set_away(agent, away).await?;
        let after = Presence { away, ..before.clone() };
        if after.status() != before.status() {
            self.tell_presence(agent, after.status()).await?;
            if after.status() == "online" {
                self.clone().route_waiting(agent);
            }
        }
        Ok(json!({"agent": agent, "status": after.status()}))
    }

    pub async fn presence_list(&self, agent: &str) -> Result<Value, InboxError> {
        // A gateway user of no account has no colleagues: an empty list.
        let mut agents: Vec<String> = self.accounts_of(agent).flat_map(|a| a.agents()).collect();
        agents.sort();
        agents.dedup();
        let mut out = Vec::with_capacity(agents.len());
        for a in agents {
            let p = self.convs.presence(&a).await?;
            out.push(json!({"agent": a, "status": p.status()}));
        }
        Ok(json!({"agents": out}))
    }

    // --- routing ---------------------------------------------------------------------

    /// Give an open, unassigned conversation to the online (not away) agent of `acct` with
    /// the fewest open conversations, below `max_open_per_agent`; none: it waits.
    async fn route(
        &self,
        acct: &AccountConfig,
        contact: &str,
        seen: &mut HashMap<String, Presence>,
    ) -> Result<(), InboxError> {
        // One router per account, in this process and then across nodes: the loads it
        // reads stay true until its assignment is written.
        let _here = match self.routing.get(&acct.appid) {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        let token = self.convs.routing_lock(&acct.appid).await?;
        let routed = self.route_locked(acct, contact, seen).await;
        let unlocked = self.convs.routing_unlock(&acct.appid, token).await;
        routed?;
        Ok(unlocked?)
    }

    async fn route_locked(
        &self,
        acct: &AccountConfig,
        contact: &str,
        seen: &mut HashMap<String, Presence>,
    ) -> Result<(), InboxError> {
        let load = self.convs.open_load(&acct.appid).await?;
        let mut best: Option<(usize, String)> = None;
        for agent in acct.agents() {
            let p = match seen.get(&agent) {
                Some(p) => p.clone(),
                None => {
                    let p = self.convs.presence(&agent).await?;
                    seen.insert(agent.clone(), p.clone());
                    p
                }
            };
            if p.status() != "online" {
                continue;
            }
            let n = load.get(&agent).copied().unwrap_or(0);
            if n < acct.max_open_per_agent && best.as_ref().is_none_or(|(m, _)| n < *m) {
                best = Some((n, agent));
            }
        }
        let Some((_, to)) = best else { return Ok(()) };
        let target = to.clone();
        let (_, after) = self
            .convs
            .update(
                &acct.appid,
                contact,
                edit(move |cur| {
                    let Some(mut c) = cur else { return Ok(None) };
                    if c.assignee.is_some() || c.state != ConvState::Open {
                        return Ok(None);
                    }
                    c.assignee = Some(target.clone());
                    Ok(Some(c))
                }),
            )
            .await?;
        if let Some(after) = after {
            self.told(acct, &after, "assign", None, Some(&to), None).await?;
        }
        Ok(())
    }

    /// One pass over the routed accounts: an assignee offline for `reassign_after` while
    /// its follower waits loses the conversation; under round_robin, waiting unassigned
    /// conversations find an agent. `first_offline` remembers when this node first saw an
    /// agent offline whose close it does not know (a node that died, a restart).
    async fn sweep(&self, first_offline: &mut HashMap<String, i64>) -> Result<(), InboxError> {
        let now = now_ms();
        for acct in self.accounts.iter().filter(|a| a.routing != Routing::All) {
            let mut seen: HashMap<String, Presence> = HashMap::new();
            for c in self.convs.list(&acct.appid).await? {
                if c.state != ConvState::Open {
                    continue;
                }
                let Some(assignee) = c.assignee.clone() else {
                    if acct.routing == Routing::RoundRobin {
                        self.route(acct, &c.contact_id, &mut seen).await?;
                    }
                    continue;
                };
                if c.waiting_since.is_none() {
                    continue;
                }
                let p = match seen.get(&assignee) {
                    Some(p) => p.clone(),
                    None => {
                        let p = self.convs.presence(&assignee).await?;
                        seen.insert(assignee.clone(), p.clone());
                        p
                    }
                };
                if p.connections > 0 {
                    first_offline.remove(&assignee);
                    continue;
                }
                let since =
                    p.offline_since.unwrap_or_else(|| *first_offline.entry(assignee.clone()).or_insert(now));
                if now.saturating_sub(since) < acct.reassign_after.as_millis() as i64 {
                    continue;
                }
                let gone = assignee.clone();
                let (_, after) = self
                    .convs
                    .update(
                        &acct.appid,
                        &c.contact_id,
                        edit(move |cur| {
                            let Some(mut c) = cur else { return Ok(None) };
                            if c.assignee.as_deref() != Some(gone.as_str()) || !c.waiting() {
                                return Ok(None);
                            }
                            c.assignee = None;
                            Ok(Some(c))
                        }),
                    )
                    .await?;
                if let Some(after) = after {
                    tracing::info!(agent = %assignee, contact = %c.contact_id, "assignee offline; conversation unassigned");
                    self.told(acct, &after, "unassign", None, None, None).await?;
                    if acct.routing == Routing::RoundRobin {
                        self.route(acct, &c.contact_id, &mut seen).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Run the sweep every `every` until `stop`, and keep this node's sockets counted.
    pub fn spawn_sweeper(self: Arc<Self>, stop: CancellationToken) {
        // With no account that routes, the sweep only renews this node's presence key.
        let shortest = self
            .accounts
            .iter()
            .filter(|a| a.routing != Routing::All)
            .map(|a| a.reassign_after)
            .min()
            .unwrap_or(Duration::from_secs(40));
        // A quarter of the shortest reassign_after: a conversation is handed on at most
        // 25 % late; between 100 ms and 10 s so a sweep neither spins nor sleeps through.
        let every = (shortest / 4).clamp(Duration::from_millis(100), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut first_offline = HashMap::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = self.convs.heartbeat().await {
                            tracing::warn!(error = %e, "presence heartbeat failed; will retry");
                        }
                        if let Err(e) = self.sweep(&mut first_offline).await {
                            tracing::warn!(error = %e, "inbox sweep failed; will retry");
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list row shows words for every kind of message: a menu its heading, a card its
    /// title (a menu once showed nothing after "你:").
    #[test]
    fn a_rows_preview_has_words_for_menus_and_cards() {
        let preview = |msg_type: &str, msg: Value| {
            Message { id: "1", msg_type, msg: &msg }.last("out")["preview"].clone()
        };
        assert_eq!(preview("text", json!({"content": "hi"})), "hi");
        assert_eq!(
            preview("msgmenu", json!({"head_content": "请选择", "list": [{"id": "1", "content": "a"}]})),
            "请选择"
        );
        assert_eq!(preview("news", json!({"title": "新品", "url": "https://example.com"})), "新品");
        assert_eq!(preview("image", json!({"media_path": "/m/1"})), "[image]");
        assert_eq!(preview("msgmenu", json!({"head_content": "", "list": []})), "[msgmenu]");
    }
}
