//! `GET P/history`: a user's past messages by contact, paged by seq.

mod common;

use common::*;

#[tokio::test]
async fn history_pages_by_contact_newest_page_first() {
    let s = Server::start().await;
    for i in 0..7 {
        s.post("/send?userid=alice", "application/json", text_to("agent", &format!("a{i}"))).await;
        s.post("/send?userid=bob", "application/json", text_to("agent", &format!("b{i}"))).await;
    }
    // The agent answers alice from its socket: the agent's copy is in its history too.
    let mut console = s.connect("/?userid=agent").await;
    console.frames(14).await;
    console.send(&text_to("alice", "reply")).await;
    let mut two = console.frames(2).await; // the ack and the copy, in either order
    two.retain(|f| f["result"]["code"] == 0);
    assert_eq!(two.len(), 1);
    let page = |q: &str| {
        let path = format!("/im_component/wx_official_account/history?userid=agent{q}");
        let s = &s;
        async move { s.get(&path).await }
    };
    let (status, p1) = page("&contact_id=alice&limit=3").await;
    assert_eq!(status, 200);
    let texts = |p: &serde_json::Value| -> Vec<String> {
        p["data"]["messages"].as_array().unwrap().iter().map(|m| content(m).to_owned()).collect()
    };
    assert_eq!(texts(&p1), ["a5", "a6", "reply"]);
    let last = &p1["data"]["messages"][2];
    assert_eq!(last["data"]["direction"], "out");
    assert_eq!(last["data"]["contact_id"], "alice");
    let before = p1["data"]["next_before"].as_u64().unwrap();
    let (_, p2) = page(&format!("&contact_id=alice&limit=3&before={before}")).await;
    assert_eq!(texts(&p2), ["a2", "a3", "a4"]);
    let before = p2["data"]["next_before"].as_u64().unwrap();
    let (_, p3) = page(&format!("&contact_id=alice&limit=3&before={before}")).await;
    assert_eq!(texts(&p3), ["a0", "a1"]);
    assert!(p3["data"]["next_before"].is_null());
    // Without a contact: everything, still in seq order.
    let (_, all) = page("&limit=200").await;
    let seqs: Vec<u64> = all["data"]["messages"].as_array().unwrap().iter().map(seq).collect();
    assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
    let (status, _) = s.get("/im_component/wx_official_account/history").await;
    assert_eq!(status, 400);
    let (status, _) = page("&before=soon").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_page_is_capped_at_history_page_max() {
    let s = Server::start_with(|c| c.limits.history_page_max = 3).await;
    for i in 1..=5 {
        let (status, _) =
            s.post("/send?userid=alice", "application/json", text_to("bob", &i.to_string())).await;
        assert_eq!(status, 200);
    }
    let (status, p) = s.get("/im_component/wx_official_account/history?userid=bob&limit=50").await;
    assert_eq!(status, 200, "{p}");
    let texts: Vec<&str> = p["data"]["messages"].as_array().unwrap().iter().map(content).collect();
    assert_eq!(texts, ["3", "4", "5"], "the newest page, of at most history_page_max");
    assert_eq!(p["data"]["next_before"], 3);
}
