//! `auth.mode = "token"`: JWTs for users, API keys for backends, allowed Origins,
//! per-user connection limits; no empty token, no key in a URL, `nbf` and the leeway,
//! sockets closed when their token expires, `/metrics` behind a key.

mod common;

use common::*;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const SECRET: &str = "a-test-secret-of-32-bytes-or-more";
const KEY: &str = "backend-key-1-of-32-characters-or-more";

use common::jwt::now;

fn sign(claims: serde_json::Value) -> String {
    common::jwt::sign(SECRET, claims)
}

fn jwt(sub: &str, exp_from_now: i64) -> String {
    common::jwt::jwt(SECRET, sub, exp_from_now)
}

async fn token_server_with(tune: impl FnOnce(&mut imgate::config::Config)) -> Server {
    Server::start_with(|c| {
        c.auth.mode = imgate::config::AuthMode::Token;
        c.auth.jwt_secret = SECRET.into();
        c.auth.api_keys = vec![KEY.into()];
        c.auth.allowed_origins = vec!["https://console.example".into()];
        c.hub.max_connections_per_user = 2;
        tune(c);
    })
    .await
}

async fn token_server() -> Server {
    token_server_with(|_| {}).await
}

/// POST `body` to `path` with one header of authentication, or none.
async fn post_as(s: &Server, path: &str, auth: Option<(&str, String)>, body: String) -> reqwest::Response {
    let mut r = reqwest::Client::new().post(s.http(path)).body(body);
    if let Some((name, value)) = auth {
        r = r.header(name, value);
    }
    r.send().await.unwrap()
}

fn bearer(token: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {token}")))
}

/// The HTTP status of a WebSocket upgrade that must be refused.
async fn refused(s: &Server, path: &str) -> u16 {
    let e = Client::try_connect(&s.ws(path), None).await.err().unwrap_or_else(|| panic!("{path} connected"));
    status_of(e)
}

