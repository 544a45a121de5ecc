//! Accepting a message: from a send request or WeChat XML to committed mailbox entries.
//!
//! This is where a message gets its id, its sender (the recipient's `contact_id`), its
//! time and its dedupe key, is serialised once, and is committed — to the recipient's
//! mailbox, and, when the sender is a gateway user, to the sender's too (marked
//! `direction: "out"`), so that the sender's other tabs and its history show both sides.

use std::sync::Arc;

use imgate_protocol::{
    Code, Content, EncodedMessage, MessageData, SYSTEM_CONTACT, SYSTEM_NAME, SendRequest, XmlMessage,
    content_from_xml, dedupe_key_for_xml, msg_id, parse_create_time,
};
use serde_json::{Value, json};
use time::UtcOffset;

use crate::inbox::{Inbox, InboxError};
use crate::store::{DynStore, NewMessage, StoreError};
use crate::wechat::{Account, Inbound, TemplateDone, Wechat, WechatError};

/// A committed message, as its sender is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    /// The seq in the recipient's mailbox.
    pub seq: u64,
    pub to: String,
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("who sends this message? Give ?userid=YOUR_ID (or FromUserName in XML)")]
    MissingSender,
    #[error("ToUserName is missing or empty: say who receives the message")]
    MissingRecipient,
    #[error(transparent)]
    Content(#[from] imgate_protocol::ContentError),
    #[error(transparent)]
    CreateTime(#[from] imgate_protocol::CreateTimeError),
    #[error(transparent)]
    Id(#[from] imgate_protocol::IdError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The WeChat channel's state could not be read or written: like the store's, a retry
    /// may succeed.
    #[error(transparent)]
    State(#[from] crate::wechat::StateUnavailable),
    #[error("{0}")]
    Unsendable(String),
    #[error(
        "the message is {size} bytes once encoded as a frame, over the {max} a frame may hold (limits.http_body_max plus 4 KiB): send less"
    )]
    FrameTooLarge { size: usize, max: usize },
    #[error("{0} is not an agent of the WeChat account this follower writes to (wechat.accounts.agents)")]
    NotAnAgent(String),
    #[error("{0}")]
    Forbidden(&'static str),
    /// The team inbox refused: another agent owns the conversation (403).
    #[error("{0}")]
    NotAssignee(String),
    /// The message carries media of this gateway its sender may not see.
    #[error("{0}")]
    MediaForbidden(String),
    /// A message to a WeChat follower was stored in the sender's history but WeChat did
    /// not take it (a retry must use a new id: this one is answered from the history).
    #[error("not delivered to WeChat: {reason}")]
    Delivery {
        id: String,
        seq: u64,
        to: String,
        reason: String,
        errcode: Option<i64>,
        errmsg: Option<String>,
    },
}

impl IngestError {
    /// Details for the error frame's `data`.
    pub fn details(&self) -> Value {
        match self {
            IngestError::Delivery { id, seq, to, errcode, errmsg, .. } => {
                json!({"id": id, "seq": seq, "contact_id": to, "errcode": errcode, "errmsg": errmsg})
            }
            _ => json!({}),
        }
    }
}

fn check_id(what: &'static str, v: &str) -> Result<(), IngestError> {
    Ok(imgate_protocol::check_id(what, v)?)
}

pub struct Ingest {
    store: DynStore,
    zone: UtcOffset,
    company_id: String,
    wechat: Option<Arc<Wechat>>,
    inbox: Option<Arc<Inbox>>,
    /// The largest frame a message may become (`Config::frame_max`): what every socket's
    /// write buffer is sized for.
    frame_max: usize,
}

/// Who a message is from.
#[derive(Clone, Copy, Debug)]
pub enum Sender<'a> {
    /// A gateway user (a WebSocket's user, a token's subject): keeps a copy of what it sends.
    User(&'a str),
    /// Somebody outside the gateway (a follower named by XML, a backend): no copy.
    Outside(&'a str),
}

impl Ingest {
    pub fn new(
        store: DynStore,
        zone: UtcOffset,
        company_id: String,
        wechat: Option<Arc<Wechat>>,
        inbox: Option<Arc<Inbox>>,
    ) -> Ingest {
        Ingest { store, zone, company_id, wechat, inbox, frame_max: usize::MAX }
    }

    /// Refuse messages whose frame would be over `max` bytes.
    pub fn with_frame_max(mut self, max: usize) -> Ingest {
        self.frame_max = max;
        self
    }

    /// Encode a message's frame, refusing one a socket's write buffer could not hold
    /// (escaping for JSON can make an XML body's text up to twice as long).
    fn encode(&self, data: &MessageData, code: Code) -> Result<EncodedMessage, IngestError> {
        let frame = EncodedMessage::encode(data, code);
        match frame.as_stored().len() {
            size if size > self.frame_max => Err(IngestError::FrameTooLarge { size, max: self.frame_max }),
            _ => Ok(frame),
        }
    }

    /// A send request (seed §2.1) from `from`. To a WeChat follower, it goes out through
    /// the account's customer-service API; to anyone else, into their mailbox.
    pub async fn send(&self, from: Sender<'_>, req: SendRequest) -> Result<Accepted, IngestError> {
        if let Some(w) = &self.wechat
            && let Some(acct) = w.follower_account(&req.to).await?
        {
            return self.send_to_follower(w, acct, from, req).await;
        }
        let dedupe = req.client_id.as_deref().map(|c| sender_key(from, &["id", c]));
        let now = now();
        self.commit(Letter {
            from,
            to: req.to,
            id: req.client_id,
            name: req.name,
            avatar: req.avatar,
            company_id: req.company_id,
            send_time: now,
            content: req.content,
            dedupe,
        })
        .await
    }

    /// A WeChat XML message (seed §2.2). `from` defaults to its `FromUserName`.
    pub async fn send_xml(&self, from: Option<Sender<'_>>, x: &XmlMessage) -> Result<Accepted, IngestError> {
        let from = match from {
            Some(f) => f,
            None => Sender::Outside(x.non_empty("FromUserName").ok_or(IngestError::MissingSender)?),
        };
        let to = x.non_empty("ToUserName").ok_or(IngestError::MissingRecipient)?.to_owned();
        let content = content_from_xml(x)?;
        let send_time = match x.non_empty("CreateTime") {
            Some(t) => parse_create_time(t, self.zone)?,
            None => now(),
        };
        self.commit(Letter {
            from,
            to,
            id: msg_id(x).map(str::to_owned),
            name: None,
            avatar: None,
            company_id: None,
            send_time,
            content,
            // The sender's own namespace: XML naming a follower's MsgId cannot take the
            // key of that follower's real callback.
            dedupe: dedupe_key_for_xml(x).map(|k| sender_key(from, &["xml", &k])),
        })
        .await
    }

    /// A WeChat callback's message, into the mailbox of each of the account's agents.
    pub async fn wechat_inbound(&self, inbound: Inbound, x: &XmlMessage) -> Result<Accepted, IngestError> {
        let send_time = match x.non_empty("CreateTime") {
            Some(t) => parse_create_time(t, self.zone)?,
            None => now(),
        };
        let id = msg_id(x).map(str::to_owned).unwrap_or_else(new_id);
        let code = inbound.content.code;
        let data = MessageData {
            id: id.clone(),
            // The remark an agent gave the follower (WeChat gives no nickname).
            name: inbound.name(),
            avatar: String::new(),
            msg_type: inbound.content.msg_type,
            contact_id: inbound.openid.clone(),
            company_id: inbound.company_id,
            send_time,
            msg: inbound.content.msg,
            direction: None,
            status: None,
            window: inbound.window,
        };
        let frame = self.encode(&data, code)?;
        let dedupe = dedupe_key_for_xml(x).map(|k| dedupe_key("wechat", &[&k]));
        let msgs: Vec<NewMessage> = inbound
            .agents
            .iter()
            .map(|agent| NewMessage {
                user: agent.clone(),
                id: id.clone(),
                contact: inbound.openid.clone(),
                dedupe_key: dedupe.clone(),
                frame: frame.clone(),
            })
            .collect();
        let appended = self.store.append(msgs).await?;
        let duplicate = appended.iter().all(|a| a.duplicate);
        metrics::counter!("imgate_wechat_inbound_total").increment(u64::from(!duplicate));
        let first = appended.first().ok_or(IngestError::MissingRecipient)?;
        if let Some(inbox) = &self.inbox
            && !duplicate
            && data.msg_type != "event"
        {
            let seqs: Vec<(String, u64)> =
                inbound.agents.iter().cloned().zip(appended.iter().map(|a| a.seq)).collect();
            let m = crate::inbox::Message { id: &id, msg_type: &data.msg_type, msg: &data.msg };
            // The message is committed: a failure here leaves the conversation's index behind,
            // not the message lost, so it is logged rather than refused (a refusal would
            // make WeChat retry a message the dedupe then drops).
            let profile = inbound.profile.as_ref().map(|p| p.to_json());
            if let Err(e) =
                inbox.inbound(&inbound.appid, &data.company_id, &inbound.openid, &seqs, m, profile).await
            {
                tracing::warn!(contact = %inbound.openid, error = %e, "conversation not updated");
            }
        }
        let to = inbound.agents.first().cloned().unwrap_or_default();
        Ok(Accepted { id: first.id.clone(), seq: first.seq, to, duplicate })
    }

    /// A reply to a follower: kept in the sender's history as `sending`, sent through
    /// WeChat, and followed there by a status frame (code 103) with the outcome. A retry
    /// with the same `data.id` is answered from the history, never sent twice.
    async fn send_to_follower(
        &self,
        w: &Wechat,
        acct: &Account,
        from: Sender<'_>,
        req: SendRequest,
    ) -> Result<Accepted, IngestError> {
        let sender = sender_name(from);
        if sender.is_empty() || sender == SYSTEM_CONTACT {
            return Err(IngestError::MissingSender);
        }
        if !acct.config.agents().iter().any(|a| a == sender) {
            return Err(IngestError::NotAnAgent(sender.to_owned()));
        }
        check_id("the sender id", sender)?;
        check_id("the message id", req.client_id.as_deref().unwrap_or(""))?;
        // Under claim and round_robin only the assignee replies: refused before anything
        // is kept or sent.
        if let Some(inbox) = &self.inbox {
            inbox.may_reply(&acct.config.appid, sender, &req.to).await?;
        }
        if req.content.msg_type == "typing" {
            return self.typing(w, acct, req).await;
        }
        self.share_media(sender, &req.content, &[]).await?;
        let to = req.to.clone();
        // What WeChat cannot carry is refused before anything is kept or sent.
        let body = w.prepare(acct, sender, &to, &req.content).await.map_err(|e| match e {
            WechatError::Unsendable(_) | WechatError::MediaMissing(_) | WechatError::MediaKind { .. } => {
                IngestError::Unsendable(e.to_string())
            }
            other => {
                let (errcode, errmsg) = wechat_code(&other);
                let id = req.client_id.clone().unwrap_or_default();
                IngestError::Delivery {
                    id,
                    seq: 0,
                    to: to.clone(),
                    reason: other.to_string(),
                    errcode,
                    errmsg,
                }
            }
        })?;
        let id = req.client_id.clone().unwrap_or_else(new_id);
        let dedupe = req.client_id.as_deref().map(|c| sender_key(from, &["id", c]));
        let company_id = acct.config.company_id.clone();
        let now = now();
        // The reply goes into the sender's history and the account's other agents' too:
        // they share the follower. `name` says which agent answered.
        let mut readers = vec![sender.to_owned()];
        readers.extend(acct.config.agents().into_iter().filter(|a| a != sender));
        let copy = MessageData {
            id: id.clone(),
            name: req.name.unwrap_or_else(|| sender.to_owned()),
            avatar: req.avatar.unwrap_or_default(),
            msg_type: req.content.msg_type.clone(),
            contact_id: to.clone(),
            company_id: company_id.clone(),
            send_time: now,
            msg: req.content.msg.clone(),
            direction: Some("out".into()),
            status: Some("sending".into()),
            window: w.window(&to).await,
        };
        let frame = self.encode(&copy, req.content.code)?;
        let copies = readers
            .iter()
            .map(|r| NewMessage {
                user: r.clone(),
                id: id.clone(),
                contact: to.clone(),
                dedupe_key: dedupe.clone(),
                frame: frame.clone(),
            })
            .collect();
        let stored = self.store.append(copies).await?;
        let first = &stored[0];
        // A duplicate only if every reader had it: a retry that completed an append cut
        // short (a Redis Cluster commits mailbox by mailbox) goes on to send it.
        if stored.iter().all(|a| a.duplicate) {
            return Ok(Accepted { id: first.id.clone(), seq: first.seq, to, duplicate: true });
        }
        let outcome = w.send(acct, &to, body).await;
        let (status, window) = match &outcome {
            Ok(sent) => {
                let mut status = json!({"ref": id, "status": "sent"});
                if let Some(msgid) = sent.msgid {
                    // Kept before the status frame is, so that the finish event, which
                    // may come at once, finds it. Unkept, the message stays `sent`.
                    if let Err(e) = w.remember_template(acct, msgid, &id, &to).await {
                        tracing::warn!(contact = %to, error = %e, "template msgid not kept: its outcome will not be shown");
                    }
                    status["msgid"] = json!(msgid.to_string());
                }
                (status, Some(sent.window.clone()))
            }
            Err(e) => {
                let (errcode, errmsg) = wechat_code(e);
                let status = json!({"ref": id, "status": "failed", "reason": e.to_string(), "errcode": errcode,
                    "errmsg": errmsg});
                (status, w.window(&to).await)
            }
        };
        let note = MessageData {
            id: new_id(),
            name: String::new(),
            avatar: String::new(),
            msg_type: "status".into(),
            contact_id: to.clone(),
            company_id,
            send_time: now,
            msg: status,
            direction: Some("out".into()),
            status: None,
            window,
        };
        let frame = EncodedMessage::encode(&note, Code::STATUS);
        let notes = readers
            .iter()
            .map(|r| NewMessage {
                user: r.clone(),
                id: note.id.clone(),
                contact: to.clone(),
                dedupe_key: None,
                frame: frame.clone(),
            })
            .collect();
        self.store.append(notes).await?;
        match outcome {
            Ok(_) => {
                metrics::counter!("imgate_wechat_sent_total").increment(1);
                // The follower is answered only when WeChat took the reply.
                if let Some(inbox) = &self.inbox {
                    let m = crate::inbox::Message {
                        id: &id,
                        msg_type: &req.content.msg_type,
                        msg: &req.content.msg,
                    };
                    let seqs: Vec<(String, u64)> =
                        readers.iter().cloned().zip(stored.iter().map(|a| a.seq)).collect();
                    if let Err(e) = inbox.replied(&acct.config.appid, sender, &to, &seqs, m).await {
                        tracing::warn!(contact = %to, error = %e, "conversation not updated");
                    }
                }
                Ok(Accepted { id: first.id.clone(), seq: first.seq, to, duplicate: false })
            }
            Err(e) => {
                metrics::counter!("imgate_wechat_send_errors_total").increment(1);
                let (errcode, errmsg) = wechat_code(&e);
                Err(IngestError::Delivery { id, seq: first.seq, to, reason: e.to_string(), errcode, errmsg })
            }
        }
    }

    /// WeChat's TEMPLATESENDJOBFINISH about a template message imgate sent: a status frame
    /// (code 103) with its outcome, to the mailboxes of the account's agents, as for the
    /// send's own. WeChat's retries of the callback are one frame (deduplicated by msgid).
    pub async fn template_done(&self, done: TemplateDone) -> Result<Accepted, IngestError> {
        let note = MessageData {
            id: new_id(),
            name: String::new(),
            avatar: String::new(),
            msg_type: "status".into(),
            contact_id: done.openid.clone(),
            company_id: done.company_id,
            send_time: now(),
            msg: done.status,
            direction: Some("out".into()),
            status: None,
            window: done.window,
        };
        let frame = EncodedMessage::encode(&note, Code::STATUS);
        let dedupe = dedupe_key("wechat", &["TEMPLATESENDJOBFINISH", &done.appid, &done.msgid.to_string()]);
        let notes: Vec<NewMessage> = done
            .agents
            .iter()
            .map(|r| NewMessage {
                user: r.clone(),
                id: note.id.clone(),
                contact: done.openid.clone(),
                dedupe_key: Some(dedupe.clone()),
                frame: frame.clone(),
            })
            .collect();
        let stored = self.store.append(notes).await?;
        let first = stored.first().ok_or(IngestError::MissingRecipient)?;
        let duplicate = stored.iter().all(|a| a.duplicate);
        Ok(Accepted { id: first.id.clone(), seq: first.seq, to: done.openid, duplicate })
    }

    /// An agent is typing to a follower: passed to WeChat (throttled per conversation),
    /// stored nowhere. The ack has seq 0: no mailbox holds it.
    async fn typing(&self, w: &Wechat, acct: &Account, req: SendRequest) -> Result<Accepted, IngestError> {
        let id = req.client_id.clone().unwrap_or_else(new_id);
        match w.typing(acct, &req.to).await {
            Ok(_) => Ok(Accepted { id, seq: 0, to: req.to, duplicate: false }),
            Err(e) => {
                let (errcode, errmsg) = wechat_code(&e);
                Err(IngestError::Delivery { id, seq: 0, to: req.to, reason: e.to_string(), errcode, errmsg })
            }
        }
    }

    async fn commit(&self, l: Letter<'_>) -> Result<Accepted, IngestError> {
        let sender = sender_name(l.from);
        if sender.is_empty() {
            return Err(IngestError::MissingSender);
        }
        check_id("the sender id", sender)?;
        check_id("the recipient id", &l.to)?;
        check_id("the message id", l.id.as_deref().unwrap_or(""))?;
        let system = l.content.msg_type == "system";
        if system && matches!(l.from, Sender::User(_)) {
            return Err(IngestError::Forbidden(
                "system messages come from backends (an API key), not from users",
            ));
        }
        if l.content.msg_type == "status" {
            return Err(IngestError::Forbidden("msg_type \"status\" is imgate's own: it cannot be sent"));
        }
        // The team inbox's frames: a sent one would pass for a note or a change of owner.
        if matches!(l.content.msg_type.as_str(), "conversation" | "note" | "presence") {
            return Err(IngestError::Forbidden(
                "msg_type \"conversation\", \"note\" and \"presence\" are the team inbox's own: they cannot be sent",
            ));
        }
        self.share_media(sender, &l.content, &[&l.to]).await?;
        let code = l.content.code;
        let id = l.id.unwrap_or_else(new_id);
        let company_id = l.company_id.unwrap_or_else(|| self.company_id.clone());
        let mut data = MessageData {
            id: id.clone(),
            name: if system { SYSTEM_NAME.to_owned() } else { l.name.unwrap_or_default() },
            avatar: l.avatar.unwrap_or_default(),
            msg_type: l.content.msg_type,
            contact_id: if system { SYSTEM_CONTACT.to_owned() } else { sender.to_owned() },
            company_id,
            send_time: l.send_time,
            msg: l.content.msg,
            direction: None,
            status: None,
            window: None,
        };
        let mut msgs = vec![NewMessage {
            user: l.to.clone(),
            id: id.clone(),
            contact: data.contact_id.clone(),
            dedupe_key: l.dedupe.clone(),
            frame: self.encode(&data, code)?,
        }];
        if let Sender::User(user) = l.from
            && !system
            && user != l.to
        {
            data.contact_id = l.to.clone();
            data.direction = Some("out".into());
            msgs.push(NewMessage {
                user: user.to_owned(),
                id: id.clone(),
                contact: l.to.clone(),
                dedupe_key: l.dedupe,
                frame: self.encode(&data, code)?,
            });
        }
        let appended = self.store.append(msgs).await?;
        let first = &appended[0];
        // As for replies: a duplicate only if both mailboxes had it.
        let duplicate = appended.iter().all(|a| a.duplicate);
        metrics::counter!("imgate_messages_accepted_total").increment(u64::from(!duplicate));
        // The pair's conversation in the index (system notices are not conversations).
        if let Some(inbox) = &self.inbox
            && !duplicate
            && !system
        {
            let m = crate::inbox::Message { id: &id, msg_type: &data.msg_type, msg: &data.msg };
            let from_seq = appended.get(1).map(|a| a.seq);
            inbox.direct(&data.company_id, sender, &l.to, first.seq, from_seq, m).await;
        }
        Ok(Accepted { id: first.id.clone(), seq: first.seq, to: l.to, duplicate })
    }
}

impl Ingest {
    /// Media of this gateway in a message: its sender must be able to see it, and its
    /// recipients `to` may then see it too (before they are told of the message).
    async fn share_media(&self, sender: &str, content: &Content, to: &[&str]) -> Result<(), IngestError> {
        let Some(w) = &self.wechat else { return Ok(()) };
        // `thumb`: a mini-program card's picture.
        for key in ["media_path", "thumb"] {
            let Some(path) = content.msg.get(key).and_then(Value::as_str) else { continue };
            w.share_media(sender, path, to).await.map_err(|e| match e {
                WechatError::MediaForbidden(_) => IngestError::MediaForbidden(e.to_string()),
                WechatError::State(e) => e.into(),
                _ => IngestError::Unsendable(e.to_string()),
            })?;
        }
        Ok(())
    }
}

struct Letter<'a> {
    from: Sender<'a>,
    to: String,
    id: Option<String>,
    name: Option<String>,
    avatar: Option<String>,
    company_id: Option<String>,
    send_time: i64,
    content: Content,
    dedupe: Option<String>,
}

fn sender_name(from: Sender<'_>) -> &str {
    match from {
        Sender::User(u) | Sender::Outside(u) => u,
    }
}

/// A dedupe key: its source, then each part prefixed with its length, so that keys of
/// different sources never meet and different parts never read as the same key (`a:b` +
/// `c` and `a` + `b:c` were one key when parts were joined with `:`).
fn dedupe_key(source: &str, parts: &[&str]) -> String {
    let mut k = String::with_capacity(source.len() + parts.iter().map(|p| p.len() + 8).sum::<usize>());
    k.push_str(source);
    for p in parts {
        k.push('|');
        k.push_str(&p.len().to_string());
        k.push(':');
        k.push_str(p);
    }
    k
}

/// A key in the sender's own namespace: a gateway user's (authenticated) apart from an
/// outside sender's (named, not proven), and both apart from WeChat's callbacks.
fn sender_key(from: Sender<'_>, parts: &[&str]) -> String {
    let (source, name) = match from {
        Sender::User(u) => ("user", u),
        Sender::Outside(u) => ("outside", u),
    };
    let mut all = Vec::with_capacity(parts.len() + 1);
    all.push(name);
    all.extend_from_slice(parts);
    dedupe_key(source, &all)
}

/// WeChat's own code and message, when it refused.
fn wechat_code(e: &WechatError) -> (Option<i64>, Option<String>) {
    match e {
        WechatError::Api(imgate_wechat::ApiError::WeChat { errcode, errmsg }) => {
            (Some(*errcode), Some(errmsg.clone()))
        }
        _ => (None, None),
    }
}

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl From<InboxError> for IngestError {
    fn from(e: InboxError) -> IngestError {
        match e {
            InboxError::Store(s) => IngestError::Store(s),
            other => IngestError::NotAssignee(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keys_do_not_collide() {
        let keys = [
            sender_key(Sender::User("a:b"), &["id", "c"]),
            sender_key(Sender::User("a"), &["id", "b:c"]),
            sender_key(Sender::User("a|1:b"), &["id", "c"]),
            sender_key(Sender::Outside("a:b"), &["id", "c"]),
            sender_key(Sender::User("a:b"), &["xml", "c"]),
            dedupe_key("wechat", &["a:b", "id", "c"]),
        ];
        let distinct: std::collections::HashSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:?}");
        assert_eq!(keys[1], "user|1:a|2:id|3:b:c");
    }
}
