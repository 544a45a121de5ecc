//! The configuration file as an operator handles it: the commented example that
//! `imgate config init` writes — every key with its default and what it does, made from
//! the same text as `imgate serve --help`, so the two cannot drift — and the effective
//! configuration that `imgate config check` prints, with its secrets masked.

use crate::config::{Config, KEYS_HELP};

/// Where the descriptions start in [`KEYS_HELP`]; a line indented this far continues the
/// description above it.
const DESCRIPTION_COLUMN: usize = 37;

/// What stands for a secret that is set.
pub const MASK: &str = "********";

/// A commented `imgate.toml`: each key commented out with its default, under its
/// description. Uncommenting a key changes nothing until its value is edited. An
/// account's header is commented too (an account has no defaults): uncomment it with the
/// account's keys.
pub fn example() -> String {
    let mut out = String::from(
        "# imgate.toml: every key, with its default. Uncomment a key to change it.\n\
         # The environment overrides the file: IMGATE_<KEY>, sections joined by '__'\n\
         # (IMGATE_STORE__SYNC=full). Check a file with `imgate config check --config FILE`.\n",
    );
    // The key being written: its line waits for the rest of its description.
    let mut pending: Option<(String, Vec<String>)> = None;
    let flush = |out: &mut String, pending: &mut Option<(String, Vec<String>)>| {
        if let Some((key_line, description)) = pending.take() {
            out.push('\n');
            for d in description {
                out.push_str(&format!("# {d}\n"));
            }
            out.push_str(&key_line);
            out.push('\n');
        }
    };
    for line in KEYS_HELP.lines().skip(1) {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if line.len() > DESCRIPTION_COLUMN && line[..DESCRIPTION_COLUMN].trim().is_empty() {
            match &mut pending {
                Some((_, description)) => description.push(trimmed.to_owned()),
                None => out.push_str(&format!("# {trimmed}\n")),
            }
            continue;
        }
        flush(&mut out, &mut pending);
        if trimmed.starts_with('[') {
            let (header, description) = split_header(trimmed);
            // An account has no defaults: its header stays commented, like its keys.
            let header = if header.starts_with("[[") { format!("# {header}") } else { header.to_owned() };
            let description = if description.is_empty() { vec![] } else { vec![description.to_owned()] };
            pending = Some((header, description));
            continue;
        }
        let Some((key, value, description)) = split_key(trimmed) else { continue };
        let description = if description.is_empty() { vec![] } else { vec![description.to_owned()] };
        pending = Some((format!("# {key} = {value}"), description));
    }
    flush(&mut out, &mut pending);
    out
}

/// `[[wechat.accounts]]   one per Official Account…` → the header and its description.
fn split_header(line: &str) -> (&str, &str) {
    let end = line.find(']').map_or(line.len(), |i| i + if line.starts_with("[[") { 2 } else { 1 });
    (&line[..end], line[end..].trim())
}

/// `key = value   description` → its three parts; the value is a TOML string, array or
/// bare word, unescaped as written in the help (`\"` there is `"` here).
fn split_key(line: &str) -> Option<(&str, &str, &str)> {
    let (key, rest) = line.split_once(" = ")?;
    let rest = rest.trim_start();
    let end = match rest.as_bytes().first()? {
        b'"' => rest[1..].find('"').map(|i| i + 2)?,
        b'[' => rest.find(']').map(|i| i + 1)?,
        _ => rest.find(char::is_whitespace).unwrap_or(rest.len()),
    };
    Some((key.trim(), &rest[..end], rest[end..].trim()))
}

/// The configuration as the server would run it, as TOML, with every secret masked: the
/// JWT secret, API keys, accounts' AppSecrets, tokens and AES keys, a Redis password.
pub fn effective(config: &Config) -> Result<String, toml::ser::Error> {
    let mut c = config.clone();
    let mask = |s: &mut String| {
        if !s.is_empty() {
            *s = MASK.to_owned();
        }
    };
    mask(&mut c.auth.jwt_secret);
    c.auth.api_keys.iter_mut().for_each(mask);
    for a in &mut c.wechat.accounts {
        mask(&mut a.secret);
        mask(&mut a.token);
        mask(&mut a.encoding_aes_key);
    }
    mask_url_password(&mut c.store.redis_url);
    c.store.redis_urls.iter_mut().for_each(mask_url_password);
    mask_url_password(&mut c.store.redis_sentinel_master);
    toml::to_string(&c)
}

/// `redis://user:password@host` → `redis://user:MASK@host`; anything else unchanged.
fn mask_url_password(s: &mut String) {
    if let Ok(mut u) = url::Url::parse(s)
        && u.password().is_some()
        && u.set_password(Some(MASK)).is_ok()
    {
        *s = u.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_key_value_and_description() {
        assert_eq!(
            split_key(r#"listen = "127.0.0.1:1234"          address to listen on"#),
            Some(("listen", r#""127.0.0.1:1234""#, "address to listen on"))
        );
        assert_eq!(split_key("api_keys = []   keys"), Some(("api_keys", "[]", "keys")));
        assert_eq!(split_key("max_batch = 512"), Some(("max_batch", "512", "")));
        assert_eq!(
            split_header("[[wechat.accounts]]   one per account"),
            ("[[wechat.accounts]]", "one per account")
        );
        assert_eq!(split_header("[store]"), ("[store]", ""));
    }
}
