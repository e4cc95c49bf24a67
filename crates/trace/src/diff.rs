//! Ruleset diffs: what applying `desired` would change in `current`, as
//! chains, rules, sets and elements added and removed, compared by
//! meaning (the tracers' parsed forms), not spelling, so the kernel's
//! re-printing of kproxy's own text (`iptables-save`, `nft list`) is not a
//! change.
//!
//! Only kproxy's objects are compared: for iptables the `KUBE-*` chains
//! and the built-in chains' rules that jump to them; for nftables whole
//! tables named in either text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::TraceError;
use crate::iptables::{IptChain, IptRule, IptTarget, IptablesRuleset};
use crate::nftables::{NftRuleset, NftTable};

/// A diff: one line per change, empty when nothing changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Readable lines (`+ chain X`, `- rule ...`).
    pub lines: Vec<String>,
    /// Counts by kind: chains, rules, sets, elements added / removed.
    pub counts: BTreeMap<String, usize>,
}

impl Diff {
    /// Nothing would change.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn add(&mut self, kind: &str, line: String) {
        *self.counts.entry(kind.to_string()).or_default() += 1;
        self.lines.push(line);
    }

    /// A chain only one side has (`added`: the desired one), with its
    /// rules.
    fn whole_chain<'a>(
        &mut self,
        added: bool,
        here: &str,
        rules: impl IntoIterator<Item = &'a str>,
    ) {
        let (sign, what) = if added {
            ('+', "added")
        } else {
            ('-', "removed")
        };
        self.add(&format!("chains {what}"), format!("{sign} chain {here}"));
        for r in rules {
            self.add(&format!("rules {what}"), format!("{sign}   {r}"));
        }
    }

    /// The diff as text, with a summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            let _ = writeln!(out, "{l}");
        }
        if self.lines.is_empty() {
            out.push_str("no changes\n");
        } else {
            let summary: Vec<String> = self
                .counts
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            let _ = writeln!(out, "summary: {}", summary.join(", "));
        }
        out
    }
}

fn is_builtin(chain: &str) -> bool {
    matches!(
        chain,
        "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING"
    )
}

fn owned_rules<'a>(chain: &str, c: &'a IptChain) -> Vec<&'a IptRule> {
    c.rules
        .iter()
        .filter(|r| {
            !is_builtin(chain)
                || matches!(&r.target, Some(IptTarget::Jump(t) | IptTarget::Goto(t)) if t.starts_with("KUBE-"))
        })
        .collect()
}

/// Compare two iptables rulesets (iptables-save output or restore input).
pub fn iptables(current: &str, desired: &str) -> Result<Diff, TraceError> {
    let cur = IptablesRuleset::parse(current)?;
    let want = IptablesRuleset::parse(desired)?;
    let mut d = Diff::default();
    let families: BTreeSet<_> = cur
        .sections
        .iter()
        .chain(&want.sections)
        .map(|(f, _)| *f)
        .collect();
    let empty = crate::iptables::Tables::default();
    for fam in families {
        let label = fam.map(|f| f.as_k8s_str()).unwrap_or("any family");
        let [c, w] = [&cur, &want].map(|r| {
            let found = r.sections.iter().find(|(f, _)| *f == fam);
            found.map_or(&empty, |x| &x.1)
        });
        let tables: BTreeSet<&String> = c.tables.keys().chain(w.tables.keys()).collect();
        for t in tables {
            let none = BTreeMap::new();
            let cc = c.tables.get(t).unwrap_or(&none);
            let wc = w.tables.get(t).unwrap_or(&none);
            let chains: BTreeSet<&String> = cc
                .keys()
                .chain(wc.keys())
                .filter(|n| n.starts_with("KUBE-") || is_builtin(n))
                .collect();
            for name in chains {
                let here = format!("{label} {t} {name}");
                match (cc.get(name), wc.get(name)) {
                    (None, Some(wch)) if !is_builtin(name) => {
                        let rules = owned_rules(name, wch);
                        d.whole_chain(true, &here, rules.iter().map(|r| r.text.as_str()));
                    }
                    (Some(cch), None) if !is_builtin(name) => {
                        let rules = owned_rules(name, cch);
                        d.whole_chain(false, &here, rules.iter().map(|r| r.text.as_str()));
                    }
                    (a, b) => {
                        let default = IptChain::default();
                        let a = owned_rules(name, a.unwrap_or(&default));
                        let b = owned_rules(name, b.unwrap_or(&default));
                        rule_changes(&mut d, &here, &a, &b);
                    }
                }
            }
        }
    }
    Ok(d)
}

