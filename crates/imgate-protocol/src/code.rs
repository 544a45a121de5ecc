//! `result.code`: which kind of frame this is.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A frame's `result.code`. The seed fixes 102, 1001–1004, 101 and -1; the others are
/// imgate's, listed in the README's protocol table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Code(pub i32);

impl Code {
    pub const OK: Code = Code(0);
    pub const ERROR: Code = Code(-1);
    pub const HEARTBEAT: Code = Code(101);
    pub const SYSTEM: Code = Code(102);
    /// The outcome of a message sent to a WeChat follower (`msg.ref` is its id).
    pub const STATUS: Code = Code(103);
    /// A change to a team-inbox conversation: claim, transfer, resolve, reopen, assign.
    pub const CONVERSATION: Code = Code(104);
    /// An internal note in a conversation: for the account's agents, never for WeChat.
    pub const NOTE: Code = Code(105);
    /// An agent came online, went away or offline.
    pub const PRESENCE: Code = Code(106);
    /// A person was erased (`DELETE P/contacts/{id}`): drop every message with
    /// `data.contact_id`, and their conversation.
    pub const ERASED: Code = Code(107);
    pub const TEXT: Code = Code(1001);
    pub const IMAGE: Code = Code(1002);
    pub const VOICE: Code = Code(1003);
    pub const VIDEO: Code = Code(1004);
    pub const SHORTVIDEO: Code = Code(1005);
    pub const LOCATION: Code = Code(1006);
    pub const LINK: Code = Code(1007);
    /// A message type nobody told imgate about (the seed's `enim`): delivered with every
    /// field it carried.
    pub const OTHER: Code = Code(1099);

    /// The `msg_type` this code stands for, when it stands for exactly one.
    pub fn msg_type(self) -> Option<&'static str> {
        TABLE.iter().find(|(_, c)| *c == self).map(|(t, _)| *t)
    }
}

const TABLE: &[(&str, Code)] = &[
    ("system", Code::SYSTEM),
    ("event", Code::SYSTEM),
    ("status", Code::STATUS),
    ("text", Code::TEXT),
    ("image", Code::IMAGE),
    ("voice", Code::VOICE),
    ("video", Code::VIDEO),
    ("shortvideo", Code::SHORTVIDEO),
    ("location", Code::LOCATION),
    ("link", Code::LINK),
];

/// The code of a `msg_type`; unknown types get [`Code::OTHER`].
pub fn code_for_type(msg_type: &str) -> Code {
    TABLE.iter().find(|(t, _)| *t == msg_type).map(|(_, c)| *c).unwrap_or(Code::OTHER)
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.0)
    }
}

/// The seed writes `"102"` once: take a number or a string holding one.
impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Code;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a code, as a number or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Code, E> {
                i32::try_from(v).map(Code).map_err(|_| E::custom("code out of range"))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Code, E> {
                i32::try_from(v).map(Code).map_err(|_| E::custom("code out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Code, E> {
                v.trim()
                    .parse::<i32>()
                    .map(Code)
                    .map_err(|_| E::custom(format!("code {v:?} is not a number")))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_reads_numbers_and_strings() {
        for (input, want) in [
            ("102", Some(102)),
            ("\"102\"", Some(102)),
            ("\" 1001 \"", Some(1001)),
            ("-1", Some(-1)),
            ("\"x\"", None),
            ("1.5", None),
            ("99999999999", None),
        ] {
            let got = serde_json::from_str::<Code>(input).ok().map(|c| c.0);
            assert_eq!(got, want, "input {input}");
        }
    }

    #[test]
    fn types_and_codes_round_trip() {
        for t in ["text", "image", "voice", "video", "shortvideo", "location", "link", "status"] {
            assert_eq!(code_for_type(t).msg_type(), Some(t));
        }
        assert_eq!(code_for_type("enim"), Code::OTHER);
        assert_eq!(code_for_type("event"), Code::SYSTEM);
    }
}
