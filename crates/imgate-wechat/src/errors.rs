//! WeChat's error codes in words an agent can act on.

/// What `errcode` means for the person who sent the message, when WeChat's own `errmsg`
/// would not tell them.
pub fn plain_words(errcode: i64) -> Option<&'static str> {
    Some(match errcode {
        -1 => "WeChat is busy; try again in a moment",
        40001 | 40014 | 42001 => "the access token was refused (expired, or replaced by another caller)",
        40003 => "this openid does not belong to the account: the follower is unknown here",
        40007 => "the media is invalid or has expired (WeChat keeps uploads 3 days): upload it again",
        40013 => "the AppID is invalid: check wechat.accounts in the configuration",
        40125 => "the AppSecret is wrong: check wechat.accounts in the configuration",
        40164 => {
            "this server's IP address is not in the account's IP whitelist (WeChat admin console → Basic configuration)"
        }
        43004 => "the follower has unfollowed the account",
        44002 => "the message is empty",
        45002 => "the message is too long",
        45009 => "the account has used up today's API quota",
        45015 => {
            "the 48-hour window has closed (the follower has not written for 48 hours) or the follower unfollowed: wait for them to write"
        }
        45047 => {
            "5 messages have already been sent since the follower last wrote: wait for them to write again"
        }
        48001 => "this account is not allowed to use the customer-service API (it needs to be verified)",
        _ => return None,
    })
}
