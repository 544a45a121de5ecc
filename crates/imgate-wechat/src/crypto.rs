//! The AES envelope of compatible and safe mode.
//!
//! key = base64(EncodingAESKey + "="), 32 bytes; AES-256-CBC with IV = key[0..16];
//! plaintext = 16 random bytes ‖ u32 big-endian length of the XML in bytes ‖ XML ‖ AppID,
//! padded PKCS#7 to a **32-byte** block (pad byte 1..=32 — a 16-byte unpadder rejects
//! about half of real messages). Every length is checked before it is used: no input
//! makes this panic.

use aes::Aes256;
use base64::Engine;
use base64::alphabet;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};

/// WeChat pads to 32 bytes, not AES's 16.
const PAD_BLOCK: usize = 32;

/// The 43-character key plus "=" has non-zero trailing bits, which the strict engine
/// refuses; WeChat's own code ignores them.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("EncodingAESKey must be 43 base64 characters")]
    BadKey,
    #[error("Encrypt is not base64")]
    NotBase64,
    #[error("Encrypt is {0} bytes, not a positive multiple of 32")]
    BadLength(usize),
    #[error("Encrypt does not decrypt to a padded message (pad byte {0})")]
    BadPadding(u8),
    #[error("Encrypt is too short for its header")]
    Truncated,
    #[error("Encrypt claims a {0}-byte message that is not there")]
    BadMessageLength(usize),
    #[error("the message is not UTF-8")]
    NotUtf8,
    #[error("the message is for AppID {found:?}, not {expected:?}")]
    WrongAppId { expected: String, found: String },
}

/// An account's AES key.
#[derive(Clone)]
pub struct Cipher {
    key: [u8; 32],
}

/// Keys stay out of logs.
impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<key>)")
    }
}

impl Cipher {
    pub fn new(encoding_aes_key: &str) -> Result<Cipher, CryptoError> {
        let k = encoding_aes_key.trim();
        if k.len() != 43 {
            return Err(CryptoError::BadKey);
        }
        let bytes = KEY_ENGINE.decode(format!("{k}=")).map_err(|_| CryptoError::BadKey)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::BadKey)?;
        Ok(Cipher { key })
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.key[..16]);
        iv
    }

    /// The `Encrypt` value for `msg` sent as `appid`, with the given 16 random bytes.
    pub fn encrypt_with(&self, msg: &str, appid: &str, random: [u8; 16]) -> String {
        let mut buf = Vec::with_capacity(20 + msg.len() + appid.len() + PAD_BLOCK);
        buf.extend_from_slice(&random);
        buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        buf.extend_from_slice(msg.as_bytes());
        buf.extend_from_slice(appid.as_bytes());
        let pad = PAD_BLOCK - buf.len() % PAD_BLOCK;
        buf.resize(buf.len() + pad, pad as u8);
        let len = buf.len();
        let enc = cbc::Encryptor::<Aes256>::new(&self.key.into(), &self.iv().into());
        let out = enc.encrypt_padded::<NoPadding>(&mut buf, len).map(<[u8]>::to_vec).unwrap_or_default();
        STANDARD.encode(out)
    }

    /// Like [`encrypt_with`](Self::encrypt_with), with fresh random bytes.
    pub fn encrypt(&self, msg: &str, appid: &str) -> String {
        let random: [u8; 16] = rand::random();
        // WeChat's samples use printable random strings; any bytes work.
        self.encrypt_with(msg, appid, random)
    }

    /// The message and the AppID it was sent for.
    pub fn decrypt(&self, encrypted: &str) -> Result<(String, String), CryptoError> {
        let mut buf = STANDARD.decode(encrypted.trim()).map_err(|_| CryptoError::NotBase64)?;
        if buf.is_empty() || buf.len() % PAD_BLOCK != 0 {
            return Err(CryptoError::BadLength(buf.len()));
        }
        let dec = cbc::Decryptor::<Aes256>::new(&self.key.into(), &self.iv().into());
        let plain = dec.decrypt_padded::<NoPadding>(&mut buf).map_err(|_| CryptoError::BadLength(0))?;
        let pad = *plain.last().ok_or(CryptoError::Truncated)?;
        if pad == 0 || usize::from(pad) > PAD_BLOCK || usize::from(pad) > plain.len() {
            return Err(CryptoError::BadPadding(pad));
        }
        let body = &plain[..plain.len() - usize::from(pad)];
        let header = body.get(..20).ok_or(CryptoError::Truncated)?;
        let len = u32::from_be_bytes([header[16], header[17], header[18], header[19]]) as usize;
        let rest = &body[20..];
        let msg = rest.get(..len).ok_or(CryptoError::BadMessageLength(len))?;
        let appid = &rest[len..];
        let msg = std::str::from_utf8(msg).map_err(|_| CryptoError::NotUtf8)?.to_owned();
        let appid = std::str::from_utf8(appid).map_err(|_| CryptoError::NotUtf8)?.to_owned();
        Ok((msg, appid))
    }

    /// [`decrypt`](Self::decrypt), then check the AppID (constant time: it is not
    /// secret, but it costs nothing).
    pub fn decrypt_for(&self, encrypted: &str, appid: &str) -> Result<String, CryptoError> {
        let (msg, found) = self.decrypt(encrypted)?;
        if !crate::signature::constant_time_eq(found.as_bytes(), appid.as_bytes()) {
            return Err(CryptoError::WrongAppId { expected: appid.to_owned(), found });
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests;
