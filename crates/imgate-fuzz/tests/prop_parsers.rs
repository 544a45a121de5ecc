//! The short fuzzing pass of `scripts/test`, on stable Rust: every kept input of
//! `fuzz/corpus` and `fuzz/regressions` replayed, then generated inputs and mutations of
//! the official samples through the properties of `imgate_fuzz`.
//!
//! `PROPTEST_CASES` sets how many cases each property runs (default below); the long
//! pass is `scripts/fuzz`.

use imgate_fuzz::corpus;
use imgate_fuzz::mutate::{Edit, TOKENS, apply};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Cases per property: with the seed corpus replayed too, about a second of CPU each in
/// a debug build.
const CASES: u32 = 600;
const SEED: u64 = 20_261_130;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(CASES);
    // The same inputs on every run of scripts/test, unless PROPTEST_RNG_SEED says
    // otherwise (scripts/fuzz draws one): a short pass that fails, fails again.
    let rng_seed = match std::env::var_os("PROPTEST_RNG_SEED") {
        Some(_) => Config::default().rng_seed,
        None => RngSeed::Fixed(SEED),
    };
    // No persistence file: the corpus directories are the regression record.
    Config { cases, rng_seed, failure_persistence: None, ..Config::default() }
}

/// Every kept input of `target`, through `check`; a failure names the file.
fn replay(target: &str, check: fn(&[u8])) {
    let inputs = corpus(target);
    assert!(!inputs.is_empty(), "fuzz/corpus/{target} is empty");
    for (path, bytes) in inputs {
        let r = std::panic::catch_unwind(|| check(&bytes));
        assert!(r.is_ok(), "{} breaks a property", path.display());
    }
}

#[test]
fn kept_inputs_still_pass() {
    replay("xml", imgate_fuzz::xml);
    replay("send", imgate_fuzz::send);
    replay("envelope", imgate_fuzz::envelope);
    replay("callback", imgate_fuzz::callback);
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Edit::Insert(at, t)),
        (any::<usize>(), 1usize..24).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Set(at, b)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        (any::<usize>(), any::<usize>()).prop_map(|(at, other)| Edit::Splice(at, other)),
    ]
}

/// A kept input of `target` with a few edits applied: the mutations a fuzzer starts with.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
    let n = seeds.len().max(1);
    (0..n, proptest::collection::vec(edit(), 1..6))
        .prop_map(move |(i, edits)| apply(seeds.get(i).map_or(&[][..], Vec::as_slice), &edits, &seeds))
}

/// Text for element values and JSON strings: mostly ordinary, sometimes hostile.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 _.-]{0,12}",
        2 => proptest::collection::vec(0..TOKENS.len(), 0..6)
            .prop_map(|ts| ts.into_iter().map(|t| TOKENS[t]).collect::<String>()),
        1 => any::<String>(),
        1 => "[0-9]{1,25}",
        1 => "-?[0-9]{1,4}\\.[0-9]{1,20}(e-?[0-9]{1,3})?",
    ]
}

/// An element name: WeChat's own, or one nobody knows.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "ToUserName", "FromUserName", "CreateTime", "MsgType", "Content", "MsgId", "MsgID", "PicUrl",
            "MediaId", "Format", "Location_X", "Location_Y", "Scale", "Label", "Event", "EventKey", "Latitude",
            "Longitude", "Precision", "Encrypt", "item", "Title", "Url",
        ]).prop_map(str::to_owned),
        1 => "[a-zA-Z_][a-zA-Z0-9_.:-]{0,8}",
    ]
}

/// An element value as senders write it: plain, CDATA, references, or children.
fn value(depth: u32) -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        text().prop_map(|t| xml_escape(&t)),
        text().prop_map(|t| format!("<![CDATA[{}]]>", t.replace("]]>", "]]]]><![CDATA[>"))),
        (text(), text()).prop_map(|(a, b)| format!("  {} <![CDATA[{b}]]> &#x20; ", xml_escape(&a))),
        prop::sample::select(vec![
            "text",
            "image",
            "voice",
            "video",
            "shortvideo",
            "location",
            "link",
            "event",
            "enim",
            "status",
            "system"
        ])
        .prop_map(str::to_owned),
        prop::sample::select(vec![
            "1348831860",
            "1976-04-10 12:21:47",
            "-9223372036854775808",
            "99999999999999999999",
            "2024-02-30 00:00:00"
        ])
        .prop_map(str::to_owned),
    ];
    if depth == 0 {
        return leaf.boxed();
    }
    prop_oneof![
        4 => leaf,
        1 => proptest::collection::vec((name(), value(depth - 1)), 1..4)
            .prop_map(|children| children.into_iter().map(|(n, v)| format!("<{n}>{v}</{n}>")).collect::<String>()),
    ]
    .boxed()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A WeChat message built from parts.
