//! `cluster`: several imgate nodes that share one broker (Redis), users' sockets spread
//! over them by given shares, posters round robin over all of them (closed loop).
//!
//! What it shows (#12): a node hears from the broker only the users it holds sockets of,
//! so each node's `imgate_broker_messages_received_total`, scraped from its `/metrics`
//! before and after the run, is its share of connections of all messages sent — not all
//! of them. Besides that: acks/s, POST → frame latency. The run fails unless every message
//! reached its user's socket exactly once and every node's share followed its connections
//! (within ±5 %).

use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use crate::ledger::{self, Delivery, Ledger, latency};
use crate::poster::Poster;
use crate::{Error, nonce};

/// The counter each node is scraped for.
pub const BROKER_RECEIVED: &str = "imgate_broker_messages_received_total";
/// How far a node's share of the broker's messages may stray from its share of
/// connections and still count as following it (relative: 0.05 = ±5 %).
const FOLLOWS_WITHIN: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub http: String,
    pub ws: String,
}

/// `NAME=HTTP_URL,WS_URL`.
fn parse_node(s: &str) -> Result<Node, String> {
    let (name, urls) = s.split_once('=').ok_or("expected NAME=HTTP_URL,WS_URL")?;
    let (http, ws) = urls.split_once(',').ok_or("expected NAME=HTTP_URL,WS_URL")?;
    if name.is_empty() || !http.starts_with("http://") || !ws.starts_with("ws://") {
        return Err("expected NAME=http://HOST:PORT,ws://HOST:PORT".into());
    }
    Ok(Node { name: name.to_owned(), http: http.to_owned(), ws: ws.to_owned() })
}

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A node, NAME=HTTP_URL,WS_URL; once per node.
    #[arg(long = "node", required = true, value_parser = parse_node)]
    pub nodes: Vec<Node>,
    /// Each node's weight in users, in the order of --node (60,30,10); equal if not given.
    /// A user's one socket is on one node, so this is the node's share of connections.
    #[arg(long, value_delimiter = ',')]
    pub shares: Vec<u32>,
    /// A name for the run in the summary.
    #[arg(long, default_value = "imgate-cluster")]
    pub label: String,
    /// Connected users in all; messages go round robin to them.
    #[arg(long, default_value_t = 300)]
    pub users: usize,
    /// Concurrent posters, each on its own keep-alive connection; poster p posts to node
    /// p mod nodes.
    #[arg(long, default_value_t = 12)]
    pub posters: usize,
    /// Messages in all.
    #[arg(long, default_value_t = 30_000)]
    pub messages: usize,
    /// Bytes of filler text in each message.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// How long to wait for frames still on their way after the last answer.
    #[arg(long, default_value = "5")]
    pub drain_secs: u64,
}

/// `users` split by `weights`, largest remainder first (ties to the earlier node), so the
/// counts add up to `users` and follow the weights as closely as whole users can.
pub fn split(users: usize, weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<(usize, u64)> = weights
        .iter()
        .map(|&w| {
            let x = users as u64 * u64::from(w);
            ((x / total) as usize, x % total)
        })
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|e| e.0).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&k| std::cmp::Reverse(exact[k].1));
    for &k in order.iter().take(users - counts.iter().sum::<usize>()) {
        counts[k] += 1;
    }
    counts
}

