//! Accepting a message: from a send request or WeChat XML to committed mailbox entries.
//!
//! This is where a message gets its id, its sender (the recipient's `contact_id`), its
//! time and its dedupe key, is serialised once, and is committed — to the recipient's
//! mailbox, and, when the sender is a gateway user, to the sender's too (marked
//! `direction: "out"`), so that the sender's other tabs and its history show both sides.

use imgate_protocol::{
    Content, EncodedMessage, MessageData, SYSTEM_CONTACT, SYSTEM_NAME, SendRequest, XmlMessage,
    content_from_xml, dedupe_key_for_xml, msg_id, parse_create_time,
};
use time::UtcOffset;

use crate::store::{DynStore, NewMessage, StoreError};

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
    #[error("{0} is too long (at most {1} bytes)")]
    TooLong(&'static str, usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Longest user id, contact id or client message id: they are keys, not content.
const MAX_ID: usize = 256;

pub struct Ingest {
    store: DynStore,
    zone: UtcOffset,
    company_id: String,
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
    pub fn new(store: DynStore, zone: UtcOffset, company_id: String) -> Ingest {
        Ingest { store, zone, company_id }
    }

    /// A send request (seed §2.1) from `from`.
    pub async fn send(&self, from: Sender<'_>, req: SendRequest) -> Result<Accepted, IngestError> {
        let dedupe = req.client_id.as_ref().map(|c| format!("c:{}:{c}", sender_name(from)));
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
            dedupe: dedupe_key_for_xml(x),
        })
        .await
    }

    async fn commit(&self, l: Letter<'_>) -> Result<Accepted, IngestError> {
        let sender = sender_name(l.from);
        if sender.is_empty() {
            return Err(IngestError::MissingSender);
        }
        for (what, v) in [
            ("the sender id", sender),
            ("the recipient id", &l.to),
            ("the message id", l.id.as_deref().unwrap_or("")),
        ] {
            if v.len() > MAX_ID {
                return Err(IngestError::TooLong(what, MAX_ID));
            }
        }
        let system = l.content.msg_type == "system";
        let code = l.content.code;
        let id = l.id.unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
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
        };
        let mut msgs = vec![NewMessage {
            user: l.to.clone(),
            id: id.clone(),
            contact: data.contact_id.clone(),
            dedupe_key: l.dedupe.clone(),
            frame: EncodedMessage::encode(&data, code),
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
                frame: EncodedMessage::encode(&data, code),
            });
        }
        let appended = self.store.append(msgs).await?;
        let first = &appended[0];
        metrics::counter!("imgate_messages_accepted_total").increment(u64::from(!first.duplicate));
        Ok(Accepted { id: first.id.clone(), seq: first.seq, to: l.to, duplicate: first.duplicate })
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

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