fn rule_changes(d: &mut Diff, here: &str, cur: &[&IptRule], want: &[&IptRule]) {
    let ck: Vec<String> = cur.iter().map(|r| r.canonical()).collect();
    let wk: Vec<String> = want.iter().map(|r| r.canonical()).collect();
    if ck == wk {
        return;
    }
    let before = d.lines.len();
    d.lines.push(format!("  chain {here}:"));
    for r in unmatched(cur, &ck, &wk) {
        d.add("rules removed", format!("-   {}", r.text));
    }
    for r in unmatched(want, &wk, &ck) {
        d.add("rules added", format!("+   {}", r.text));
    }
    if d.lines.len() == before + 1 {
        d.add("chains reordered", "~   same rules, new order".to_string());
    }
}

/// The rules of `rules` (whose canonical forms are `keys`) that `other`
/// does not match, each rule of `other` matching one rule at most.
fn unmatched<'a>(rules: &[&'a IptRule], keys: &[String], other: &[String]) -> Vec<&'a IptRule> {
    let mut left: Vec<&String> = other.iter().collect();
    let mut out = Vec::new();
    for (r, k) in rules.iter().zip(keys) {
        match left.iter().position(|x| *x == k) {
            Some(i) => {
                left.remove(i);
            }
            None => out.push(*r),
        }
    }
    out
}

fn canon_nft_rule(r: &crate::nftables::NftRule) -> String {
    // After `meta l4proto tcp`, nft prints `th dport` as `tcp dport` (the
    // kernel holds the same expressions), so both spell one rule.
    if r.unknown.is_some() {
        return format!("unknown {}", r.text);
    }
    let mut s = format!("{:?}", r.stmts);
    for p in ["6", "17", "132"] {
        s = s.replace(&format!("ProtoDport({p})"), "Dport");
    }
    s
}

/// Compare two rulesets in `kind`'s syntax (what
/// [`kproxy_graph::Backend::dump_live`] and `render_full` print).
pub fn between(
    kind: kproxy_graph::BackendKind,
    current: &str,
    desired: &str,
) -> Result<Diff, TraceError> {
    match kind {
        kproxy_graph::BackendKind::Nftables => nftables(current, desired),
        kproxy_graph::BackendKind::IptablesLegacy | kproxy_graph::BackendKind::IptablesNft => {
            iptables(current, desired)
        }
    }
}

