//! The OpenAPI description (`GET /openapi.json`, written by hand in
//! src/http/openapi.json) held to the code: every route the router has is described and
//! every described operation is routed, and every example body in it is accepted by a real
//! server. scripts/api-check fuzzes the rest (schemathesis: statuses, content types, schemas).

mod common;

use std::collections::BTreeSet;

use common::*;
use imgate::config::{AccountConfig, Routing};
use imgate::wechat::standin::StandIn;
use imgate_wechat::callback::{Keys, seal};
use serde_json::Value;

const APPID: &str = "wx2c2769f8efd9abc2";
const ORIGINAL: &str = "gh_10f6c3c3ac5a";
const P: &str = "/im_component/wx_official_account";

/// Routes the description leaves out on purpose, and why.
const NOT_DESCRIBED: &[(&str, &str)] = &[
    // The benchmark's ceiling (`bench.noop_route`, off by default): not an integrator's API.
    ("POST", "/bench/noop"),
];

fn description() -> Value {
    serde_json::from_str(imgate::http::openapi::DESCRIPTION).expect("openapi.json is JSON")
}

/// `/a/{x}/b` → `/a/{}/b`: the router and the description may name a parameter differently.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    out.push_str("{}");
                }
            }
            '}' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Every (method, path shape) of the description.
fn described() -> BTreeSet<(String, String)> {
    let d = description();
    let mut ops = BTreeSet::new();
    for (path, item) in d["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                ops.insert((method.to_uppercase(), shape(path)));
            }
        }
    }
    ops
}

