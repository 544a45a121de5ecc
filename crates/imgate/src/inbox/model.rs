//! The conversation record both engines keep, and the list's order, filters and cursor:
//! pure code, the same for every engine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// How much message text a conversation keeps for `q` to search: the latest, so a long
/// conversation costs no more than a short one.
const SEARCH_TEXT_MAX: usize = 2048;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvState {
    #[default]
    Open,
    Resolved,
}

impl ConvState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvState::Open => "open",
            ConvState::Resolved => "resolved",
        }
    }
}

/// One follower of one account, as the team inbox sees it. Stored whole (JSON) by
/// every engine, and changed only through [`super::Conversations::update`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Conversation {
    pub appid: String,
    pub contact_id: String,
    pub company_id: String,
    pub state: ConvState,
    pub assignee: Option<String>,
    /// Unix seconds of the oldest follower message not answered yet.
    pub waiting_since: Option<i64>,
    /// Unix seconds of the last message, either way.
    pub last_at: i64,
    pub last_message: Option<Value>,
    /// The follower's name: the remark an agent gave them (WeChat gives no nickname).
    pub profile_name: String,
    pub profile_avatar: String,
    /// What WeChat's `user/info` says of the follower (the WeChat channel's `Profile`, as
    /// JSON), once fetched.
    pub profile: Option<Value>,
    /// Follower messages each agent has not read.
    pub unread: BTreeMap<String, u64>,
    /// The seq, in each agent's mailbox, of the follower's latest message: a read up to
    /// it clears that agent's unread count.
    pub last_in: BTreeMap<String, u64>,
    /// The seq of the last message, either way, in each agent's mailbox: each mailbox
    /// numbers its own copy.
    pub last_seq: BTreeMap<String, u64>,
    /// The latest message text, for `q`.
    pub text: String,
}

impl Conversation {
    pub fn new(appid: &str, contact_id: &str, company_id: &str) -> Conversation {
        Conversation {
            appid: appid.to_owned(),
            contact_id: contact_id.to_owned(),
            company_id: company_id.to_owned(),
            ..Conversation::default()
        }
    }

    /// The agent this conversation counts against: its assignee while open.
    pub fn load_of(&self) -> Option<&str> {
        if self.state == ConvState::Open { self.assignee.as_deref() } else { None }
    }

    /// Between two gateway users (see [`super::direct`]), not a follower of an account.
    pub fn is_direct(&self) -> bool {
        super::direct::is_direct(&self.appid)
    }

    /// Open and a follower message not answered.
    pub fn waiting(&self) -> bool {
        self.state == ConvState::Open && self.waiting_since.is_some()
    }

