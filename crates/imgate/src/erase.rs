//! Forgetting a person (PIPL/GDPR erasure; docs/operations.md, "Erasure"): the messages
//! with them in every mailbox and their own mailbox's, the media they sent, their team-inbox
//! conversations (notes and unread counts with them), and what the WeChat channel knows of
//! them (the follower and its window). Each step is idempotent, so a request that failed
//! half-way is finished by its retry.
//!
//! The consoles that showed those messages are told with an `erased` frame (code 107),
//! committed to each mailbox that held any, so that a console offline now drops them when
//! it catches up with `since`. It knows nothing of HTTP.

use imgate_protocol::{Code, EncodedMessage, MessageData};
use serde::Serialize;
use serde_json::json;

use crate::inbox::Inbox;
use crate::store::{DynStore, NewMessage, StoreError};
use crate::wechat::{StateUnavailable, Wechat};

#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    State(#[from] StateUnavailable),
}

/// What one erasure removed; all zero when there was nothing (left) to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub contact_id: String,
    /// Messages removed, in every mailbox.
    pub messages: u64,
    /// Mailboxes that held any.
    pub mailboxes: u64,
    /// Media files (and their records) removed.
    pub media: u64,
    /// Team-inbox conversations removed (one per account; between gateway users, each
    /// side's row).
    pub conversations: u64,
    /// Whether the WeChat channel knew them as a follower.
    pub follower: bool,
}

/// Erase `contact` everywhere. The steps run in an order that keeps a retry complete:
/// messages, conversations, the frames that tell the consoles (to the mailboxes that held
/// messages and the agents whose conversation went), then the media and the follower.
pub async fn erase(
    store: &DynStore,
    inbox: Option<&Inbox>,
    wechat: Option<&Wechat>,
    contact: &str,
) -> Result<Report, EraseError> {
    let erased = store.erase(contact).await?;
    let (conversations, agents) = match inbox {
        Some(i) => i.forget(contact, &erased.mailboxes).await?,
        None => (0, Vec::new()),
    };
    let mut tell: Vec<&str> = erased.mailboxes.iter().chain(&agents).map(String::as_str).collect();
    tell.sort_unstable();
    tell.dedup();
    // Not the person's own mailbox: it was theirs, and is empty now.
    tell.retain(|u| *u != contact);
    if !tell.is_empty() {
        let frame = erased_frame(contact);
        let id = frame.0;
        store
            .append(
                tell.iter()
                    .map(|u| NewMessage {
                        user: (*u).to_owned(),
                        id: id.clone(),
                        // Not filed under the person: a later erasure leaves it, and their
                        // history (`contact_id=`) does not list it.
                        contact: String::new(),
                        dedupe_key: None,
                        frame: frame.1.clone(),
                    })
                    .collect(),
            )
            .await?;
    }
    let (follower, media) = match wechat {
        Some(w) => w.forget(contact, &erased.media_paths).await?,
        None => (false, 0),
    };
    Ok(Report {
        contact_id: contact.to_owned(),
        messages: erased.messages,
        mailboxes: erased.mailboxes.len() as u64,
        media,
        conversations,
        follower,
    })
}

/// The `erased` frame (code 107): `data.contact_id` is the person whose messages a
/// console must drop.
fn erased_frame(contact: &str) -> (String, EncodedMessage) {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let data = MessageData {
        id: id.clone(),
        name: String::new(),
        avatar: String::new(),
        msg_type: "erased".into(),
        contact_id: contact.to_owned(),
        company_id: String::new(),
        send_time: time::OffsetDateTime::now_utc().unix_timestamp(),
        msg: json!({}),
        direction: None,
        status: None,
        window: None,
    };
    (id, EncodedMessage::encode(&data, Code::ERASED))
}