fn status_of(e: tungstenite::Error) -> u16 {
    match e {
        tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn websocket_users_need_a_valid_token() {
    let s = token_server().await;
    let good = jwt("agent1", 600);
    let mut c = s.connect(&format!("/?token={good}")).await;
    let mut also =
        s.connect(&format!("/im_component/wx_official_account/msg?userid=agent1&token={good}")).await;
    for (path, status) in [
        ("/?userid=agent1".to_owned(), 401),
        (format!("/?userid=agent2&token={good}"), 403),
        (format!("/?token={}", jwt("agent1", -600)), 401),
        ("/?token=not.a.jwt".to_owned(), 401),
    ] {
        let e =
            Client::try_connect(&s.ws(&path), None).await.err().unwrap_or_else(|| panic!("{path} connected"));
        assert_eq!(status_of(e), status, "{path}");
    }
    // A third connection for the same user is over the limit of 2.
    let e = Client::try_connect(&s.ws(&format!("/?token={good}")), None).await.err().unwrap();
    assert_eq!(status_of(e), 429);
    // A backend with its API key sends to the user; both connections get it.
    let r = reqwest::Client::new()
        .post(s.http("/send"))
        .header("x-api-key", KEY)
        .header("content-type", "application/xml")
        .body(SEED_XML.replace("<ToUserName>1</ToUserName>", "<ToUserName>agent1</ToUserName>"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.frame().await["data"]["contact_id"], "魏秀兰");
    assert_eq!(also.frame().await["data"]["contact_id"], "魏秀兰");
}

#[tokio::test]
async fn http_senders_need_a_token_or_an_api_key() {
    let s = token_server().await;
    let mut bob = s.connect(&format!("/?token={}", jwt("bob", 600))).await;
    let send = |auth| post_as(&s, "/im_component/wx_official_account/send", auth, text_to("bob", "hi"));
    assert_eq!(send(None).await.status(), 401);
    assert_eq!(send(bearer("wrong-key")).await.status(), 401);
    assert_eq!(send(bearer(&jwt("alice", 600))).await.status(), 200);
    let f = bob.frame().await;
    assert_eq!(f["data"]["contact_id"], "alice", "the sender is the token's subject");
    // The open-mode userid cannot override the token.
    let r = post_as(&s, "/send?userid=mallory", bearer(&jwt("alice", 600)), text_to("bob", "spoof")).await;
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn origins_outside_the_list_are_refused() {
    let s = token_server().await;
    let good = jwt("agent1", 600);
    let mut req = s.ws(&format!("/?token={good}")).into_client_request().unwrap();
    req.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    let e = tokio_tungstenite::connect_async(req).await.err().unwrap();
    assert_eq!(status_of(e), 403);
    let mut req = s.ws(&format!("/?token={good}")).into_client_request().unwrap();
    req.headers_mut().insert("origin", "https://console.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[tokio::test]
async fn an_empty_token_matches_nothing() {
    let s = token_server().await;
    assert_eq!(refused(&s, "/?token=").await, 401);
    assert_eq!(refused(&s, "/?token=&userid=agent1").await, 401);
    for (name, value) in [("authorization", "Bearer "), ("authorization", "Bearer"), ("x-api-key", "")] {
        let r = post_as(&s, "/send", Some((name, value.to_owned())), text_to("bob", "hi")).await;
        assert_eq!(r.status(), 401, "{name}: {value:?}");
    }
    assert_eq!(post_as(&s, "/send?token=", None, text_to("bob", "hi")).await.status(), 401);
}

#[tokio::test]
async fn claims_are_checked_nbf_and_sub() {
    let s = token_server().await;
    let exp = now() + 600;
    // Not yet valid: nbf ten minutes ahead, far beyond the default leeway (30 s).
    let early = sign(serde_json::json!({"sub": "agent1", "exp": exp, "nbf": now() + 600}));
    assert_eq!(refused(&s, &format!("/?token={early}")).await, 401);
    let (status, body) = s.get(&format!("/im_component/wx_official_account/history?token={early}")).await;
    assert_eq!(status, 401);
    assert!(body["result"]["message"].as_str().unwrap().contains("ImmatureSignature"), "{body}");
    // An empty subject names nobody.
    let nobody = sign(serde_json::json!({"sub": "", "exp": exp}));
    assert_eq!(refused(&s, &format!("/?token={nobody}")).await, 401);
    assert_eq!(refused(&s, &format!("/?token={nobody}&userid=agent1")).await, 401);
    assert_eq!(post_as(&s, "/send", bearer(&nobody), text_to("bob", "hi")).await.status(), 401);
    // A past nbf is fine.
    let ok = sign(serde_json::json!({"sub": "agent1", "exp": exp, "nbf": now() - 600}));
    s.connect(&format!("/?token={ok}")).await;
}

#[tokio::test]
async fn the_leeway_is_configurable() {
    // Five seconds late: accepted with a minute of leeway, refused with none.
    let late = jwt("agent1", -5);
    let strict = token_server_with(|c| c.auth.leeway = std::time::Duration::ZERO).await;
    assert_eq!(refused(&strict, &format!("/?token={late}")).await, 401);
    let lenient = token_server_with(|c| c.auth.leeway = std::time::Duration::from_secs(60)).await;
    lenient.connect(&format!("/?token={late}")).await;
    // The default is at most 30 s: five minutes late is refused.
    let s = token_server().await;
    assert_eq!(refused(&s, &format!("/?token={}", jwt("agent1", -300))).await, 401);
    let early = sign(serde_json::json!({"sub": "agent1", "exp": now() + 600, "nbf": now() + 30}));
    lenient.connect(&format!("/?token={early}")).await;
    assert_eq!(refused(&strict, &format!("/?token={early}")).await, 401);
}

#[tokio::test]
async fn api_keys_only_in_headers() {
    let s = token_server().await;
    let r = post_as(&s, &format!("/send?token={KEY}"), None, text_to("bob", "hi")).await;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["result"]["message"].as_str().unwrap().contains("header"), "{body}");
    assert_eq!(refused(&s, &format!("/?token={KEY}&userid=agent1")).await, 401);
    let (status, _) =
        s.get(&format!("/im_component/wx_official_account/history?token={KEY}&userid=bob")).await;
    assert_eq!(status, 401);
    // The same key in a header works.
    for (name, value) in [("x-api-key", KEY.to_owned()), ("authorization", format!("Bearer {KEY}"))] {
        let r = post_as(&s, "/send?userid=alice", Some((name, value)), text_to("bob", "hi")).await;
        assert_eq!(r.status(), 200, "{name}");
    }
    let mut req = s.ws("/?userid=agent1").into_client_request().unwrap();
    req.headers_mut().insert("x-api-key", KEY.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[tokio::test]
async fn a_websocket_is_closed_when_its_token_expires() {
    let s = token_server_with(|c| c.auth.leeway = std::time::Duration::ZERO).await;
    let mut c = s.connect(&format!("/?token={}", jwt("agent1", 4))).await;
    // A connection with a long-lived token and one of a backend's key stay open.
    let mut long = s.connect(&format!("/?token={}", jwt("agent2", 600))).await;
    let close = c.closed().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001);
    assert_eq!(close.reason.as_str(), "token expired");
    let r =
        post_as(&s, "/send?userid=alice", Some(("x-api-key", KEY.into())), text_to("agent2", "still here"))
            .await;
    assert_eq!(r.status(), 200);
    assert_eq!(content(&long.frame().await), "still here");
}

#[tokio::test]
async fn metrics_need_an_api_key_in_token_mode() {
    let s = token_server().await;
    let client = reqwest::Client::new();
    let get = |header: Option<(&'static str, String)>, query: &str| {
        let mut r = client.get(s.http(&format!("/metrics{query}")));
        if let Some((k, v)) = header {
            r = r.header(k, v);
        }
        r.send()
    };
    assert_eq!(get(None, "").await.unwrap().status(), 401);
    assert_eq!(
        get(Some(("authorization", format!("Bearer {}", jwt("agent1", 600)))), "").await.unwrap().status(),
        401
    );
    assert_eq!(get(None, &format!("?token={KEY}")).await.unwrap().status(), 401);
    assert_eq!(get(Some(("x-api-key", "wrong".into())), "").await.unwrap().status(), 401);
    for h in [("x-api-key", KEY.to_owned()), ("authorization", format!("Bearer {KEY}"))] {
        let r = get(Some(h), "").await.unwrap();
        assert_eq!(r.status(), 200);
        // The refusals above are counted there.
        assert!(r.text().await.unwrap().contains("imgate_http_errors_total"));
    }
    // Open mode (on loopback) keeps /metrics open.
    let open = Server::start().await;
    assert_eq!(open.get("/metrics").await.0, 200);
}