/// Compare two nftables rulesets (`nft list table` output or `nft -f`
/// scripts).
pub fn nftables(current: &str, desired: &str) -> Result<Diff, TraceError> {
    let cur = NftRuleset::parse(current)?;
    let want = NftRuleset::parse(desired)?;
    let mut d = Diff::default();
    let key = |t: &NftTable| (t.family.clone(), t.name.clone());
    let names: BTreeSet<(String, String)> =
        cur.tables.iter().chain(&want.tables).map(key).collect();
    let empty = NftTable::default();
    for (fam, name) in names {
        let [c, w] =
            [&cur, &want].map(|r| r.tables.iter().find(|t| t.family == fam && t.name == name));
        let label = format!("table {fam} {name}");
        match (c, w) {
            (None, Some(_)) => d.add("tables added", format!("+ {label}")),
            (Some(_), None) => {
                d.add("tables removed", format!("- {label}"));
                continue;
            }
            _ => {}
        }
        let c = c.unwrap_or(&empty);
        let w = w.unwrap_or(&empty);
        let chains: BTreeSet<&String> = c.chains.keys().chain(w.chains.keys()).collect();
        for ch in chains {
            match (c.chains.get(ch), w.chains.get(ch)) {
                (None, Some(x)) => {
                    let rules = x.rules.iter().map(|r| r.text.as_str());
                    d.whole_chain(true, &format!("{label} {ch}"), rules);
                }
                (Some(x), None) => {
                    let rules = x.rules.iter().map(|r| r.text.as_str());
                    d.whole_chain(false, &format!("{label} {ch}"), rules);
                }
                (Some(a), Some(b)) => {
                    if a.base != b.base {
                        d.add(
                            "base chains changed",
                            format!("~ chain {label} {ch}: hook or priority changes"),
                        );
                    }
                    let ak: Vec<String> = a.rules.iter().map(canon_nft_rule).collect();
                    let bk: Vec<String> = b.rules.iter().map(canon_nft_rule).collect();
                    if ak != bk {
                        d.lines.push(format!("  chain {label} {ch}:"));
                        for (r, k) in a.rules.iter().zip(&ak) {
                            if !bk.contains(k) {
                                d.add("rules removed", format!("-   {}", r.text));
                            }
                        }
                        for (r, k) in b.rules.iter().zip(&bk) {
                            if !ak.contains(k) {
                                d.add("rules added", format!("+   {}", r.text));
                            }
                        }
                    }
                }
                (None, None) => {}
            }
        }
        let sets: BTreeSet<&String> = c.sets.keys().chain(w.sets.keys()).collect();
        for s in sets {
            let (a, b) = (c.sets.get(s), w.sets.get(s));
            match (a, b) {
                (None, Some(_)) => d.add("sets added", format!("+ set {label} {s}")),
                (Some(_), None) => d.add("sets removed", format!("- set {label} {s}")),
                _ => {}
            }
            // Elements that are state rather than configuration: the sync
            // generation canary (every sync writes one) and sets the
            // kernel fills from the packet path (ClientIP affinity).
            if s == "sync-generation"
                || [a, b]
                    .into_iter()
                    .flatten()
                    .any(|x| x.decl.contains("dynamic"))
            {
                continue;
            }
            // Compared by meaning, shown as written.
            let elems = |x: Option<&crate::nftables::NftSet>| -> BTreeMap<String, String> {
                x.map(|x| {
                    x.elements
                        .iter()
                        .map(|e| (format!("{:?} : {:?}", e.key, e.value), e.text.clone()))
                        .collect()
                })
                .unwrap_or_default()
            };
            let (ea, eb) = (elems(a), elems(b));
            let mut header = false;
            let sides = [
                (&ea, &eb, "elements removed", '-'),
                (&eb, &ea, "elements added", '+'),
            ];
            for (from, other, what, sign) in sides {
                for (k, text) in from {
                    if other.contains_key(k) {
                        continue;
                    }
                    if !header {
                        d.lines.push(format!("  set {label} {s}:"));
                        header = true;
                    }
                    d.add(what, format!("{sign}   {text}"));
                }
            }
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
-A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -m comment --comment \"a/b cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ\nCOMMIT\n";
    const RESTORE: &str = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
-I PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000\n\
-A KUBE-SERVICES -m comment --comment \"a/b cluster IP\" -m tcp -p tcp -d 10.0.0.1 --dport 80 -j KUBE-MARK-MASQ\nCOMMIT\n";

    /// Every count of `d`, by kind.
    fn counts(d: &Diff) -> Vec<(&str, usize)> {
        d.counts.iter().map(|(k, n)| (k.as_str(), *n)).collect()
    }

    #[test]
    fn iptables_spelling_is_not_a_change() {
        let d = iptables(SAVED, RESTORE).expect("parses");
        assert!(d.is_empty(), "{}", d.render());
    }

    #[test]
    fn iptables_changed_rule_is_shown() {
        let changed = RESTORE.replace("--dport 80", "--dport 81");
        let d = iptables(SAVED, &changed).expect("parses");
        assert_eq!(
            counts(&d),
            [("rules added", 1), ("rules removed", 1)],
            "{}",
            d.render()
        );
    }

    /// A chain only `with` has is added, with its rule (`lines`), from
    /// `without` to `with`, and removed the other way.
    fn whole_chain_both_ways(
        diff: fn(&str, &str) -> Result<Diff, TraceError>,
        without: &str,
        with: &str,
        lines: [&str; 2],
    ) {
        let d = diff(without, with).expect("parses");
        let added = [("chains added", 1), ("rules added", 1)];
        assert_eq!(counts(&d), added, "{}", d.render());
        assert_eq!(d.lines, lines);
        let d = diff(with, without).expect("parses");
        let removed = [("chains removed", 1), ("rules removed", 1)];
        assert_eq!(counts(&d), removed, "{}", d.render());
    }

    #[test]
    fn chains_only_one_side_has_are_shown_with_their_rules() {
        let more = RESTORE
            .replace("*nat\n", "*nat\n:KUBE-SVC-NEW - [0:0]\n")
            .replace("COMMIT\n", "-A KUBE-SVC-NEW -j KUBE-MARK-MASQ\nCOMMIT\n");
        let lines = [
            "+ chain any family nat KUBE-SVC-NEW",
            "+   -A KUBE-SVC-NEW -j KUBE-MARK-MASQ",
        ];
        whole_chain_both_ways(iptables, RESTORE, &more, lines);
        let script =
            "add table ip kproxy\nadd chain ip kproxy masq\nadd rule ip kproxy masq masquerade\n";
        let more = format!("{script}add chain ip kproxy extra\nadd rule ip kproxy extra drop\n");
        let lines = ["+ chain table ip kproxy extra", "+   drop"];
        whole_chain_both_ways(nftables, script, &more, lines);
    }

    #[test]
    fn nft_listing_matches_script() {
        let script = "add table ip kproxy\nadd chain ip kproxy masq\nadd rule ip kproxy masq meta mark & 0x4000 != 0 meta mark set meta mark ^ 0x4000 masquerade fully-random\nadd set ip kproxy ips { type ipv4_addr ; }\nadd element ip kproxy ips { 10.0.0.1 }\n";
        let listed = "table ip kproxy {\n\tset ips {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.1 }\n\t}\n\n\tchain masq {\n\t\tmeta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000 masquerade fully-random\n\t}\n}\n";
        let d = nftables(listed, script).expect("parses");
        assert!(d.is_empty(), "{}", d.render());
        let more = format!("{script}add element ip kproxy ips {{ 10.0.0.2 }}\n");
        let d = nftables(listed, &more).expect("parses");
        assert_eq!(counts(&d), [("elements added", 1)], "{}", d.render());
    }

    #[test]
    fn nft_state_elements_are_not_differences() {
        let script = "add table ip kproxy\nadd set ip kproxy sync-generation { type mark ; }\nadd set ip kproxy affinity { typeof ip saddr . numgen inc mod 1 . numgen inc mod 1 ; flags dynamic,timeout ; }\nadd set ip kproxy ips { type ipv4_addr ; }\n";
        let listed = "table ip kproxy {\n\tset sync-generation {\n\t\ttype mark\n\t\telements = { 0x00000003 }\n\t}\n\tset affinity {\n\t\ttypeof ip saddr . numgen inc mod 1 . numgen inc mod 1\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\telements = { 10.0.0.2 . 5 . 6 timeout 3h expires 2h59m }\n\t}\n\tset ips {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.9 }\n\t}\n}\n";
        let d = nftables(listed, script).expect("parses");
        // Only the configured set's element is a difference.
        assert_eq!(counts(&d), [("elements removed", 1)], "{}", d.render());
        assert!(d.render().contains("10.0.0.9"), "{}", d.render());
        assert!(!d.render().contains("sync-generation"), "{}", d.render());
    }
}
