//! Conversations between two gateway users (docs/inbox.md, "Between gateway users").
//!
//! Each user keeps its own record of each pair, in the same engine and with the same
//! [`Conversation`] shape as a follower's: the account is the user's own (`~` and its id,
//! which no WeChat appid can be), the contact the other user. Nobody is assigned and
//! nothing is routed; unread counts, 待回复 and the last message work as for followers, so
//! the console lists every conversation of a gateway user from the index, paged.
//!
//! The index is written off the send path: [`Indexer`] takes each committed message, and a
//! task applies them in batches, one update per pair and batch. A send is acknowledged when
//! its message is in the mailboxes; its pair's row follows within a batch. A crash can lose
//! the last batch's changes to rows, never a message, and the pair's next message writes
//! its row again.

use std::collections::HashMap;

use serde_json::Value;
use tokio::sync::mpsc;

use super::model::{ConvState, Conversation};
use super::{DynConversations, Message, edit, now};

/// The account of `owner`'s own conversations.
pub fn account_of(owner: &str) -> String {
    format!("~{owner}")
}

/// Whether a conversation's account is a user's own: a pair of gateway users.
pub fn is_direct(appid: &str) -> bool {
    appid.starts_with('~')
}

/// Messages waiting to be indexed: beyond this, a send waits for the indexer (the index
/// trails by at most this many messages, and memory stays bounded).
const QUEUE: usize = 8192;
/// Messages applied in one batch (one transaction with SQLite).
const BATCH: usize = 1024;

/// One side of a message between two gateway users.
struct Side {
    owner: String,
    other: String,
    company_id: String,
    /// The message's seq in `owner`'s mailbox.
    seq: u64,
    /// From `other` to `owner`.
    incoming: bool,
    at: i64,
    last: Value,
    text: String,
}

impl Side {
    fn apply(&self, c: &mut Conversation) {
        c.assignee = None;
        c.state = ConvState::Open;
        c.last_at = c.last_at.max(self.at);
        c.last_message = Some(self.last.clone());
        c.last_seq.insert(self.owner.clone(), self.seq);
        if self.incoming {
            c.waiting_since.get_or_insert(self.at);
            *c.unread.entry(self.owner.clone()).or_default() += 1;
            c.last_in.insert(self.owner.clone(), self.seq);
        } else {
            // The owner wrote: it has answered, and read what came before.
            c.waiting_since = None;
            c.unread.insert(self.owner.clone(), 0);
        }
        c.remember_text(&self.text);
    }
}

/// The send path's handle: queue committed messages for the index.
pub struct Indexer {
    tx: mpsc::Sender<Side>,
}

impl Indexer {
    /// Start the task that writes the index; it ends when the last handle is dropped,
    /// after applying what was queued.
    pub fn spawn(convs: DynConversations) -> Indexer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(convs, rx));
        Indexer { tx }
    }

    /// A message from `from` to `to` was committed: seq `to_seq` in `to`'s mailbox, and
    /// `from_seq` in `from`'s when the sender keeps a copy (a gateway user's own send).
    #[allow(clippy::too_many_arguments)]
    pub async fn message(
        &self,
        company_id: &str,
        from: &str,
        to: &str,
        to_seq: u64,
        from_seq: Option<u64>,
        m: Message<'_>,
    ) {
        let at = now();
        let text = m.text();
        let side = |owner: &str, other: &str, seq: u64, incoming: bool| Side {
            owner: owner.to_owned(),
            other: other.to_owned(),
            company_id: company_id.to_owned(),
            seq,
            incoming,
            at,
            last: m.last(if incoming { "in" } else { "out" }),
            text: text.clone(),
        };
        let mut sides = vec![side(to, from, to_seq, true)];
        if let Some(seq) = from_seq {
            sides.push(side(from, to, seq, false));
        }
        for s in sides {
            // Closed only when the server is going away: the row is then lost, not the
            // message (see the module's doc).
            if self.tx.send(s).await.is_err() {
                tracing::debug!("conversation index closed; a pair's row not updated");
            }
        }
    }
}

async fn run(convs: DynConversations, mut rx: mpsc::Receiver<Side>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        // One update per pair, its messages applied in order.
        let mut pairs: HashMap<(String, String), Vec<Side>> = HashMap::new();
        for s in batch.drain(..) {
            pairs.entry((account_of(&s.owner), s.other.clone())).or_default().push(s);
        }
        let edits = pairs
            .into_iter()
            .map(|((appid, other), sides)| {
                let company = sides[0].company_id.clone();
                let (a, o) = (appid.clone(), other.clone());
                let e = edit(move |cur| {
                    let mut c = cur.unwrap_or_else(|| Conversation::new(&a, &o, &company));
                    for s in &sides {
                        s.apply(&mut c);
                    }
                    Ok(Some(c))
                });
                (appid, other, e)
            })
            .collect();
        for r in convs.update_many(edits).await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "a conversation between gateway users not updated");
            }
        }
    }
}
