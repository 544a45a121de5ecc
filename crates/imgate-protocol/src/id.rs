//! The wire rule for ids: a user id, a contact id or a client message id is a name used as
//! a key (mailboxes, dedupe keys, Redis keys), not content.

/// Longest id, in bytes.
pub const MAX_ID: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{0} is too long (at most {1} bytes)")]
    TooLong(&'static str, usize),
    #[error("{0} contains a control character (a newline, a tab…): ids are names, not text")]
    ControlCharacter(&'static str),
}

/// At most [`MAX_ID`] bytes, no control characters (they would let an id pass for a
/// separator in keys and wire formats). `what` names the field in the error.
pub fn check_id(what: &'static str, v: &str) -> Result<(), IdError> {
    if v.len() > MAX_ID {
        return Err(IdError::TooLong(what, MAX_ID));
    }
    if v.chars().any(char::is_control) {
        return Err(IdError::ControlCharacter(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_names_without_control_characters() {
        let long = "x".repeat(MAX_ID + 1);
        let cases: [(&str, Result<(), IdError>); 5] = [
            ("agent1", Ok(())),
            ("魏秀兰", Ok(())),
            (&long[..MAX_ID], Ok(())),
            (&long, Err(IdError::TooLong("id", MAX_ID))),
            ("a\nb", Err(IdError::ControlCharacter("id"))),
        ];
        for (input, want) in cases {
            assert_eq!(check_id("id", input), want, "{input:?}");
        }
    }
}
