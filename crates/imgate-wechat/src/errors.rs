//! WeChat's error codes in words an agent can act on: one table, checked against the
//! global return-code page (全局返回码说明) and the customer-service and media API pages.

/// Every code imgate explains, and what it means for the person who sent the message,
/// when WeChat's own `errmsg` would not tell them. Only here: [`plain_words`] reads it,
/// and a test checks that every row has words.
pub const CODES: &[(i64, &str)] = &[
    (-1, "WeChat is busy; try again in a moment"),
    (40001, "the access token was refused (expired, or replaced by another caller)"),
    (40003, "this openid does not belong to the account: the follower is unknown here"),
    (40004, "WeChat does not take this media type (images: PNG, JPEG, GIF; voice: AMR, MP3; video: MP4)"),
    (
        40005,
        "WeChat does not take this file type: send a PNG, JPEG or GIF image, an AMR or MP3 voice, or an MP4 video",
    ),
    (40006, "the file's size is not one WeChat takes (empty, or over the media limit)"),
    (40007, "the media is invalid or has expired (WeChat keeps uploads 3 days): upload it again"),
    (40009, "the image is too large for WeChat (at most 10 MB)"),
    (40010, "the voice file is too large for WeChat (at most 2 MB)"),
    (40013, "the AppID is invalid: check wechat.accounts in the configuration"),
    (40014, "the access token was refused (expired, or replaced by another caller)"),
    (
        40037,
        "WeChat does not know this template_id: it is not one of the account's templates (added under 模板消息 in the admin console)",
    ),
    (40033, "the message has characters WeChat refuses (\\uxxxx escapes): send the text as UTF-8"),
    (40125, "the AppSecret is wrong: check wechat.accounts in the configuration"),
    (
        40164,
        "this server's IP address is not in the account's IP whitelist (WeChat admin console → Basic configuration)",
    ),
    (42001, "the access token was refused (expired, or replaced by another caller)"),
    (43004, "the follower has unfollowed the account"),
    (43019, "the follower is on the account's blacklist: remove them from it to reply"),
    (44002, "the message is empty"),
    (44003, "the news message has no article"),
    (45008, "WeChat takes one article in a news message: send one"),
    (45001, "the media file is over WeChat's size limit"),
    (45002, "the message is too long"),
    (45007, "the voice message plays too long for WeChat (at most 60 seconds)"),
    (45009, "the account has used up today's API quota"),
    (45011, "the account is calling WeChat's API too often: try again in a minute"),
    (
        45015,
        "the 48-hour window has closed (the follower has not written for 48 hours) or the follower unfollowed: wait for them to write",
    ),
    (45047, "5 messages have already been sent since the follower last wrote: wait for them to write again"),
    (
        45080,
        "WeChat shows typing only within 30 seconds of the follower's last message (not shown, no harm done)",
    ),
    (45081, "the follower already sees that you are typing (not shown again, no harm done)"),
    (47001, "WeChat could not parse the request (JSON/XML format error)"),
    (48001, "this account is not allowed to use the customer-service API (it needs to be verified)"),
    (
        48002,
        "the follower has turned off messages from this account (接收消息 is off): they cannot be reached",
    ),
    (48004, "WeChat has blocked this API for the account (a violation): see mp.weixin.qq.com for details"),
    (50002, "the follower's WeChat account is restricted (frozen, closed or banned): they cannot be reached"),
    (61452, "the customer-service account (kf_account) is invalid: check kf_accounts in wechat.accounts"),
    (
        65401,
        "the customer-service account (kf_account) is not one of the account's: check kf_accounts in wechat.accounts",
    ),
];

/// What `errcode` means for the person who sent the message, if imgate knows.
pub fn plain_words(errcode: i64) -> Option<&'static str> {
    CODES.iter().find(|(code, _)| *code == errcode).map(|(_, words)| *words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_words_once() {
        let mut seen = std::collections::BTreeSet::new();
        for (code, words) in CODES {
            assert!(seen.insert(*code), "{code} appears twice");
            assert!(words.trim().len() > 10, "{code} has no words: {words:?}");
            assert_eq!(plain_words(*code), Some(*words));
        }
        // The codes an agent's send or upload meets most (issue #10).
        for code in [
            45011, 48002, 48004, 50002, 43019, 47001, 40033, 40004, 40005, 40006, 40009, 40010, 45001, 45007,
            40001, 40007, 43004, 45015, 45047,
        ] {
            assert!(plain_words(code).is_some(), "{code} has no words");
        }
        assert_eq!(plain_words(12345), None);
    }
}