/// The text of the call that starts at `open` (an opening parenthesis), to its match.
fn call_at(src: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in src[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &src[open..open + i + 1];
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced call at byte {open}");
}

/// The router's routes, read from its source (src/http/mod.rs): each `.route(PATH, METHODS)`,
/// its path with `{PREFIX}` expanded, and the methods its method router names.
fn routed() -> BTreeSet<(String, String)> {
    let src = include_str!("../src/http/mod.rs");
    let actions = conversation_actions();
    let mut ops = BTreeSet::new();
    for (at, _) in src.match_indices(".route(") {
        let call = call_at(src, at + ".route".len());
        let first = call.find('"').expect("a route's path is a string literal");
        let len = call[first + 1..].find('"').unwrap();
        let path =
            call[first + 1..first + 1 + len].replace("{PREFIX}", P).replace("{{", "{").replace("}}", "}");
        let rest = &call[first + 1 + len..];
        let mut methods = Vec::new();
        for m in ["get", "put", "post", "delete", "patch"] {
            for (i, _) in rest.match_indices(&format!("{m}(")) {
                let before = rest[..i].chars().last().unwrap_or(' ');
                if !before.is_alphanumeric() && before != '_' && before != ':' {
                    methods.push(m.to_uppercase());
                }
            }
        }
        assert!(!methods.is_empty(), "no method read in {call}");
        for m in methods {
            // One route serves every conversation action; the description has one path each.
            if path == format!("{P}/conversations/{{contact}}/{{action}}") {
                for a in &actions {
                    ops.insert((m.clone(), shape(&format!("{P}/conversations/{{c}}/{a}"))));
                }
            } else {
                ops.insert((m, shape(&path)));
            }
        }
    }
    for (m, p) in NOT_DESCRIBED {
        assert!(
            ops.remove(&(m.to_string(), p.to_string())),
            "{m} {p} is no longer routed: drop it from NOT_DESCRIBED"
        );
    }
    ops
}

/// The actions `POST P/conversations/{contact}/{action}` takes: the string arms of the
/// `match action.as_str()` in src/http/conversations.rs.
fn conversation_actions() -> Vec<String> {
    let src = include_str!("../src/http/conversations.rs");
    let body = &src[src.find("match action.as_str()").expect("conversations.rs matches on the action")..];
    let body = &body[..body.find("other =>").expect("an arm for unknown actions")];
    body.lines()
        .filter_map(|l| {
            l.trim().strip_prefix('"').and_then(|l| l.split_once("\" =>")).map(|(a, _)| a.to_owned())
        })
        .collect()
}

#[test]
fn every_route_is_described_and_every_described_operation_is_routed() {
    assert_eq!(
        conversation_actions(),
        ["claim", "transfer", "resolve", "reopen", "notes", "read"],
        "the actions read from conversations.rs"
    );
    let routed = routed();
    let described = described();
    let undescribed: Vec<_> = routed.difference(&described).collect();
    let unrouted: Vec<_> = described.difference(&routed).collect();
    assert_eq!(undescribed, Vec::<&(String, String)>::new(), "routed but not in openapi.json");
    assert_eq!(unrouted, Vec::<&(String, String)>::new(), "in openapi.json but not routed");
}

#[test]
fn the_description_is_openapi_3_1_and_its_references_resolve() {
    let d = description();
    assert_eq!(d["openapi"], "3.1.0");
    let mut refs = Vec::new();
    fn walk(v: &Value, refs: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    refs.push(r.clone());
                }
                m.values().for_each(|v| walk(v, refs));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    walk(&d, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r.strip_prefix('#').expect("local references only");
        assert!(d.pointer(pointer).is_some(), "{r} does not resolve");
    }
    let schemes: BTreeSet<&str> =
        d["components"]["securitySchemes"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        schemes,
        BTreeSet::from(["apiKeyBearer", "apiKeyHeader", "jwtBearer", "jwtQuery", "openMode"])
    );
}

async fn standin() -> (StandIn, String) {
    let wechat = StandIn::new(&[(APPID, "secret")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(wechat.clone().serve(listener));
    (wechat, api)
}

/// A path of the description with its parameters filled in.
fn fill(path: &str) -> String {
    path.replace("{contact_id}", "oFollower1")
        .replace("{appid}", APPID)
        .replace("{id}", "nosuchmedia")
        .replace("{file}", "app.js")
}

/// The operations with an example body, in an order where each makes sense (the follower's
/// message first: the conversation the inbox's examples act on).
const WITH_EXAMPLES: &[&str] = &[
    "callback_receive_for",
    "callback_receive",
    "send_root",
    "send",
    "send_xml",
    "conversation_transfer",
    "conversation_notes",
    "conversation_read",
    "set_canned",
    "set_presence",
    "set_remark",
];

/// imgate with one WeChat account (on the stand-in) of two agents.
async fn gateway() -> (Server, StandIn) {
    gateway_with(|_| {}).await
}

async fn gateway_with(tune: impl FnOnce(&mut imgate::config::Config)) -> (Server, StandIn) {
    let (wechat, api) = standin().await;
    let server = Server::start_with(move |c| {
        tune(c);
        c.wechat.api_base = api;
        c.wechat.accounts.push(AccountConfig {
            original_id: ORIGINAL.into(),
            appid: APPID.into(),
            secret: "secret".into(),
            token: "tok".into(),
            company_id: "acme".into(),
            agents: vec!["agent1".into(), "agent2".into()],
            routing: Routing::Claim,
            ..Default::default()
        });
    })
    .await;
    (server, wechat)
}

#[tokio::test]
async fn every_example_body_is_accepted_and_every_operation_is_routed() {
    let (server, _wechat) = gateway().await;
    let d = description();
    let http = reqwest::Client::new();

    // (operationId, method, path, operation)
    let mut ops = Vec::new();
    for (path, item) in d["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops.push((
                op["operationId"].as_str().unwrap().to_owned(),
                method.to_uppercase(),
                path.clone(),
                op.clone(),
            ));
        }
    }

    let with_examples: BTreeSet<&str> = ops
        .iter()
        .filter(|(_, _, _, op)| {
            op["requestBody"]["content"]
                .as_object()
                .is_some_and(|c| c.values().any(|m| m.get("example").is_some()))
        })
        .map(|(id, _, _, _)| id.as_str())
        .collect();
    assert_eq!(
        with_examples,
        WITH_EXAMPLES.iter().copied().collect(),
        "WITH_EXAMPLES lists every operation with one"
    );

    for id in WITH_EXAMPLES {
        let (_, method, path, op) = ops.iter().find(|(i, _, _, _)| i == id).unwrap();
        for (content_type, media) in op["requestBody"]["content"].as_object().unwrap() {
            let Some(example) = media.get("example") else { continue };
            let body = match example {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut url = reqwest::Url::parse(&server.http(&fill(path))).unwrap();
            let body = if id.starts_with("callback_") {
                // WeChat signs its callbacks: seal the example as it would.
                let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
                let (sealed, q) = seal(&body, Keys { token: "tok", appid: APPID, cipher: None }, &now, id);
                url.query_pairs_mut().extend_pairs(q);
                sealed
            } else {
                url.query_pairs_mut().append_pair("userid", "agent1");
                body
            };
            let req = match method.as_str() {
                "PUT" => http.put(url),
                _ => http.post(url),
            };
            let r = req.header("content-type", content_type).body(body).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            assert_eq!(status, 200, "{id} ({content_type}) refused its example: {text}");
        }
    }

    // Every described operation reaches a handler: never the router's 404 or 405.
    for (id, method, path, _) in &ops {
        if id == "root" || id == "ws_msg" {
            continue; // WebSocket upgrades: ws_delivery.rs
        }
        let url = format!("{}?userid=agent1", server.http(&fill(path)));
        let req = match method.as_str() {
            "GET" => http.get(url),
            "PUT" => http.put(url),
            "DELETE" => http.delete(url),
            _ => http.post(url),
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_ne!(status, 405, "{method} {path}: {text}");
        assert!(!text.contains("no such endpoint"), "{method} {path} is not routed: {status} {text}");
    }
    server.stop().await.unwrap();
}

/// Found by scripts/api-check: `read` took any body that was not `{"seq":N}` (`42`,
/// `[[null]]`, `"x"`) as "all of it". It is refused, and nothing is marked read.
#[tokio::test]
async fn a_read_body_that_names_no_seq_is_refused() {
    let (server, _wechat) = gateway().await;
    let http = reqwest::Client::new();
    let d = description();
    let example = d["paths"][format!("{P}/callback/{{appid}}")]["post"]["requestBody"]["content"]["application/xml"]
        ["example"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = time::OffsetDateTime::now_utc().unix_timestamp().to_string();
    let (sealed, q) = seal(&example, Keys { token: "tok", appid: APPID, cipher: None }, &now, "n1");
    let r =
        http.post(server.http(&format!("{P}/callback/{APPID}"))).query(&q).body(sealed).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let read = format!("{P}/conversations/oFollower1/read?userid=agent1");
    for body in ["42", "[[null, null]]", "\"x\"", "[1]", "{\"seq\":\"1\"}", "{\"seq\":-1}"] {
        let (status, answer) = server.post(&read, "application/json", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["result"]["code"], -1, "{body}: {answer}");
    }
    let (status, c) = server.get(&format!("{P}/conversations/oFollower1?userid=agent1")).await;
    assert_eq!(status, 200);
    assert_eq!(c["data"]["unread"], 1, "nothing was marked read: {c}");
    for body in ["", "{}", "[]", "{\"seq\":null}", "[{\"seq\":1}]"] {
        let (status, answer) = server.post(&read, "application/json", body).await;
        assert_eq!(status, 200, "{body}: {answer}");
    }
    server.stop().await.unwrap();
}

/// Found reading the description against the handlers: the team inbox's endpoints took
/// their body as plain `Bytes`, so a chunked body over `limits.http_body_max` (no declared
/// length for the early check to see) was answered by axum's rejection, in text/plain, not
/// the error frame the description promises. Each now answers 413 with the frame.
#[tokio::test]
async fn an_inbox_body_over_the_limit_gets_the_error_frame() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, _wechat) = gateway_with(|c| c.limits.http_body_max = 1024).await;
    for (method, path) in [
        ("POST", format!("{P}/conversations/oFollower1/notes")),
        ("PUT", format!("{P}/canned")),
        ("PUT", format!("{P}/presence")),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "{method} {path}?userid=agent1 HTTP/1.1\r\nHost: imgate\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let chunk = "x".repeat(4096);
        tcp.write_all(format!("{:x}\r\n{chunk}\r\n0\r\n\r\n", chunk.len()).as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer)).await.expect("an answer").unwrap();
        let answer = String::from_utf8_lossy(&answer).to_string();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with("HTTP/1.1 413"), "{method} {path}: {answer}");
        assert!(
            head.to_ascii_lowercase().contains("content-type: application/json"),
            "{method} {path}: {answer}"
        );
        assert!(body.contains("\"code\":-1"), "{method} {path}: {answer}");
    }
    server.stop().await.unwrap();
}
