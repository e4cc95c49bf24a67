//! The drift check: what the last sync applied, reduced to what can be
//! read back cheaply ([`expected`]), and how the kernel differs from it
//! ([`compare`]).
//!
//! Per family and table: the jumps kproxy put into the built-in chains
//! (`PREROUTING -j KUBE-SERVICES`, ...) must still be there, and each
//! top-level chain (`KUBE-SERVICES`, `KUBE-NODEPORTS`, `KUBE-POSTROUTING`,
//! `KUBE-MARK-MASQ`, `KUBE-FORWARD`, ..., the canary) must exist with the
//! rule count that was applied. That finds a flushed table
//! (`iptables -t nat -F` empties every chain), a deleted jump, a flushed or
//! deleted top-level chain, and a rule added to or removed from one.
//! iptables-nft reads each of these chains on its own over netlink; legacy
//! reads each table once with `iptables-save` (streamed, only these chains
//! kept). The per-service chains are not compared: the periodic full sync
//! (kube-proxy's `FullSyncPeriod`) re-reads and rewrites them.

use std::collections::BTreeMap;

use kproxy_graph::IpFamily;

use crate::generate::top_level_chains;
use crate::ir::{FamilyRuleset, TableName};

/// What one chain holds, as read from the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainState {
    /// Rules in the chain.
    pub rules: usize,
    /// The chain each rule jumps or goes to (`-j CHAIN`, `-g CHAIN`), in
    /// rule order; built-in targets (`ACCEPT`, `DNAT`, ...) included.
    pub jumps: Vec<String>,
}

/// What must hold for one table of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableExpect {
    /// The table.
    pub table: TableName,
    /// Per built-in chain, the chains kproxy jumps to from it.
    pub jumps: BTreeMap<String, Vec<String>>,
    /// Per top-level chain, its rule count.
    pub chains: BTreeMap<String, usize>,
}

impl TableExpect {
    /// Nothing yet for `table`.
    pub fn new(table: TableName) -> Self {
        TableExpect {
            table,
            jumps: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }

    /// Every chain to read: the built-in ones with jumps, then the
    /// top-level ones.
    pub fn chains_to_read(&self) -> impl Iterator<Item = &str> {
        self.jumps
            .keys()
            .chain(self.chains.keys())
            .map(String::as_str)
    }
}

/// What the kernel must hold of `fr`, per table.
pub fn expected(fr: &FamilyRuleset) -> Vec<TableExpect> {
    let mut out = Vec::new();
    for t in &fr.tables {
        let mut e = TableExpect::new(t.name);
        for b in &t.builtin_rules {
            if let Some(target) = b.rule.jump_target() {
                e.jumps
                    .entry(b.chain.clone())
                    .or_default()
                    .push(target.to_string());
            }
        }
        for name in top_level_chains(t.name) {
            if let Some(c) = t.chain(name) {
                e.chains.insert(c.name.clone(), c.rules.len());
            }
        }
        out.push(e);
    }
    out
}

/// The differences between `want` and the chains read (`None`: the chain
/// does not exist), as sentences for the log; empty when none.
pub fn compare(
    family: IpFamily,
    want: &TableExpect,
    got: &BTreeMap<String, Option<ChainState>>,
) -> Vec<String> {
    let t = want.table.as_str();
    let mut out = Vec::new();
    for (chain, targets) in &want.jumps {
        let have = got.get(chain).and_then(Option::as_ref);
        for target in targets {
            if !have.is_some_and(|h| h.jumps.iter().any(|j| j == target)) {
                out.push(format!(
                    "{family} {t}: the jump from {chain} to {target} is missing"
                ));
            }
        }
    }
    for (chain, rules) in &want.chains {
        match got.get(chain).and_then(Option::as_ref) {
            None => out.push(format!("{family} {t}: chain {chain} is missing")),
            Some(h) if h.rules != *rules => out.push(format!(
                "{family} {t}: chain {chain} has {} rules, {rules} applied",
                h.rules
            )),
            Some(_) => {}
        }
    }
    out
}

/// Count one rule of `iptables-save` (the text after `-A `) into
/// `state`, with its `-j`/`-g` target.
pub fn count_rule(state: &mut ChainState, rule: &str) {
    state.rules += 1;
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if (w == "-j" || w == "-g")
            && let Some(target) = words.next()
        {
            state.jumps.push(target.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_targets_are_counted() {
        let mut s = ChainState::default();
        for rule in [
            "PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "PREROUTING -d 10.0.0.1/32 -g OTHER",
            "PREROUTING -s 10.0.0.2/32",
        ] {
            count_rule(&mut s, rule);
        }
        assert_eq!(s.rules, 3);
        assert_eq!(s.jumps, vec!["KUBE-SERVICES", "OTHER"]);
    }

    #[test]
    fn missing_jumps_and_counts_are_named() {
        let mut want = TableExpect::new(TableName::Nat);
        want.jumps
            .insert("PREROUTING".into(), vec!["KUBE-SERVICES".into()]);
        want.chains.insert("KUBE-SERVICES".into(), 2);
        want.chains.insert("KUBE-MARK-MASQ".into(), 1);
        let mut got = BTreeMap::new();
        got.insert(
            "PREROUTING".to_string(),
            Some(ChainState {
                rules: 2,
                jumps: vec!["CNI".into(), "KUBE-SERVICES".into()],
            }),
        );
        got.insert(
            "KUBE-SERVICES".to_string(),
            Some(ChainState {
                rules: 2,
                jumps: vec![],
            }),
        );
        got.insert(
            "KUBE-MARK-MASQ".to_string(),
            Some(ChainState {
                rules: 1,
                jumps: vec![],
            }),
        );
        assert!(compare(IpFamily::V4, &want, &got).is_empty());
        got.insert(
            "PREROUTING".to_string(),
            Some(ChainState {
                rules: 1,
                jumps: vec!["CNI".into()],
            }),
        );
        got.insert("KUBE-MARK-MASQ".to_string(), None);
        got.insert(
            "KUBE-SERVICES".to_string(),
            Some(ChainState {
                rules: 0,
                jumps: vec![],
            }),
        );
        assert_eq!(
            compare(IpFamily::V4, &want, &got),
            vec![
                "IPv4 nat: the jump from PREROUTING to KUBE-SERVICES is missing",
                "IPv4 nat: chain KUBE-MARK-MASQ is missing",
                "IPv4 nat: chain KUBE-SERVICES has 0 rules, 2 applied",
            ]
        );
    }
}
