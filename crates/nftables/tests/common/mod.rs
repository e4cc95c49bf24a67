//! Test helpers of the nftables backend: object builders ([`cluster`]) and
//! listings normalised for comparison. Namespaces, echo servers and the
//! topology are `kproxy_testkit`'s.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]

pub mod cluster;
pub mod random;

use kproxy_testkit::{NetNs, line_diff};

/// `nft list table` of both kproxy tables with the parts that legitimately
/// differ between an incrementally built and a freshly loaded table
/// removed (the sync generation), and elements sorted, so two listings
/// can be compared.
pub fn normalised_listing(ns: &NetNs, ignore_empty_chains: bool) -> String {
    let mut out = String::new();
    for fam in ["ip", "ip6"] {
        let text = ns.exec(&["nft", "-j", "list", "table", fam, "kproxy"]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("nft -j output");
        let mut items: Vec<String> = Vec::new();
        for obj in v["nftables"].as_array().expect("nftables array") {
            let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let mut body = body.clone();
            if let Some(m) = body.as_object_mut() {
                m.remove("handle");
                if m.get("name").and_then(|n| n.as_str()) == Some("sync-generation") {
                    m.remove("elem");
                }
                if let Some(serde_json::Value::Array(elems)) = m.get_mut("elem") {
                    elems.sort_by_key(|e| e.to_string());
                }
            }
            // nft prints a data map's port as `tcp dport` or `th dport`
            // depending on whether the map came from its cache or from the
            // script; the kernel's bytecode is the same (transport header,
            // offset 2).
            let text = body.to_string().replace(
                r#"{"field":"dport","protocol":"tcp"}"#,
                r#"{"field":"dport","protocol":"th"}"#,
            );
            match kind.as_str() {
                "metainfo" => {}
                _ => items.push(format!("{kind} {text}")),
            }
        }
        // Rules keep their order within a chain; objects are sorted.
        let (mut rules, mut others): (Vec<String>, Vec<String>) =
            items.into_iter().partition(|i| i.starts_with("rule "));
        let chain_of = |r: &String| {
            serde_json::from_str::<serde_json::Value>(&r[5..])
                .ok()
                .and_then(|v| v["chain"].as_str().map(String::from))
                .unwrap_or_default()
        };
        if ignore_empty_chains {
            // Chains flushed by an incremental sync are deleted by a later
            // one ("flush now, delete later").
            let used: std::collections::BTreeSet<String> = rules.iter().map(chain_of).collect();
            others.retain(|o| {
                let Some(body) = o.strip_prefix("chain ") else {
                    return true;
                };
                let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                v.get("hook").is_some() || v["name"].as_str().is_some_and(|n| used.contains(n))
            });
        }
        others.sort();
        rules.sort_by_key(chain_of);
        out.push_str(&others.join("\n"));
        out.push('\n');
        out.push_str(&rules.join("\n"));
        out.push('\n');
    }
    out
}

/// Assert that `got` lists the same kproxy tables as `want` (a full
/// load), as [`normalised_listing`]s, showing the lines that differ.
pub fn assert_same_tables(want: &NetNs, got: &NetNs, ignore_empty_chains: bool, what: &str) {
    let (want, got) = (
        normalised_listing(want, ignore_empty_chains),
        normalised_listing(got, ignore_empty_chains),
    );
    assert!(
        want == got,
        "{what}: the tables differ from a full load:\n{}",
        line_diff(&want, &got)
    );
}