/// The counter's value in a Prometheus text page (its samples summed, should it ever get
/// labels); `None` when the page does not have it.
pub fn counter(page: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        // `name 12` or `name{…} 12`, not `name_created 12`.
        let value = match rest.chars().next() {
            Some(' ') => rest,
            Some('{') => &rest[rest.find('}')? + 1..],
            _ => continue,
        };
        let v: f64 = value.split_whitespace().next()?.parse().ok()?;
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

/// One node's figures: what was set up and what its counter said around the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub name: String,
    pub connections: usize,
    /// The counter before and after the run (`None`: not exported).
    pub before: Option<f64>,
    pub after: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Share {
    pub node: String,
    pub connections: usize,
    /// Of all connections.
    pub connection_share: Option<f64>,
    /// Messages the node heard from the broker during the run.
    pub broker_received: Option<u64>,
    /// Of all messages sent (acknowledged).
    pub received_share: Option<f64>,
    /// received_share / connection_share: 1.0 when a node hears only its own users.
    pub ratio: Option<f64>,
    pub follows: bool,
}

/// Each node's share of connections and of the broker's messages, out of `sent`
/// acknowledged messages. A counter that did not start at zero counts from where it
/// stood; one that went backwards (the node restarted) or is missing gives no figure.
pub fn shares(nodes: &[Observed], sent: u64) -> Vec<Share> {
    let all: usize = nodes.iter().map(|n| n.connections).sum();
    nodes
        .iter()
        .map(|n| {
            let connection_share = (all > 0).then(|| n.connections as f64 / all as f64);
            let broker_received = match (n.before, n.after) {
                (Some(b), Some(a)) if a >= b => Some((a - b).round() as u64),
                _ => None,
            };
            let received_share = broker_received.filter(|_| sent > 0).map(|r| r as f64 / sent as f64);
            let ratio = match (received_share, connection_share) {
                (Some(r), Some(c)) if c > 0.0 => Some(r / c),
                _ => None,
            };
            let follows = match (ratio, broker_received, connection_share) {
                (Some(x), _, _) => (x - 1.0).abs() <= FOLLOWS_WITHIN,
                // A node with no connections follows by hearing nothing.
                (None, Some(0), Some(c)) => c == 0.0,
                _ => false,
            };
            Share {
                node: n.name.clone(),
                connections: n.connections,
                connection_share,
                broker_received,
                received_share,
                ratio,
                follows,
            }
        })
        .collect()
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1} %", x * 100.0))
}

/// The readable table of [`shares`].
pub fn table(rows: &[Share]) -> String {
    let mut out = String::from(
        "| node | connections | share of connections | broker messages received | share of messages sent | ratio | follows |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.node,
            r.connections,
            pct(r.connection_share),
            r.broker_received.map_or("–".into(), |x| x.to_string()),
            pct(r.received_share),
            r.ratio.map_or("–".into(), |x| format!("{x:.2}")),
            if r.follows { "yes" } else { "NO" },
        ));
    }
    out
}

async fn scrape(node: &Node) -> Result<Option<f64>, Error> {
    let answer = Poster::connect(&node.http).await?.get("/metrics").await?;
    if answer.status != 200 {
        return Err(format!("{}: GET /metrics answered {}", node.name, answer.status).into());
    }
    Ok(counter(&String::from_utf8_lossy(&answer.body), BROKER_RECEIVED))
}

async fn scrape_all(nodes: &[Node]) -> Result<Vec<Option<f64>>, Error> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(scrape(n).await?);
    }
    Ok(out)
}