    /// Keep `text` for search, dropping the oldest beyond [`SEARCH_TEXT_MAX`].
    pub fn remember_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.text.push('\n');
        self.text.push_str(text);
        if self.text.len() > SEARCH_TEXT_MAX {
            let mut cut = self.text.len() - SEARCH_TEXT_MAX;
            while !self.text.is_char_boundary(cut) {
                cut += 1;
            }
            self.text.drain(..cut);
        }
    }

    /// The wire object (docs/inbox.md) as `viewer` sees it: its own unread count.
    pub fn view(&self, viewer: &str) -> Value {
        let direct = self.is_direct();
        json!({
            "contact_id": self.contact_id,
            "kind": if direct { "user" } else { "follower" },
            "appid": if direct { "" } else { self.appid.as_str() },
            "company_id": self.company_id,
            "state": self.state.as_str(),
            "assignee": self.assignee,
            "unread": self.unread.get(viewer).copied().unwrap_or(0),
            "waiting_since": if self.state == ConvState::Open { self.waiting_since } else { None },
            "last_at": self.last_at,
            "last_message": self.last_message.clone().map(|mut m| {
                if let Some(seq) = self.last_seq.get(viewer) {
                    m["seq"] = json!(seq);
                }
                m
            }),
            "profile": self.profile_view(),
        })
    }

    /// `name` and `avatar`, and the follower's profile as WeChat gave it (`unionid`,
    /// `subscribed`, …) once fetched.
    fn profile_view(&self) -> Value {
        let mut p = match &self.profile {
            Some(Value::Object(m)) => Value::Object(m.clone()),
            _ => json!({}),
        };
        p["name"] = json!(self.profile_name);
        p["avatar"] = json!(self.profile_avatar);
        p
    }

    /// Take the follower's profile (`remark` becomes the name).
    pub fn set_profile(&mut self, profile: &Value) {
        self.profile_name = profile.get("remark").and_then(Value::as_str).unwrap_or_default().to_owned();
        self.profile = Some(profile.clone());
    }

    /// The list's order: waiting first, the longest waiting first; then the latest
    /// message first; the contact id breaks ties so the order is total (a cursor needs it).
    pub fn rank(&self) -> Rank {
        match self.waiting_since {
            Some(since) if self.state == ConvState::Open => Rank(0, since, self.contact_id.clone()),
            _ => Rank(1, self.last_at.saturating_neg(), self.contact_id.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank(u8, i64, String);

impl Rank {
    pub fn cursor(&self) -> String {
        format!("{}:{}:{}", self.0, self.1, self.2)
    }

    pub fn parse(cursor: &str) -> Option<Rank> {
        let mut parts = cursor.splitn(3, ':');
        let w = parts.next()?.parse().ok()?;
        let k = parts.next()?.parse().ok()?;
        Some(Rank(w, k, parts.next()?.to_owned()))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Mine,
    Unassigned,
    All,
    Waiting,
}

impl View {
    pub fn parse(s: &str) -> Option<View> {
        Some(match s {
            "mine" => View::Mine,
            "unassigned" => View::Unassigned,
            "all" => View::All,
            "waiting" => View::Waiting,
            _ => return None,
        })
    }

    fn holds(self, c: &Conversation, viewer: &str) -> bool {
        match self {
            // A user's conversations with other gateway users are its own.
            View::Mine => c.assignee.as_deref() == Some(viewer) || c.is_direct(),
            View::Unassigned => c.assignee.is_none() && c.state == ConvState::Open && !c.is_direct(),
            View::All => true,
            View::Waiting => c.waiting(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ListQuery {
    pub view: View,
    pub state: Option<ConvState>,
    pub q: Option<String>,
    pub limit: usize,
    pub cursor: Option<Rank>,
}

fn matches(c: &Conversation, q: &str) -> bool {
    c.search().contains(&q.to_lowercase())
}

impl Conversation {
    /// What `q` searches, lowercased: the kept text, the name, the openid.
    pub fn search(&self) -> String {
        format!("{}\n{}\n{}", self.text, self.profile_name, self.contact_id).to_lowercase()
    }
}

impl Rank {
    /// The parts, for an engine that orders in its own query.
    pub fn parts(&self) -> (u8, i64, &str) {
        (self.0, self.1, &self.2)
    }

    pub fn parts_owned(self) -> (u8, i64, String) {
        (self.0, self.1, self.2)
    }
}

impl View {
    pub fn name(self) -> &'static str {
        match self {
            View::Mine => "mine",
            View::Unassigned => "unassigned",
            View::All => "all",
            View::Waiting => "waiting",
        }
    }
}

/// A page: the conversations, the next cursor, the counts of each view.
pub type Page = (Vec<Conversation>, Option<String>, Value);

/// One page of `all` (every conversation of the viewer's accounts) as `viewer` asks for it,
/// the cursor of the next page, and the counts of each view (under the same `state` and
/// `q`).
pub fn page(
    mut all: Vec<Conversation>,
    viewer: &str,
    query: &ListQuery,
) -> (Vec<Conversation>, Option<String>, Value) {
    all.retain(|c| {
        query.state.is_none_or(|s| s == c.state) && query.q.as_deref().is_none_or(|q| matches(c, q))
    });
    let count = |v: View| all.iter().filter(|c| v.holds(c, viewer)).count();
    let counts = json!({
        "mine": count(View::Mine),
        "unassigned": count(View::Unassigned),
        "all": count(View::All),
        "waiting": count(View::Waiting),
    });
    let mut rows: Vec<(Rank, Conversation)> = all
        .into_iter()
        .filter(|c| query.view.holds(c, viewer))
        .map(|c| (c.rank(), c))
        .filter(|(r, _)| query.cursor.as_ref().is_none_or(|after| r > after))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let more = rows.len() > query.limit;
    rows.truncate(query.limit);
    let next = if more { rows.last().map(|(r, _)| r.cursor()) } else { None };
    (rows.into_iter().map(|(_, c)| c).collect(), next, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(
        id: &str,
        waiting: Option<i64>,
        last_at: i64,
        state: ConvState,
        assignee: Option<&str>,
    ) -> Conversation {
        Conversation {
            contact_id: id.into(),
            waiting_since: waiting,
            last_at,
            state,
            assignee: assignee.map(str::to_owned),
            ..Conversation::default()
        }
    }

    fn check(view: View, state: Option<ConvState>, want: &[&str]) {
        let all = vec![
            conv("answered-old", None, 10, ConvState::Open, Some("a")),
            conv("waiting-new", Some(50), 50, ConvState::Open, None),
            conv("answered-new", None, 40, ConvState::Open, None),
            conv("waiting-old", Some(20), 60, ConvState::Open, Some("b")),
            conv("resolved", Some(5), 70, ConvState::Resolved, Some("a")),
        ];
        // Paged two at a time, the pages joined must be the whole ordered list.
        let mut got = Vec::new();
        let mut cursor = None;
        loop {
            let q =
                ListQuery { view, state, q: None, limit: 2, cursor: cursor.as_deref().and_then(Rank::parse) };
            let (rows, next, _) = page(all.clone(), "a", &q);
            got.extend(rows.into_iter().map(|c| c.contact_id));
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(got, want, "{view:?} {state:?}");
    }

    #[test]
    fn the_list_orders_waiting_first_then_newest_and_pages_by_cursor() {
        check(View::All, None, &["waiting-old", "waiting-new", "resolved", "answered-new", "answered-old"]);
        check(View::Waiting, None, &["waiting-old", "waiting-new"]);
        check(View::Mine, None, &["resolved", "answered-old"]);
        check(View::Mine, Some(ConvState::Open), &["answered-old"]);
        check(View::Unassigned, None, &["waiting-new", "answered-new"]);
    }

    #[test]
    fn search_text_keeps_the_latest_and_stays_on_char_boundaries() {
        let mut c = Conversation::default();
        for _ in 0..1000 {
            c.remember_text("你好世界");
        }
        c.remember_text("last words");
        assert!(c.text.len() <= SEARCH_TEXT_MAX);
        assert!(c.text.ends_with("last words"));
    }
}