fn message() -> impl Strategy<Value = String> {
    proptest::collection::vec((name(), value(3)), 0..10).prop_map(|fields| {
        let body: String = fields.into_iter().map(|(n, v)| format!("<{n}>{v}</{n}>")).collect();
        format!("<xml>{body}</xml>")
    })
}

/// A JSON value for `msg`, with numbers and strings at their edges.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            proptest::collection::vec((text(), inner), 0..4)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A send request built from parts, some of them the wrong type.
fn send_request() -> impl Strategy<Value = String> {
    let id = prop_oneof![
        text().prop_map(serde_json::Value::String),
        any::<i64>().prop_map(serde_json::Value::from),
        json_value()
    ];
    let msg_type = prop_oneof![
        prop::sample::select(vec![
            "text", "image", "voice", "video", "location", "link", "system", "status", "enim", ""
        ])
        .prop_map(|s| serde_json::Value::String(s.to_owned())),
        json_value(),
    ];
    let code = prop_oneof![
        prop::sample::select(vec![
            0i64,
            -1,
            101,
            102,
            103,
            1001,
            1002,
            1006,
            1099,
            5,
            i64::from(i32::MAX) + 1
        ])
        .prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::String),
        json_value(),
    ];
    let msg = prop_oneof![
        json_value(),
        (text(), text()).prop_map(|(c, p)| serde_json::json!({"content": c, "media_path": p})),
    ];
    (msg_type, id.clone(), msg, id, code, any::<u8>()).prop_map(|(t, contact, msg, cid, code, mask)| {
        let mut data = serde_json::Map::new();
        let mut put = |bit: u8, k: &str, v: serde_json::Value| {
            if mask & bit != 0 {
                data.insert(k.to_owned(), v);
            }
        };
        put(1, "msg_type", t);
        put(2, "contact_id", contact);
        put(4, "msg", msg);
        put(8, "id", cid);
        let mut root = serde_json::json!({"data": data});
        if mask & 16 != 0 {
            root["result"] = serde_json::json!({"code": code, "message": "common"});
        }
        root.to_string()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn xml_mutations(input in mutated("xml")) {
        imgate_fuzz::xml(&input);
    }

    #[test]
    fn xml_messages(input in message()) {
        imgate_fuzz::xml(input.as_bytes());
    }

    #[test]
    fn send_mutations(input in mutated("send")) {
        imgate_fuzz::send(&input);
    }

    #[test]
    fn send_requests(input in send_request()) {
        imgate_fuzz::send(input.as_bytes());
    }

    #[test]
    fn envelope_mutations(input in mutated("envelope")) {
        imgate_fuzz::envelope(&input);
    }

    #[test]
    fn envelopes_of_any_message(msg in any::<String>(), appid in any::<String>(), random in any::<[u8; 16]>()) {
        let cipher = imgate_wechat::Cipher::new(imgate_fuzz::AES_KEY).unwrap();
        let sealed = cipher.encrypt_with(&msg, &appid, random);
        prop_assert_eq!(cipher.decrypt(&sealed), Ok((msg, appid)));
        imgate_fuzz::envelope(sealed.as_bytes());
    }

    #[test]
    fn callback_mutations(input in mutated("callback")) {
        imgate_fuzz::callback(&input);
    }

    #[test]
    fn callbacks_of_any_message(mode in any::<u8>(), ts in "[0-9]{0,11}|-9223372036854775808", nonce in "[a-z0-9]{0,8}", body in message()) {
        let mut input = vec![mode];
        input.extend_from_slice(format!("{ts}\0{nonce}\0{body}").as_bytes());
        imgate_fuzz::callback(&input);
    }
}
