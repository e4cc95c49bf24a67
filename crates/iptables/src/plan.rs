//! Planning: which chains a sync rewrites, edits in place or deletes
//! ([`plan_full`] against what the kernel holds, [`plan_partial`] against
//! what the previous sync wrote).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use kproxy_graph::FamilyChanges;

use crate::diff::{ChainEdit, edit_script};
use crate::ir::{BuiltinRule, FamilyRuleset, Rule, Table, TableName};
use crate::names::is_service_chain;
use crate::parse::{Saved, SavedTable};
use crate::render::RestorePlan;

/// Most rule changes a chain is edited with in place (`-D`/`-I`) rather
/// than rewritten; past it (or past half the chain) a rewrite is cheaper.
pub const MAX_EDITS: usize = 2048;

/// How one chain gets from what the kernel holds to the IR.
enum ChainPlan {
    /// Already equal: not written.
    Same,
    /// Edited in place.
    Edit(Vec<ChainEdit>),
    /// Flushed and rewritten.
    Rewrite,
}

fn chain_plan<T: PartialEq>(have: &[T], want: &[T]) -> ChainPlan {
    if have == want {
        return ChainPlan::Same;
    }
    // Small chains (a service's own) are rewritten: a few lines either
    // way, and iptables-nft needs the chain's rules from the kernel for
    // numbered edits.
    if want.len() < 16 && have.len() < 16 {
        return ChainPlan::Rewrite;
    }
    let max = MAX_EDITS.min(want.len().max(have.len()) / 2);
    match edit_script(have, want, max) {
        Some(e) => ChainPlan::Edit(e),
        None => ChainPlan::Rewrite,
    }
}

/// A table's chains sorted by what a restore does with them.
#[derive(Default)]
struct Sorted {
    /// Already equal: skipped.
    same: BTreeSet<String>,
    /// Edited in place.
    edits: BTreeMap<String, Vec<ChainEdit>>,
    /// Not in the kernel yet.
    fresh: BTreeSet<String>,
}

impl Sorted {
    /// Sort chain `name` by its plan (a rewrite is the default).
    fn record(&mut self, name: &str, plan: ChainPlan) {
        match plan {
            ChainPlan::Same => {
                self.same.insert(name.to_string());
            }
            ChainPlan::Edit(e) => {
                self.edits.insert(name.to_string(), e);
            }
            ChainPlan::Rewrite => {}
        }
    }

    fn store(self, plan: &mut RestorePlan, table: TableName) {
        plan.skip.insert(table, self.same);
        plan.edits.insert(table, self.edits);
        plan.fresh.insert(table, self.fresh);
    }
}

