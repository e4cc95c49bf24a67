//! Printing a [`Trace`]: text (the way the seed article walks chains),
//! JSON (for tools) and Graphviz dot (the chains the traffic can take).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::{Branch, Origin, Trace, format_percent};

/// The chain path to the decision, merged over branches:
/// `PREROUTING -> KUBE-SERVICES -> ... -> KUBE-SEP-A (50%) / KUBE-SEP-B (50%)`.
pub fn path_summary(trace: &Trace) -> String {
    let mut stacks: Vec<(Vec<String>, f64)> = trace
        .branches
        .iter()
        .map(|b| (decisive_stack(b), b.probability))
        .collect();
    // Branches that share their chains but not their DNAT target (a map
    // lookup on a random number): show the targets as the alternatives.
    let dnats: BTreeSet<_> = trace.branches.iter().map(|b| b.dnat).collect();
    if dnats.len() > 1 && stacks.iter().all(|(s, _)| *s == stacks[0].0) {
        for ((s, _), b) in stacks.iter_mut().zip(&trace.branches) {
            match b.dnat {
                Some(d) => s.push(format!("DNAT to {d}")),
                None => s.push(b.verdict.to_string()),
            }
        }
    }
    if stacks.is_empty() {
        return String::new();
    }
    let mut common = stacks[0].0.len();
    for (s, _) in &stacks[1..] {
        common = common.min(
            s.iter()
                .zip(&stacks[0].0)
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    // A branch whose whole stack is the common prefix still needs one
    // element to show as its alternative.
    if stacks.len() > 1 && stacks.iter().any(|(s, _)| s.len() == common) {
        common = common.saturating_sub(1);
    }
    let prefix = stacks[0].0[..common].join(" -> ");
    let mut alts: Vec<(String, f64)> = Vec::new();
    for (s, p) in &stacks {
        let suffix = s[common..].join(" -> ");
        match alts.iter_mut().find(|(a, _)| *a == suffix) {
            Some(x) => x.1 += p,
            None => alts.push((suffix, *p)),
        }
    }
    let alt_text = if alts.len() == 1 {
        alts[0].0.clone()
    } else {
        alts.iter()
            .map(|(a, p)| format!("{a} ({})", format_percent(*p)))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    match (prefix.is_empty(), alt_text.is_empty()) {
        (true, _) => alt_text,
        (false, true) => prefix,
        (false, false) => format!("{prefix} -> {alt_text}"),
    }
}

/// The call stack of the visit that decided the branch: the DNAT, else a
/// DROP / REJECT, else the first base chain.
fn decisive_stack(b: &Branch) -> Vec<String> {
    let dnat = b.visits.iter().find(|v| v.result.starts_with("DNAT"));
    let stop = b
        .visits
        .last()
        .filter(|_| b.verdict != crate::Verdict::Accept);
    dnat.or(stop)
        .or(b.visits.first())
        .map(|v| v.stack.clone())
        .unwrap_or_default()
}

fn branch_lines(b: &Branch) -> Vec<String> {
    let mut lines = Vec::new();
    for v in &b.visits {
        lines.push(format!("  {} [{}]", v.base, v.hook.as_str()));
        for e in &v.events {
            let mut l = format!("    {}{}: {}", "  ".repeat(e.depth), e.chain, e.rule);
            if let Some(n) = &e.note {
                let _ = write!(l, "   ({n})");
            }
            lines.push(l);
        }
        if !v.result.is_empty() {
            lines.push(format!("    => {}", v.result));
        }
    }
    lines
}

/// The human-readable trace.
pub fn text(trace: &Trace) -> String {
    let mut out = String::new();
    let origin = match trace.origin {
        Origin::Remote => "arriving from a pod or from outside the node: prerouting first",
        Origin::Local => "opened by the node itself: output first",
    };
    let _ = writeln!(out, "Packet:  {} (new connection, {origin})", trace.packet);
    let _ = writeln!(out, "Ruleset: {}", trace.backend);
    let _ = writeln!(out);
    let all: Vec<Vec<String>> = trace.branches.iter().map(branch_lines).collect();
    let common = match all.split_first() {
        None => 0,
        Some((first, rest)) => rest.iter().fold(first.len(), |n, l| {
            n.min(l.iter().zip(first).take_while(|(a, b)| a == b).count())
        }),
    };
    if let Some(first) = all.first() {
        for l in &first[..common] {
            let _ = writeln!(out, "{l}");
        }
    }
    if all.len() > 1 {
        for (i, (lines, b)) in all.iter().zip(&trace.branches).enumerate() {
            let _ = writeln!(
                out,
                "  -- branch {} of {} ({}) --",
                i + 1,
                all.len(),
                format_percent(b.probability)
            );
            for l in &lines[common..] {
                let _ = writeln!(out, "{l}");
            }
        }
    } else if let Some(first) = all.first() {
        for l in &first[common..] {
            let _ = writeln!(out, "{l}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Path:    {}", path_summary(trace));
    let _ = writeln!(out, "Outcome: {}", trace.outcome());
    out
}

/// The trace and its outcome as JSON.
pub fn json(trace: &Trace) -> String {
    let v = serde_json::json!({
        "trace": trace,
        "path": path_summary(trace),
        "outcome": trace.outcome(),
        "summary": trace.outcome().to_string(),
    });
    serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A Graphviz digraph of the chains the traced traffic can take: one node
/// per chain, an edge per jump, labelled with branch probabilities; the
/// outcomes are leaf nodes.
pub fn dot(trace: &Trace) -> String {
    dot_many(
        std::slice::from_ref(trace),
        &format!("{}: {}", trace.backend, trace.packet),
    )
}

fn is_leaf(result: &str) -> bool {
    result.starts_with("DNAT")
        || result.eq_ignore_ascii_case("drop")
        || result.eq_ignore_ascii_case("reject")
}

/// The union of several traces' chains (a Service's traffic: every VIP,
/// NodePort and kind of client), each connection an entry node. An edge is
/// labelled with its largest probability within one connection when that
/// is below 100%.
pub fn dot_many(traces: &[Trace], title: &str) -> String {
    let mut edges: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut nodes: BTreeSet<String> = BTreeSet::new();
    let mut entries: BTreeSet<String> = BTreeSet::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for trace in traces {
        let entry = trace.packet.to_string();
        let mut this: BTreeMap<(String, String), f64> = BTreeMap::new();
        let mut this_order: Vec<(String, String)> = Vec::new();
        for b in &trace.branches {
            let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
            let mut prev: Option<String> = Some(entry.clone());
            for v in &b.visits {
                let base = v.base.clone();
                nodes.insert(base.clone());
                if let Some(p) = prev.take() {
                    seen.insert((p, base.clone()));
                }
                // An event at depth d runs in a chain entered from the
                // chain of the last event at depth d - 1.
                let mut stack: Vec<String> = Vec::new();
                for e in &v.events {
                    let chain = if e.depth == 0 {
                        base.clone()
                    } else {
                        e.chain.clone()
                    };
                    stack.truncate(e.depth + 1);
                    if stack.len() == e.depth + 1 && stack[e.depth] != chain {
                        stack.truncate(e.depth);
                    }
                    if stack.len() == e.depth {
                        if let Some(parent) = stack.last() {
                            seen.insert((parent.clone(), chain.clone()));
                        }
                        nodes.insert(chain.clone());
                        stack.push(chain);
                    }
                }
                if is_leaf(&v.result) {
                    let from = stack.last().cloned().unwrap_or_else(|| base.clone());
                    nodes.insert(v.result.clone());
                    seen.insert((from, v.result.clone()));
                }
                prev = Some(base);
            }
            for e in seen {
                if !this.contains_key(&e) {
                    this_order.push(e.clone());
                }
                *this.entry(e).or_default() += b.probability;
            }
        }
        entries.insert(entry);
        for e in this_order {
            let p = this.get(&e).copied().unwrap_or(0.0);
            match edges.get_mut(&e) {
                Some(q) => *q = q.max(p),
                None => {
                    order.push(e.clone());
                    edges.insert(e, p);
                }
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(out, "digraph trace {{");
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  node [shape=box, fontname=monospace];");
    let _ = writeln!(out, "  label={};", dot_id(title));
    for n in &entries {
        let _ = writeln!(
            out,
            "  {} [label={}, shape=plaintext];",
            dot_id(n),
            dot_id(n)
        );
    }
    for n in &nodes {
        let shape = if is_leaf(n) { ", shape=ellipse" } else { "" };
        let _ = writeln!(out, "  {} [label={}{shape}];", dot_id(n), dot_id(n));
    }
    for e in &order {
        let p = edges.get(e).copied().unwrap_or(0.0);
        let label = if (p - 1.0).abs() < crate::PROBABILITY_TOLERANCE {
            String::new()
        } else {
            format!(" [label={}]", dot_id(&format_percent(p)))
        };
        let _ = writeln!(out, "  {} -> {}{label};", dot_id(&e.0), dot_id(&e.1));
    }
    let _ = writeln!(out, "}}");
    out
}
