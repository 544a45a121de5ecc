//! Per-sender rate limits: a flooding sender gets 429 with Retry-After, other senders
//! are served at the same time, and what was refused is not stored.

mod common;

use common::{SEED_XML, Server, content, text_to};

/// Posts `body` until the answer is 429; the 2xx answers' contents, and the refusal.
async fn flood(
    s: &Server,
    path: &str,
    content_type: &str,
    body: impl Fn(usize) -> String,
) -> (Vec<usize>, reqwest::Response) {
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    for i in 0..100 {
        let r = client
            .post(s.http(path))
            .header("content-type", content_type)
            .body(body(i))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => accepted.push(i),
            429 => return (accepted, r),
            other => panic!("unexpected {other}: {}", r.text().await.unwrap()),
        }
    }
    panic!("100 sends in a row were accepted at 1 a second with bursts of 5");
}

#[tokio::test]
async fn a_flooding_sender_gets_429_and_others_are_served() {
    let s = Server::start_with(|c| {
        c.limits.sender_rate = 1;
        c.limits.sender_burst = 5;
    })
    .await;
    let (accepted, refused) =
        flood(&s, "/send?userid=flood", "application/json", |i| text_to("r", &format!("flood-{i}"))).await;
    assert!(accepted.len() >= 5, "{accepted:?}");
    assert_eq!(refused.headers()["retry-after"], "1");
    let frame: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(frame["result"]["code"], -1, "{frame}");
    assert!(frame["result"]["message"].as_str().unwrap().contains("\"flood\""), "{frame}");

    // Another sender, now, while the flooder is refused.
    let (status, _) = s.post("/send?userid=calm", "application/json", text_to("r", "calm")).await;
    assert_eq!(status, 200);
    let (status, _) = s.post("/send?userid=flood", "application/json", text_to("r", "refused")).await;
    assert_eq!(status, 429);

    // WeChat XML without a userid counts against its FromUserName.
    let (xml_accepted, refused) = flood(&s, "/send", "text/xml", |i| {
        SEED_XML
            .replace("<MsgId>19</MsgId>", &format!("<MsgId>{i}</MsgId>"))
            .replace("<ToUserName>1<", "<ToUserName>x<")
    })
    .await;
    assert!(xml_accepted.len() >= 5, "{xml_accepted:?}");
    assert_eq!(refused.headers()["retry-after"], "1");
    let (status, _) = s.post("/send?userid=calm", "application/json", text_to("r", "end")).await;
    assert_eq!(status, 200);

    // The mailbox holds what was accepted, in order, and nothing that was refused.
    let mut want: Vec<String> = accepted.iter().map(|i| format!("flood-{i}")).collect();
    want.extend(["calm".to_owned(), "end".to_owned()]);
    let mut c = s.connect("/?userid=r&since=0").await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("end") {
        got.push(content(&c.frame().await).to_owned());
    }
    assert_eq!(got, want);
    let mut x = s.connect("/?userid=x&since=0").await;
    assert_eq!(x.frames(xml_accepted.len()).await.len(), xml_accepted.len());
    s.post("/send?userid=calm", "application/json", text_to("x", "sentinel")).await;
    assert_eq!(content(&x.frame().await), "sentinel");
}
