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

#[tokio::test]
async fn a_websocket_sender_shares_its_bucket_and_is_refused_with_an_error_frame() {
    let s = Server::start_with(|c| {
        c.limits.sender_rate = 1;
        c.limits.sender_burst = 5;
    })
    .await;
    let mut ws = s.connect("/?userid=flood").await;
    // Sends on the socket, one answer each, until one is refused.
    let mut acked = Vec::new();
    let refusal = loop {
        assert!(acked.len() < 100, "100 sends in a row were accepted at 1 a second with bursts of 5");
        let i = acked.len();
        ws.send(&text_to("r", &format!("ws-{i}"))).await;
        // The sender's own copy of what it sent (direction "out") may come before the ack.
        let f = loop {
            let f = ws.frame().await;
            if f["data"]["direction"] != "out" {
                break f;
            }
        };
        if f["result"]["code"] == -1 {
            break f;
        }
        assert_eq!(f["result"]["code"], 0, "{f}");
        acked.push(i);
    };
    assert!(acked.len() >= 5, "{acked:?}");
    let reason = refusal["result"]["message"].as_str().unwrap();
    assert!(reason.contains("\"flood\"") && reason.contains("rate limit"), "{reason}");
    // The same bucket over HTTP: refused there too, while another sender is served.
    let (status, _) = s.post("/send?userid=flood", "application/json", text_to("r", "over http")).await;
    assert_eq!(status, 429);
    let (status, _) = s.post("/send?userid=calm", "application/json", text_to("r", "calm")).await;
    assert_eq!(status, 200);
    // Nothing refused was stored: the recipient holds the accepted ones, then calm's.
    let (_, page) = s.get("/im_component/wx_official_account/history?userid=r&limit=200").await;
    let got: Vec<String> =
        page["data"]["messages"].as_array().unwrap().iter().map(|m| content(m).to_owned()).collect();
    let mut want: Vec<String> = acked.iter().map(|i| format!("ws-{i}")).collect();
    want.push("calm".into());
    assert_eq!(got, want);
}
