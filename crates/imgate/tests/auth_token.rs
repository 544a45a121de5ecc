//! `auth.mode = "token"`: JWTs for users, API keys for backends, allowed Origins,
//! per-user connection limits.

mod common;

use common::*;
use jsonwebtoken::{EncodingKey, Header};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const SECRET: &str = "a-test-secret-of-some-length";

fn jwt(sub: &str, exp_from_now: i64) -> String {
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + exp_from_now;
    let claims = serde_json::json!({"sub": sub, "exp": exp});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

async fn token_server() -> Server {
    Server::start_with(|c| {
        c.auth.mode = imgate::config::AuthMode::Token;
        c.auth.jwt_secret = SECRET.into();
        c.auth.api_keys = vec!["backend-key-1".into()];
        c.auth.allowed_origins = vec!["https://console.example".into()];
        c.hub.max_connections_per_user = 2;
    })
    .await
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
        .header("x-api-key", "backend-key-1")
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
    let client = reqwest::Client::new();
    let send = |auth: Option<String>| {
        let mut r = client.post(s.http("/im_component/wx_official_account/send")).body(text_to("bob", "hi"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(send(None).await.unwrap().status(), 401);
    assert_eq!(send(Some("Bearer wrong-key".into())).await.unwrap().status(), 401);
    let r = send(Some(format!("Bearer {}", jwt("alice", 600)))).await.unwrap();
    assert_eq!(r.status(), 200);
    let f = bob.frame().await;
    assert_eq!(f["data"]["contact_id"], "alice", "the sender is the token's subject");
    // The open-mode userid cannot override the token.
    let r = client
        .post(s.http("/send?userid=mallory"))
        .header("authorization", format!("Bearer {}", jwt("alice", 600)))
        .body(text_to("bob", "spoof"))
        .send()
        .await
        .unwrap();
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
