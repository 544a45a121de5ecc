//! The callback URL: the admin console's verification `GET`, and the message `POST` in
//! plaintext, compatible or safe mode.

use imgate_protocol::{XmlError, XmlMessage};

use crate::crypto::{Cipher, CryptoError};
use crate::signature::verify;

/// The query string WeChat adds to the callback URL.
#[derive(Clone, Debug, Default)]
pub struct CallbackQuery {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub echostr: Option<String>,
    pub encrypt_type: Option<String>,
    pub msg_signature: Option<String>,
    pub openid: Option<String>,
}

/// An account's callback secrets.
#[derive(Clone, Copy, Debug)]
pub struct Keys<'a> {
    pub token: &'a str,
    pub appid: &'a str,
    /// Present when the account uses compatible or safe mode.
    pub cipher: Option<&'a Cipher>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error("query parameter {0} is missing")]
    Missing(&'static str),
    #[error("signature does not match: is the account's token right?")]
    BadSignature,
    #[error("the callback is encrypted but this account has no encoding_aes_key configured")]
    NoKey,
    #[error("the encrypted callback has no Encrypt element")]
    NoEncrypt,
    #[error("callback XML: {0}")]
    Xml(#[from] XmlError),
    #[error("Encrypt: {0}")]
    Crypto(#[from] CryptoError),
}

fn need<'a>(v: &'a Option<String>, name: &'static str) -> Result<&'a str, CallbackError> {
    v.as_deref().filter(|s| !s.is_empty()).ok_or(CallbackError::Missing(name))
}

/// The verification `GET`: the `echostr` to answer, verbatim, if the signature holds.
pub fn verify_url<'q>(q: &'q CallbackQuery, token: &str) -> Result<&'q str, CallbackError> {
    let signature = need(&q.signature, "signature")?;
    let timestamp = need(&q.timestamp, "timestamp")?;
    let nonce = need(&q.nonce, "nonce")?;
    let echostr = need(&q.echostr, "echostr")?;
    if !verify(signature, &[token, timestamp, nonce]) {
        return Err(CallbackError::BadSignature);
    }
    Ok(echostr)
}

/// A message `POST`, checked and opened. The mode is the request's, as WeChat's SDKs
/// read it: `encrypt_type=aes` is decrypted (and needs the key); anything else is a
/// plaintext callback, checked by its `signature`, even on an account that has a key
/// (the admin console shows the key in every mode, and operators paste it). In
/// compatible mode only the decrypted copy is trusted; its clear fields are ignored.
pub fn open_callback(q: &CallbackQuery, body: &str, keys: Keys<'_>) -> Result<XmlMessage, CallbackError> {
    let timestamp = need(&q.timestamp, "timestamp")?;
    let nonce = need(&q.nonce, "nonce")?;
    if q.encrypt_type.as_deref() == Some("aes") {
        let cipher = keys.cipher.ok_or(CallbackError::NoKey)?;
        let msg_signature = need(&q.msg_signature, "msg_signature")?;
        let outer = XmlMessage::parse(body)?;
        let encrypted = outer.non_empty("Encrypt").ok_or(CallbackError::NoEncrypt)?;
        if !verify(msg_signature, &[keys.token, timestamp, nonce, encrypted]) {
            return Err(CallbackError::BadSignature);
        }
        let inner = cipher.decrypt_for(encrypted, keys.appid)?;
        return Ok(XmlMessage::parse(&inner)?);
    }
    let signature = need(&q.signature, "signature")?;
    if !verify(signature, &[keys.token, timestamp, nonce]) {
        return Err(CallbackError::BadSignature);
    }
    Ok(XmlMessage::parse(body)?)
}