pub async fn run(a: Args) -> Result<(), Error> {
    let weights = if a.shares.is_empty() { vec![1; a.nodes.len()] } else { a.shares.clone() };
    if weights.len() != a.nodes.len() || weights.iter().all(|&w| w == 0) {
        return Err(format!("--shares needs one weight per --node ({}), not all zero", a.nodes.len()).into());
    }
    if a.users == 0 || a.posters == 0 {
        return Err("--users and --posters must be above zero".into());
    }
    let tag = nonce();
    let n = a.messages;
    let ledger = Ledger::new(n, a.users);
    let counts = split(a.users, &weights);

    // User k's one socket goes to the node whose block of users holds k.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    let mut k = 0;
    for (node, &count) in a.nodes.iter().zip(&counts) {
        for _ in 0..count {
            let user = format!("c{tag}u{k}");
            readers.push(ledger::connect_reader(&node.ws, &user, k, ledger.clone(), stopped.clone()).await?);
            k += 1;
        }
    }
    let mut posters = Vec::new();
    for p in 0..a.posters {
        posters.push(Poster::connect(&a.nodes[p % a.nodes.len()].http).await?);
    }
    // Each node's socket watches are in place once its handshakes answered (imgate
    // subscribes before it upgrades): from here on, what a node hears is this run's.
    let before = scrape_all(&a.nodes).await?;

    let filler = "x".repeat(a.size);
    let path = format!("/send?userid=cluster{tag}");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (p, mut poster) in posters.into_iter().enumerate() {
        let ledger = ledger.clone();
        let (filler, path, tag, users, step) =
            (filler.clone(), path.clone(), tag.clone(), a.users, a.posters);
        tasks.push(tokio::spawn(async move {
            let mut failures = 0u64;
            for i in (p..n).step_by(step) {
                let body = ledger::json_body(&format!("c{tag}u{}", i % users), i, &filler);
                ledger.sent(i, Instant::now());
                match poster.post(&path, "application/json", Bytes::from(body)).await {
                    Ok(200) => ledger.ack(i),
                    _ => failures += 1,
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await?;
    }
    let post_secs = started.elapsed().as_secs_f64();
    let acked = ledger.acked();
    ledger.drain(a.drain_secs).await;
    let after = scrape_all(&a.nodes).await?;
    let _ = stop.send(true);
    let lat = latency(&ledger::merge(readers).await?);
    let delivery = ledger.delivery();
    let Delivery { delivered, lost, duplicated, misrouted } = delivery;

    let observed: Vec<Observed> = a
        .nodes
        .iter()
        .zip(&counts)
        .zip(before.iter().zip(&after))
        .map(|((node, &connections), (&before, &after))| Observed {
            name: node.name.clone(),
            connections,
            before,
            after,
        })
        .collect();
    let rows = shares(&observed, acked);
    let summary = json!({
        "workload": "cluster",
        "server": a.label,
        "nodes": a.nodes.len(),
        "users": a.users,
        "posters": a.posters,
        "messages": n,
        "acked": acked,
        "failed": failures,
        "seconds": post_secs,
        "acked_per_sec": acked as f64 / post_secs,
        "delivered": delivered,
        "lost": lost,
        "duplicated": duplicated,
        "misrouted": misrouted,
        "latency_us": lat,
        "per_node": rows,
    });
    eprintln!(
        "{}: {} nodes, {} users, {} posters: {acked} acked in {post_secs:.2}s = {:.0}/s, POST → frame p50 {} p99 {} µs; \
         delivered {delivered}, lost {lost}, dup {duplicated}, misrouted {misrouted}\n\n{}",
        a.label,
        a.nodes.len(),
        a.users,
        a.posters,
        acked as f64 / post_secs,
        lat["p50"],
        lat["p99"],
        table(&rows)
    );
    println!("{summary}");
    exactly_once(n as u64, acked, failures, delivery)?;
    following(&rows)
}

/// Every node heard about its share of connections of the messages, or which did not.
fn following(rows: &[Share]) -> Result<(), Error> {
    let off: Vec<String> = rows
        .iter()
        .filter(|r| !r.follows)
        .map(|r| match r.broker_received {
            None => {
                format!("{} gave no {BROKER_RECEIVED} (is its store.engine redis? did it restart?)", r.node)
            }
            Some(_) => format!(
                "{} heard {} of the messages with {} of the connections",
                r.node,
                pct(r.received_share),
                pct(r.connection_share)
            ),
        })
        .collect();
    if off.is_empty() { Ok(()) } else { Err(format!("broker share off: {}", off.join("; ")).into()) }
}

/// Every message acknowledged and on its user's socket exactly once, or why not.
fn exactly_once(messages: u64, acked: u64, failed: u64, d: Delivery) -> Result<(), Error> {
    if acked == messages && failed == 0 && d.delivered == messages && d.lost + d.duplicated + d.misrouted == 0
    {
        return Ok(());
    }
    Err(format!(
        "NOT exactly once: {messages} messages, {acked} acked, {failed} failed posts, {} delivered, \
         {} lost, {} duplicated, {} on another user's socket",
        d.delivered, d.lost, d.duplicated, d.misrouted
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_split_by_weight_and_add_up() {
        let check = |users, weights: &[u32], expect: &[usize]| {
            assert_eq!(split(users, weights), expect, "{users} users by {weights:?}");
        };
        check(300, &[60, 30, 10], &[180, 90, 30]);
        check(10, &[1, 1, 1], &[4, 3, 3]);
        check(7, &[60, 30, 10], &[4, 2, 1]);
        check(5, &[0, 1], &[0, 5]);
        check(0, &[1, 2], &[0, 0]);
        check(3, &[0, 0], &[0, 0]);
    }

    #[test]
    fn counter_is_read_from_a_prometheus_page() {
        let page = "# HELP imgate_broker_messages_received_total x\n\
                    # TYPE imgate_broker_messages_received_total counter\n\
                    imgate_broker_messages_received_total 1234\n\
                    imgate_broker_messages_received_total_created 99\n\
                    imgate_connections 3\n";
        assert_eq!(counter(page, BROKER_RECEIVED), Some(1234.0));
        assert_eq!(counter("imgate_connections 3\n", BROKER_RECEIVED), None);
        let labelled = "m{a=\"x\"} 2\nm{a=\"y\"} 3.5\n";
        assert_eq!(counter(labelled, "m"), Some(5.5));
        assert_eq!(counter("m 1e3\n", "m"), Some(1000.0));
    }

    fn node(name: &str, connections: usize, before: Option<f64>, after: Option<f64>) -> Observed {
        Observed { name: name.into(), connections, before, after }
    }

    #[test]
    fn shares_count_from_where_each_counter_stood() {
        // 6,000 sent; the counters started at 500, 0 and 70 from earlier traffic.
        let rows = shares(
            &[
                node("a", 180, Some(500.0), Some(4100.0)),
                node("b", 90, Some(0.0), Some(1800.0)),
                node("c", 30, Some(70.0), Some(6070.0)),
            ],
            6000,
        );
        let got: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.broker_received,
                    r.connection_share,
                    r.received_share,
                    r.ratio.map(|x| (x * 100.0).round()),
                    r.follows,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(3600), Some(0.6), Some(0.6), Some(100.0), true),
                (Some(1800), Some(0.3), Some(0.3), Some(100.0), true),
                // Heard everything: the node listens to all users, not only its own.
                (Some(6000), Some(0.1), Some(1.0), Some(1000.0), false),
            ]
        );
    }

    #[test]
    fn nothing_sent_or_no_counter_gives_no_share_and_no_division_by_zero() {
        let rows = shares(&[node("a", 2, Some(5.0), Some(5.0)), node("b", 0, Some(0.0), Some(0.0))], 0);
        assert_eq!(
            rows.iter().map(|r| (r.broker_received, r.received_share, r.ratio)).collect::<Vec<_>>(),
            vec![(Some(0), None, None), (Some(0), None, None)]
        );
        // A node without connections follows by hearing nothing, also when messages went.
        let rows = shares(&[node("a", 2, Some(0.0), Some(10.0)), node("b", 0, Some(3.0), Some(3.0))], 10);
        assert_eq!(rows[1].connection_share, Some(0.0));
        assert_eq!((rows[1].ratio, rows[1].follows), (None, true));
        let rows = shares(&[node("b", 0, Some(3.0), Some(4.0)), node("a", 2, None, Some(1.0))], 10);
        assert_eq!((rows[0].ratio, rows[0].follows), (None, false));
        // Not exported, or gone backwards (a restart): no figure, not a negative one.
        assert_eq!((rows[1].broker_received, rows[1].received_share, rows[1].follows), (None, None, false));
        let rows = shares(&[node("a", 1, Some(50.0), Some(20.0))], 10);
        assert_eq!((rows[0].broker_received, rows[0].ratio), (None, None));
        // No connections anywhere.
        assert_eq!(shares(&[node("a", 0, Some(0.0), Some(0.0))], 0)[0].connection_share, None);
    }

    #[test]
    fn a_node_that_hears_everyone_fails_the_run() {
        // a hears its own users' 90 messages; b hears all 100 with a tenth of the sockets.
        let rows =
            shares(&[node("a", 90, Some(0.0), Some(90.0)), node("b", 10, Some(0.0), Some(100.0))], 100);
        assert_eq!(
            following(&rows).unwrap_err().to_string(),
            "broker share off: b heard 100.0 % of the messages with 10.0 % of the connections"
        );
        let rows = shares(&[node("a", 90, Some(0.0), Some(90.0)), node("b", 10, Some(0.0), Some(10.0))], 100);
        assert!(following(&rows).is_ok());
        let rows = shares(&[node("a", 1, None, None)], 100);
        assert!(
            following(&rows)
                .unwrap_err()
                .to_string()
                .contains("a gave no imgate_broker_messages_received_total")
        );
    }

    #[test]
    fn exactly_once_names_what_went_wrong() {
        let ok = Delivery { delivered: 10, lost: 0, duplicated: 0, misrouted: 0 };
        assert!(exactly_once(10, 10, 0, ok).is_ok());
        for (acked, failed, d) in [
            (10, 0, Delivery { delivered: 9, lost: 1, ..ok }),
            (10, 0, Delivery { duplicated: 1, ..ok }),
            (10, 0, Delivery { misrouted: 1, ..ok }),
            (9, 1, Delivery { delivered: 9, ..ok }),
        ] {
            assert!(exactly_once(10, acked, failed, d).is_err(), "{acked} {failed} {d:?}");
        }
    }

    #[test]
    fn nodes_parse_from_name_and_two_urls() {
        let n = parse_node("n1=http://127.0.0.1:1,ws://127.0.0.1:1").unwrap();
        assert_eq!(
            (n.name.as_str(), n.http.as_str(), n.ws.as_str()),
            ("n1", "http://127.0.0.1:1", "ws://127.0.0.1:1")
        );
        for bad in ["n1", "n1=http://a", "=http://a,ws://a", "n1=ws://a,http://a"] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }
}
