//! `sha1(sort(parts).concat())`, lowercase hex: the signature of the callback URL
//! (token, timestamp, nonce) and of an encrypted message (… and `Encrypt`).

use sha1::{Digest, Sha1};

/// The signature of `parts`.
pub fn sign(parts: &[&str]) -> String {
    let mut sorted: Vec<&str> = parts.to_vec();
    sorted.sort_unstable();
    let mut h = Sha1::new();
    for p in sorted {
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut hex = String::with_capacity(40);
    for b in digest.iter() {
        hex.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    hex
}

/// Whether `given` is the signature of `parts`, compared in constant time (case-blind,
/// as some proxies upper-case query values).
pub fn verify(given: &str, parts: &[&str]) -> bool {
    let want = sign(parts);
    let given = given.trim().to_ascii_lowercase();
    constant_time_eq(want.as_bytes(), given.as_bytes())
}

/// Equal bytes, in time that depends only on the lengths (`subtle` keeps the compiler
/// from turning the comparison into an early exit).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_verification_vectors() {
        // V1, V2 of ../shared/wechat/vectors.md
        assert_eq!(
            sign(&["spamtest", "1409735669", "1320562132"]),
            "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a"
        );
        assert_eq!(sign(&["AAAAA", "1714037059", "486452656"]), "899cf89e464efb63f54ddac96b0a0a235f53aa78");
        assert!(verify(
            "16120EC1B8DBB870F510D87CE6BC2463EAE6CA1A",
            &["spamtest", "1409735669", "1320562132"]
        ));
        assert!(!verify(
            "16120ec1b8dbb870f510d87ce6bc2463eae6ca1a",
            &["spamtest", "1409735669", "1320562133"]
        ));
        assert!(!verify("", &["spamtest", "1409735669", "1320562132"]));
        assert!(!verify("16120ec1", &["spamtest", "1409735669", "1320562132"]));
    }
}
