//! The Grafana dashboard (deploy/grafana/imgate.json) and the alerting rules
//! (deploy/prometheus/alerts.yml) query only metrics imgate exports: every `imgate_…` name
//! they use (less a histogram's `_bucket`, `_sum` or `_count`) is one a metrics macro of
//! the server's source records. A renamed metric fails here, not on an operator's screen.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `imgate_[a-z_]+` word in `text`.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("imgate_") {
        let before = rest[..i].chars().next_back();
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(name.clone());
        }
        rest = &rest[i + name.len()..];
    }
    out
}

/// The names the server's metrics macros record: `counter!("imgate_…"`, `gauge!(…`,
/// `histogram!(…`, in every crate's `src/`.
fn exported() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root().join("crates")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.ends_with("target") && !p.ends_with("tests") {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for kind in ["counter!(", "gauge!(", "histogram!("] {
                    for (i, _) in text.match_indices(kind) {
                        let after = text[i + kind.len()..].trim_start();
                        if let Some(quoted) = after.strip_prefix('"') {
                            out.insert(quoted.split('"').next().unwrap().to_owned());
                        }
                    }
                }
            }
        }
    }
    out
}

fn base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name)
}

fn check(file: &str) {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let exported = exported();
    assert!(exported.contains("imgate_messages_accepted_total"), "the source scan found {exported:?}");
    let used = names(&text);
    assert!(used.len() >= 5, "{file} names too few metrics: {used:?}");
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(base(n))).collect();
    assert_eq!(unknown, Vec::<&String>::new(), "{file} queries metrics imgate does not export");
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(root().join("deploy/grafana/imgate.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dash["panels"].as_array().unwrap().len() >= 10);
    check("deploy/grafana/imgate.json");
}

#[test]
fn the_alerting_rules_query_only_exported_metrics() {
    check("deploy/prometheus/alerts.yml");
}

#[test]
fn names_are_read_whole() {
    let got = names("rate(imgate_a_total[5m]) / x_imgate_b + imgate_c_bucket");
    assert_eq!(got, ["imgate_a_total", "imgate_c_bucket"].iter().map(|s| s.to_string()).collect());
}
