//! The WeChat Official Account protocol, owned here and nowhere else: callback
//! signatures, the AES envelope of compatible and safe mode, the API client
//! (access tokens, customer-service messages, media) and the access-token cache.
//!
//! Knows nothing of WebSockets, mailboxes or HTTP routing: it takes bytes and strings
//! and answers with them.

pub mod api;
pub mod callback;
pub mod clock;
pub mod crypto;
pub mod errors;
pub mod limits;
pub mod signature;
pub mod token;

pub use api::{Api, ApiError, Media, REMARK_MAX_CHARS, Template, UserInfo, install_tls_provider};
pub use callback::{CallbackError, CallbackQuery, open_callback};
pub use clock::Clock;
pub use crypto::{Cipher, CryptoError};
pub use errors::plain_words;
pub use signature::{sign, verify};
pub use token::{SharedTokens, TokenCache, TokenMode};
