//! `report`: result lines (from `push`, `idle`, `reconnect`) → side-by-side markdown
//! tables, medians over repeated runs, with each peer's figure as a ratio to imgate's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::Error;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Files of result lines (one JSON object per line).
    pub inputs: Vec<PathBuf>,
    /// The server the others are compared with.
    #[arg(long, default_value = "imgate")]
    pub baseline: String,
}

pub fn load(inputs: &[PathBuf]) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for p in inputs {
        for line in std::fs::read_to_string(p)?.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && v.get("workload").is_some()
            {
                out.push(v);
            }
        }
    }
    Ok(out)
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    Some(xs[xs.len() / 2])
}

/// Runs of one workload grouped by server, in first-seen order.
fn by_server(rows: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<(String, Vec<&Value>)> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in rows.iter().filter(|r| keep(r)) {
        let s = r["server"].as_str().unwrap_or("?").to_owned();
        if !order.contains(&s) {
            order.push(s.clone());
        }
        map.entry(s).or_default().push(r);
    }
    order.into_iter().map(|s| (s.clone(), map.remove(&s).unwrap_or_default())).collect()
}

fn stat(runs: &[&Value], path: &[&str]) -> Option<f64> {
    median(
        runs.iter()
            .filter_map(|r| path.iter().try_fold(*r, |v, k| v.get(*k)).and_then(Value::as_f64))
            .collect(),
    )
}

fn sum(runs: &[&Value], key: &str) -> u64 {
    runs.iter().filter_map(|r| r[key].as_u64()).sum()
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// `x` relative to the baseline's `b`: how many times better the baseline is, where
/// `higher_is_better` says which way better points.
fn ratio(b: Option<f64>, x: Option<f64>, higher_is_better: bool) -> String {
    match (b, x) {
        (Some(b), Some(x)) if b > 0.0 && x > 0.0 => {
            let r = if higher_is_better { b / x } else { x / b };
            format!("{r:.2}×")
        }
        _ => "–".into(),
    }
}

pub fn render(rows: &[Value], baseline: &str) -> String {
    let mut out = String::new();
    let closed = by_server(rows, |r| r["workload"] == "push" && r["mode"] == "closed");
    if !closed.is_empty() {
        out.push_str("### Ingest, closed loop (medians)\n\n");
        out.push_str("| server | runs | acked/s | server CPU µs/msg | p50 µs | p99 µs | p99.9 µs | max µs | lost | dup | RSS MiB | imgate's advantage: throughput | CPU |\n");
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let base = closed.iter().find(|(s, _)| s == baseline).map(|(_, r)| r.clone()).unwrap_or_default();
        for (server, runs) in &closed {
            let tput = stat(runs, &["acked_per_sec"]);
            let cpu = stat(runs, &["server_cpu_us_per_msg"]);
            out.push_str(&format!(
                "| {server} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                runs.len(),
                fmt(tput, 0),
                fmt(cpu, 1),
                fmt(stat(runs, &["latency_us", "p50"]), 0),
                fmt(stat(runs, &["latency_us", "p99"]), 0),
                fmt(stat(runs, &["latency_us", "p999"]), 0),
                fmt(stat(runs, &["latency_us", "max"]), 0),
                sum(runs, "lost"),
                sum(runs, "duplicated"),
                fmt(stat(runs, &["server_rss_kib"]).map(|k| k / 1024.0), 0),
                ratio(stat(&base, &["acked_per_sec"]), tput, true),
                ratio(stat(&base, &["server_cpu_us_per_msg"]), cpu, false),
            ));
        }
        out.push('\n');
    }
    let open = by_server(rows, |r| r["workload"] == "push" && r["mode"] == "open");
    if !open.is_empty() {
        let mut rates: Vec<f64> =
            rows.iter().filter(|r| r["mode"] == "open").filter_map(|r| r["offered_rate"].as_f64()).collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        rates.dedup();
        out.push_str("### Latency at a fixed offered rate, POST start → frame (open loop, µs: p50 / p99 / max)\n\n| rate msg/s |");
        for (s, _) in &open {
            out.push_str(&format!(" {s} |"));
        }
        out.push_str("\n|---|");
        out.push_str(&"---|".repeat(open.len()));
        out.push('\n');
        for rate in rates {
            out.push_str(&format!("| {rate:.0} |"));
            for (_, runs) in &open {
                let at: Vec<&Value> =
                    runs.iter().copied().filter(|r| r["offered_rate"].as_f64() == Some(rate)).collect();
                let lost = sum(&at, "lost") + sum(&at, "duplicated");
                out.push_str(&format!(
                    " {} / {} / {}{} |",
                    fmt(stat(&at, &["latency_us", "p50"]), 0),
                    fmt(stat(&at, &["latency_us", "p99"]), 0),
                    fmt(stat(&at, &["latency_us", "max"]), 0),
                    if lost > 0 { format!(" (lost+dup {lost})") } else { String::new() }
                ));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    let idle = by_server(rows, |r| r["workload"] == "idle");
    if !idle.is_empty() {
        out.push_str("### Idle connections\n\n| server | connections held | bytes RSS per connection | imgate's advantage |\n|---|---|---|---|\n");
        let base = idle.iter().find(|(s, _)| s == baseline).map(|(_, r)| r.clone()).unwrap_or_default();
        for (server, runs) in &idle {
            let b = stat(runs, &["bytes_per_connection"]);
            out.push_str(&format!(
                "| {server} | {} | {} | {} |\n",
                fmt(stat(runs, &["alive"]), 0),
                fmt(b, 0),
                ratio(stat(&base, &["bytes_per_connection"]), b, false)
            ));
        }
        out.push('\n');
    }
    let rec = by_server(rows, |r| r["workload"] == "reconnect");
    if !rec.is_empty() {
        out.push_str("### Reconnect storm\n\n| server | clients | caught up | all caught up after s | p50 / p99 per client ms |\n|---|---|---|---|---|\n");
        for (server, runs) in &rec {
            out.push_str(&format!(
                "| {server} | {} | {} | {} | {} / {} |\n",
                fmt(stat(runs, &["clients"]), 0),
                fmt(stat(runs, &["caught_up"]), 0),
                fmt(stat(runs, &["all_caught_up_secs"]), 2),
                fmt(stat(runs, &["catch_up_us", "p50"]).map(|u| u / 1000.0), 0),
                fmt(stat(runs, &["catch_up_us", "p99"]).map(|u| u / 1000.0), 0),
            ));
        }
        out.push('\n');
    }
    out
}

pub fn run(a: Args) -> Result<(), Error> {
    let rows = load(&a.inputs)?;
    print!("{}", render(&rows, &a.baseline));
    Ok(())
}
