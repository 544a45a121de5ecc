//! imgate's wire shapes, and nothing else: the seed's JSON frames (§1), the send request
//! (§2.1) and WeChat's message XML, in and out.
//!
//! This crate does no I/O and knows nothing of sockets, stores or HTTP. Every byte imgate
//! puts on a wire that is not WeChat's crypto envelope is shaped here.

mod code;
mod content;
mod create_time;
mod frame;
mod id;
mod send;
pub mod xml;

pub use code::{Code, code_for_type};
pub use content::{Content, ContentError, content_from_xml, dedupe_key_for_xml, msg_id};
pub use create_time::{CreateTimeError, parse_create_time};
pub use frame::{
    EncodedMessage, Frame, FrameResult, MessageData, ack_frame, error_frame, error_frame_with,
    heartbeat_frame, ok_frame,
};
pub use id::{IdError, MAX_ID, check_id};
pub use send::{SendError, SendRequest, parse_send_json};
pub use xml::{XmlError, XmlMessage, XmlValue};

/// The `contact_id` of system messages, fixed by the seed.
pub const SYSTEM_CONTACT: &str = "system01";
/// The display name of system messages, fixed by the seed.
pub const SYSTEM_NAME: &str = "系统消息";