/// The restore plan of a full sync against what the kernel holds: every
/// chain whose kernel copy differs rewritten or edited in place, missing
/// jumps inserted, stale service chains deleted.
///
/// Chains the kernel already holds rule for rule (compared canonically,
/// after parsing `iptables-save`) are left out: with iptables-nft every
/// rule written costs time, so a restart or periodic full sync over an
/// unchanged node writes next to nothing. A long chain that differs in a
/// few rules (a top-level chain) gets `-D`/`-I` edits; a rule kproxy
/// cannot parse never matches, so it is deleted or its chain rewritten.
pub fn plan_full(fr: &FamilyRuleset, kernel: &Saved) -> RestorePlan {
    let mut insert: BTreeMap<TableName, Vec<BuiltinRule>> = BTreeMap::new();
    let mut plan = RestorePlan {
        dirty: None,
        ..RestorePlan::default()
    };
    for table in &fr.tables {
        let kt = kernel.table(table.name);
        let kernel_chains = kt.map(SavedTable::chains_by_name).unwrap_or_default();
        let ours: HashSet<&str> = table.chains.iter().map(|c| c.name.as_str()).collect();
        let mut sorted = Sorted::default();
        for c in &table.chains {
            let Some(kc) = kernel_chains.get(c.name.as_str()) else {
                sorted.fresh.insert(c.name.clone());
                continue;
            };
            let have: Vec<Option<Rule>> = kc
                .rules
                .iter()
                .map(|r| r.rule.as_ref().map(Rule::canonical))
                .collect();
            let want: Vec<Option<Rule>> = c.rules.iter().map(|r| Some(r.canonical())).collect();
            // An unparsed kernel rule (None) must never match: compare
            // as "parsed and equal".
            let have: Vec<Key> = have.into_iter().map(Key).collect();
            let want: Vec<Key> = want.into_iter().map(Key).collect();
            sorted.record(&c.name, chain_plan(&have, &want));
        }
        sorted.store(&mut plan, table.name);
        let missing: Vec<BuiltinRule> = table
            .builtin_rules
            .iter()
            .filter(|b| {
                let want = b.rule.canonical();
                !kernel_chains.get(b.chain.as_str()).is_some_and(|c| {
                    c.rules
                        .iter()
                        .any(|r| r.rule.as_ref().is_some_and(|r| r.canonical() == want))
                })
            })
            .cloned()
            .collect();
        insert.insert(table.name, missing);
        if let Some(kt) = kt {
            let stale: Vec<String> = kt
                .chains
                .iter()
                .filter(|c| is_service_chain(&c.name) && !ours.contains(c.name.as_str()))
                .map(|c| c.name.clone())
                .collect();
            if !stale.is_empty() {
                plan.delete.insert(table.name, stale);
            }
        }
    }
    plan.insert = Some(insert);
    plan
}

/// A kernel rule as compared by [`plan_full`]: `None` (unparsed) equals
/// nothing, not even another unparsed rule.
struct Key(Option<Rule>);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        matches!((&self.0, &other.0), (Some(a), Some(b)) if a == b)
    }
}

/// The restore plan of a partial sync (kube-proxy's KEP-3453): the
/// chains of added and changed service ports and the top-level chains,
/// each only where it differs from what `prev` wrote (long chains edited
/// in place), and the deletion of chains `prev` had that `next` lacks.
///
/// Unlike kube-proxy, unchanged top-level chains are not rewritten: with
/// iptables-nft that rewrite alone (one rule per service, each naming its
/// own chain) grows quadratically, and with iptables-legacy any change
/// makes the restore replace the whole table, so a sync that changes
/// nothing must write nothing.
pub fn plan_partial(
    prev: &FamilyRuleset,
    next: &FamilyRuleset,
    changes: &FamilyChanges,
) -> RestorePlan {
    let mut plan = RestorePlan {
        dirty: Some(changes.dirty().cloned().collect()),
        insert: Some(BTreeMap::new()),
        ..RestorePlan::default()
    };
    for nt in &next.tables {
        let prev_chains = prev
            .table(nt.name)
            .map(Table::chains_by_name)
            .unwrap_or_default();
        let dirty = plan.dirty.as_ref();
        let mut sorted = Sorted::default();
        for c in &nt.chains {
            let selected = match &c.owner {
                None => true,
                Some(o) => dirty.is_some_and(|d| d.contains(o)),
            };
            if !selected {
                continue;
            }
            let Some(pc) = prev_chains.get(c.name.as_str()) else {
                sorted.fresh.insert(c.name.clone());
                continue;
            };
            sorted.record(&c.name, chain_plan(&pc.rules, &c.rules));
        }
        sorted.store(&mut plan, nt.name);
    }
    for pt in &prev.tables {
        let next_chains: HashSet<&str> = next
            .table(pt.name)
            .map(|t| t.chains.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default();
        let stale: Vec<String> = pt
            .chains
            .iter()
            .filter(|c| c.owner.is_some() && !next_chains.contains(c.name.as_str()))
            .map(|c| c.name.clone())
            .collect();
        if !stale.is_empty() {
            plan.delete.insert(pt.name, stale);
        }
    }
    plan
}