/// What WeChat's servers send: the body and query of a callback for `xml`, signed with
/// `token`, encrypted when `cipher` is given. For `imgate wechat simulate` and tests.
pub fn seal(xml: &str, keys: Keys<'_>, timestamp: &str, nonce: &str) -> (String, Vec<(String, String)>) {
    let signature = crate::signature::sign(&[keys.token, timestamp, nonce]);
    let mut query = vec![
        ("signature".to_owned(), signature),
        ("timestamp".to_owned(), timestamp.to_owned()),
        ("nonce".to_owned(), nonce.to_owned()),
    ];
    let Some(cipher) = keys.cipher else {
        return (xml.to_owned(), query);
    };
    let encrypted = cipher.encrypt(xml, keys.appid);
    let msg_signature = crate::signature::sign(&[keys.token, timestamp, nonce, &encrypted]);
    query.push(("encrypt_type".to_owned(), "aes".to_owned()));
    query.push(("msg_signature".to_owned(), msg_signature));
    let to =
        XmlMessage::parse(xml).ok().and_then(|x| x.get("ToUserName").map(str::to_owned)).unwrap_or_default();
    let mut outer = XmlMessage::default();
    outer.set("ToUserName", to);
    outer.set("Encrypt", encrypted);
    (outer.to_xml(), query)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const XML: &str = "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o1]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hi]]></Content><MsgId>5</MsgId></xml>";

    fn query(pairs: &[(String, String)]) -> CallbackQuery {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        CallbackQuery {
            signature: get("signature"),
            timestamp: get("timestamp"),
            nonce: get("nonce"),
            echostr: get("echostr"),
            encrypt_type: get("encrypt_type"),
            msg_signature: get("msg_signature"),
            openid: None,
        }
    }

    #[test]
    fn plaintext_and_safe_mode_round_trip() {
        let plain = Keys { token: "tok", appid: "wx1", cipher: None };
        let (body, q) = seal(XML, plain, "1700000000", "n1");
        assert_eq!(open_callback(&query(&q), &body, plain).unwrap().get("Content"), Some("hi"));
        let cipher = Cipher::new(KEY).unwrap();
        let safe = Keys { token: "tok", appid: "wx1", cipher: Some(&cipher) };
        let (body, q) = seal(XML, safe, "1700000000", "n1");
        assert!(!body.contains("Content"), "safe mode shows no clear fields: {body}");
        assert_eq!(open_callback(&query(&q), &body, safe).unwrap().get("Content"), Some("hi"));
    }

    /// The request's `encrypt_type` decides the mode, not whether the account has a key.
    #[test]
    fn a_signed_plaintext_callback_opens_on_an_account_with_a_key() {
        let cipher = Cipher::new(KEY).unwrap();
        let safe = Keys { token: "tok", appid: "wx1", cipher: Some(&cipher) };
        let plain = Keys { cipher: None, ..safe };
        let (body, q) = seal(XML, plain, "1700000000", "n1");
        assert_eq!(open_callback(&query(&q), &body, safe).unwrap().get("Content"), Some("hi"));
        let mut raw = query(&q);
        raw.encrypt_type = Some("raw".into());
        assert_eq!(open_callback(&raw, &body, safe).unwrap().get("Content"), Some("hi"));
    }

    #[test]
    fn what_is_refused() {
        let cipher = Cipher::new(KEY).unwrap();
        let safe = Keys { token: "tok", appid: "wx1", cipher: Some(&cipher) };
        let plain = Keys { token: "tok", appid: "wx1", cipher: None };
        let (body, q) = seal(XML, safe, "1700000000", "n1");
        // Another account's token; another AppID; tampered signature.
        assert_eq!(
            open_callback(&query(&q), &body, Keys { token: "other", ..safe }),
            Err(CallbackError::BadSignature)
        );
        assert!(matches!(
            open_callback(&query(&q), &body, Keys { appid: "wx2", ..safe }),
            Err(CallbackError::Crypto(CryptoError::WrongAppId { .. }))
        ));
        let mut bad = query(&q);
        bad.msg_signature = Some("0".repeat(40));
        assert_eq!(open_callback(&bad, &body, safe), Err(CallbackError::BadSignature));
        // Encrypted where no key is configured; plaintext with a bad signature where one is.
        assert_eq!(open_callback(&query(&q), &body, plain), Err(CallbackError::NoKey));
        let (pbody, pq) = seal(XML, plain, "1700000000", "n1");
        let mut forged = query(&pq);
        forged.signature = Some("0".repeat(40));
        assert_eq!(open_callback(&forged, &pbody, safe), Err(CallbackError::BadSignature));
        // Truncated or garbage Encrypt, signed correctly so that decryption is reached.
        for enc in ["", "@@@@", "AAAA", "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtI="] {
            let body =
                format!("<xml><ToUserName>gh_1</ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>");
            let mut q = query(&q);
            q.msg_signature = Some(crate::signature::sign(&["tok", "1700000000", "n1", enc]));
            assert!(open_callback(&q, &body, safe).is_err(), "{enc:?}");
        }
        let mut missing = query(&q);
        missing.nonce = None;
        assert_eq!(open_callback(&missing, &body, safe), Err(CallbackError::Missing("nonce")));
    }

    #[test]
    fn url_verification() {
        let q = CallbackQuery {
            signature: Some("16120ec1b8dbb870f510d87ce6bc2463eae6ca1a".into()),
            timestamp: Some("1409735669".into()),
            nonce: Some("1320562132".into()),
            echostr: Some("5838479218127813673".into()),
            ..Default::default()
        };
        assert_eq!(verify_url(&q, "spamtest"), Ok("5838479218127813673"));
        assert_eq!(verify_url(&q, "spamtest2"), Err(CallbackError::BadSignature));
    }
}
