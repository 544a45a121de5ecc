//! Messages as a test hands them to a `Store`.

use imgate::store::NewMessage;
use imgate_protocol::{Code, EncodedMessage, MessageData};

/// A text message to `user`'s mailbox, its content `content`.
pub fn msg_sized(user: &str, id: &str, contact: &str, key: Option<&str>, content: &str) -> NewMessage {
    let data = MessageData {
        id: id.into(),
        name: String::new(),
        avatar: String::new(),
        msg_type: "text".into(),
        contact_id: contact.into(),
        company_id: String::new(),
        send_time: 1,
        msg: serde_json::json!({"content": content}),
        direction: None,
        status: None,
        window: None,
    };
    NewMessage {
        user: user.into(),
        id: id.into(),
        contact: contact.into(),
        dedupe_key: key.map(str::to_owned),
        frame: EncodedMessage::encode(&data, Code::TEXT),
    }
}

/// A text message whose content is its id.
pub fn msg(user: &str, id: &str, contact: &str, key: Option<&str>) -> NewMessage {
    msg_sized(user, id, contact, key, id)
}
