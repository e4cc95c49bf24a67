//! Incremental syncs: the changed service ports' old and new
//! contributions, diffed into one transaction.

use std::collections::{BTreeSet, HashMap, HashSet};

use kproxy_graph::{ApplyError, ChangeSet, ServiceGraph, ServicePortName, SyncStats};

use crate::claims::{self, Winner};
use crate::diff::{self, diff_tables};
use crate::generate::{self, Ctx, FamilyRules, FastHash, LbChain, ServiceRules, TABLE, lb_closure};
use crate::ir::{Family, Op, Table, Transaction};

use super::{
    FamilyState, NftablesBackend, PendingFamily, applied_port, family_header, fill_counts, gen_err,
    ip_family, service_chain_rules,
};

impl NftablesBackend {
    pub(super) fn incremental_sync(
        &mut self,
        graph: &ServiceGraph,
        changes: &ChangeSet,
        skeletons: Option<&[(Family, Table)]>,
    ) -> Result<SyncStats, ApplyError> {
        // Chains flushed by an earlier sync go first, in their own
        // transaction; a failure here only delays their removal.
        if !self.stale.is_empty() {
            let tx = diff::delete_stale(TABLE, self.stale.iter());
            if self.send(&tx).is_ok() {
                self.stale.clear();
            }
        }
        let Some(state) = self.state.as_mut() else {
            return Err(ApplyError::Other {
                backend: "nftables",
                message: "incremental sync without a previous full sync".into(),
            });
        };
        let mut tx = Transaction::new();
        let mut new_state: Vec<PendingFamily> = Vec::new();
        let mut stale = Vec::new();
        let mut added = Vec::new();
        for (idx, fs) in state.iter().enumerate() {
            let ipf = match fs.family {
                Family::Ip => kproxy_graph::IpFamily::V4,
                Family::Ip6 => kproxy_graph::IpFamily::V6,
            };
            let fc = changes.family(ipf);
            let new_skeleton = skeletons
                .and_then(|s| s.iter().find(|(f, _)| *f == fs.family))
                .map(|(_, t)| t)
                .filter(|t| **t != fs.skeleton);
            if fc.is_empty() && new_skeleton.is_none() {
                continue;
            }
            let empty;
            let fg = match graph.family(ipf) {
                Some(fg) => fg,
                None => {
                    empty = kproxy_graph::FamilyGraph::empty(ipf);
                    &empty
                }
            };
            let ctx = Ctx::new(graph, fg);
            // Skeleton changes (node addresses, service CIDRs, detector)
            // first: the service diff below builds on the skeleton's sets.
            if let Some(skel) = new_skeleton {
                let plan = diff_parts(&fs.skeleton, skel)?;
                tx.extend(plan.tx);
                stale.extend(plan.stale_chains.into_iter().map(|c| (fs.family, c)));
                added.extend(plan.added_chains.into_iter().map(|c| (fs.family, c)));
            }
            let mut old_part = partial_table(&fs.skeleton);
            let mut new_part = partial_table(&fs.skeleton);
            let mut refs = fs.lb_refs.clone();
            let mut touched: BTreeSet<LbChain> = BTreeSet::new();
            let mut updates = Vec::new();
            // The applied contributions of the ports the change updates,
            // generated again from the applied ports (an added port that
            // was applied already is replaced as a changed one).
            let mut olds: HashMap<ServicePortName, ServiceRules> = HashMap::new();
            for name in fc
                .removed
                .iter()
                .chain(fc.changed.iter())
                .chain(fc.added.iter())
            {
                if let Some(sr) = fs.contribution(name)? {
                    add_chains(&mut old_part, &sr);
                    for lb in lb_closure(&sr.lb) {
                        touched.insert(lb);
                        if let Some(n) = refs.get_mut(&lb) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    olds.insert(name.clone(), sr);
                }
            }
            for name in fc.removed.iter() {
                updates.push((name.clone(), None));
            }
            for name in fc.added.iter().chain(fc.changed.iter()) {
                let Some(sp) = fg.services.get(name) else {
                    continue;
                };
                let sr = generate::service_rules(&ctx, sp).map_err(gen_err)?;
                add_chains(&mut new_part, &sr);
                for lb in lb_closure(&sr.lb) {
                    touched.insert(lb);
                    *refs.entry(lb).or_insert(0) += 1;
                }
                updates.push((name.clone(), Some(sr)));
            }
            let new_skel = new_skeleton.unwrap_or(&fs.skeleton);
            shared_elements(fs, &olds, &updates, new_skel, &mut old_part, &mut new_part)?;
            let fam = generate::Fam { f: fs.family };
            for lb in &touched {
                let c = lb.chain(&fam, ctx.mark());
                if fs.lb_refs.get(lb).copied().unwrap_or(0) > 0 {
                    old_part.chains.insert(c.name.clone(), c.clone());
                }
                if refs.get(lb).copied().unwrap_or(0) > 0 {
                    new_part.chains.insert(c.name.clone(), c);
                }
            }
            refs.retain(|_, n| *n > 0);
            let plan = diff_parts(&old_part, &new_part)?;
            tx.extend(plan.tx);
            stale.extend(plan.stale_chains.into_iter().map(|c| (fs.family, c)));
            added.extend(plan.added_chains.into_iter().map(|c| (fs.family, c)));
            new_state.push((idx, updates, olds, refs, new_skeleton.cloned()));
        }
        // Affinity ids of endpoints that go away: their clients' entries
        // are removed after the transaction, as kube-proxy deletes an
        // endpoint's affinity set with its chain (a returning endpoint
        // starts with no clients).
        let mut purge: Vec<(Family, BTreeSet<(u32, u32)>)> = Vec::new();
        for (idx, updates, olds, _, _) in &new_state {
            let fs = &state[*idx];
            let mut gone = BTreeSet::new();
            for (name, sr) in updates {
                if let Some(old) = olds.get(name) {
                    let keep = sr.as_ref().map_or(&[][..], |s| &s.affinity_ids[..]);
                    gone.extend(
                        old.affinity_ids
                            .iter()
                            .filter(|id| keep.binary_search(id).is_err()),
                    );
                }
            }
            if !gone.is_empty() {
                purge.push((fs.family, gone));
            }
        }
        let families: Vec<Family> = state.iter().map(|s| s.family).collect();
        let mut stats = SyncStats {
            rules_written: 0,
            ..SyncStats::default()
        };
        stats.rules_written += tx
            .ops
            .iter()
            .filter(|(_, _, op)| matches!(op, Op::AddRule { .. }))
            .count();
        self.generation = self.generation.wrapping_add(1);
        self.generation_ops(&mut tx, &families);
        match self.send_counted(&tx) {
            Ok(n) => stats.bytes_written = n,
            Err(e) => {
                self.state = None;
                return Err(e);
            }
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(stats);
        };
        for (idx, updates, mut olds, refs, skeleton) in new_state {
            let fs = &mut state[idx];
            if let Some(skel) = skeleton {
                fs.skeleton = skel;
            }
            let ipf = ip_family(fs.family);
            let fg = graph.family(ipf);
            for (name, sr) in updates {
                let new_rules = sr.as_ref().map_or(0, service_chain_rules);
                let old = olds.remove(&name);
                if let Some(old) = &old {
                    fs.claims.remove(&name, old);
                }
                let port = fg
                    .and_then(|fg| fg.services.get(&name))
                    .map(|sp| applied_port(sp, ipf));
                match (&sr, port) {
                    (Some(sr), Some(port)) => {
                        fs.claims.add(&name, sr);
                        fs.ports.insert(name, port);
                    }
                    _ => {
                        fs.ports.remove(&name);
                    }
                }
                fs.chain_rules = fs.chain_rules + new_rules
                    - old
                        .as_ref()
                        .map_or(0, service_chain_rules)
                        .min(fs.chain_rules + new_rules);
            }
            fs.lb_refs = refs;
            // The context the new contributions were generated in (the
            // same but for the service CIDRs, which only the skeleton
            // reads, unless a full sync re-asserted through a diff).
            if let Some(fg) = fg {
                fs.header = family_header(fg);
            }
            fs.mark = graph.masquerade_mark();
            fs.masquerade_all = graph.config.masquerade_all;
        }
        for a in &added {
            self.stale.remove(a);
        }
        self.stale.extend(stale);
        for (family, ids) in &purge {
            // Best effort: the rules are in place; a leftover entry only
            // expires later.
            if let Err(e) = self.purge_affinity(*family, ids) {
                tracing::warn!(%e, family = family.as_str(), "could not remove the affinity entries of removed endpoints");
            }
        }
        stats.rules_total = self
            .state
            .as_ref()
            .map(|s| {
                s.iter()
                    .map(|fs| fs.skeleton.rule_count() + fs.chain_rules + fs.lb_refs.len())
                    .sum()
            })
            .unwrap_or(0);
        fill_counts(&mut stats, graph);
        Ok(stats)
    }
}

/// Add the per-service chains of a contribution to a partial table (their
/// names are unique to the service port).
pub(super) fn add_chains(t: &mut Table, sr: &ServiceRules) {
    for c in &sr.chains {
        t.chains.entry(c.name.clone()).or_insert_with(|| c.clone());
    }
}

/// The elements an incremental sync must compare: for every key that the
/// changed service ports claim before or after the change, the element the
/// full render writes before (into `old_part`: what the kernel has) and
/// after (into `new_part`). The full render's rule decides both
/// ([`claims::winner`]: the skeleton's element, else the first claimant's
/// in service-port order), over every claimant of the key, changed or not:
/// so a second claimant never collides with the first, a loser that
/// changes stays out, and a loser takes over when the winner goes.
/// `olds` holds the applied contributions of the updated ports; those of
/// unchanged claimants of a touched key (rare: a key two ports claim) are
/// generated again from the state.
pub(super) fn shared_elements(
    fs: &FamilyState,
    olds: &HashMap<ServicePortName, ServiceRules>,
    updates: &[(ServicePortName, Option<ServiceRules>)],
    new_skeleton: &Table,
    old_part: &mut Table,
    new_part: &mut Table,
) -> Result<(), ApplyError> {
    let changed: HashSet<&ServicePortName> = updates.iter().map(|(n, _)| n).collect();
    // The new contributions' claims, by fingerprint.
    let mut new_claims: HashMap<u64, Vec<(usize, usize)>, FastHash> = HashMap::default();
    for (i, (_, sr)) in updates.iter().enumerate() {
        let Some(sr) = sr else { continue };
        let mut seen: HashSet<u64, FastHash> = HashSet::default();
        for (at, e) in sr.elems.iter().enumerate() {
            let fp = claims::fingerprint(e.set, e.key());
            if seen.insert(fp) {
                new_claims.entry(fp).or_default().push((i, at));
            }
        }
    }
    // Every key the change touches, once.
    let mut keys: HashSet<(&'static str, &str), FastHash> = HashSet::default();
    let news = updates.iter().filter_map(|(_, sr)| sr.as_ref());
    for sr in olds.values().chain(news) {
        for e in sr.elems.iter() {
            keys.insert((e.set, e.key()));
        }
    }
    // The applied contributions of the other claimants of those keys.
    let mut others: HashMap<ServicePortName, ServiceRules> = HashMap::new();
    for (set, key) in &keys {
        for (n, _) in fs.claims.claimants(set, key) {
            if !changed.contains(n)
                && !others.contains_key(n)
                && let Some(sr) = fs.contribution(n)?
            {
                others.insert(n.clone(), sr);
            }
        }
    }
    let applied = |n: &ServicePortName| olds.get(n).or_else(|| others.get(n));
    for (set, key) in keys {
        let recorded = fs.claims.claimants(set, key);
        let before = claims::winner(
            &fs.skeleton,
            set,
            key,
            recorded
                .iter()
                .filter_map(|(n, at)| applied(n).map(|sr| (*n, sr, *at))),
        );
        let unchanged = recorded
            .iter()
            .filter(|(n, _)| !changed.contains(n))
            .filter_map(|(n, at)| others.get(*n).map(|sr| (*n, sr, *at)));
        let fresh = new_claims
            .get(&claims::fingerprint(set, key))
            .into_iter()
            .flatten()
            .filter_map(|(i, at)| {
                let (n, sr) = &updates[*i];
                sr.as_ref().map(|sr| (n, sr, *at))
            });
        let after = claims::winner(new_skeleton, set, key, unchanged.chain(fresh));
        for (part, w) in [(&mut *old_part, before), (&mut *new_part, after)] {
            if let (Winner::Service(e), Some(s)) = (w, part.sets.get_mut(set)) {
                s.elements.insert(key.to_string(), e.element());
            }
        }
    }
    Ok(())
}

/// A table with the skeleton's set declarations (no elements, no chains):
/// the frame partial contributions are assembled into.
pub(super) fn partial_table(skeleton: &Table) -> Table {
    let mut t = Table::new(skeleton.fam(), &skeleton.name, None);
    for (name, s) in &skeleton.sets {
        t.sets.insert(name.clone(), s.decl_only());
    }
    t
}

impl FamilyRules {
    /// Rules of the assembled table, without assembling it.
    pub fn assemble_rule_count(&self) -> usize {
        let mut names = BTreeSet::new();
        let mut n = self.skeleton.rule_count();
        let mut lbs = BTreeSet::new();
        for sr in self.services.values() {
            for c in &sr.chains {
                if names.insert(c.name.as_str()) {
                    n += c.rules.len();
                }
            }
            lbs.extend(lb_closure(&sr.lb));
        }
        n + lbs.len()
    }
}

/// [`diff_tables`], with its error as the backend's.
fn diff_parts(old: &Table, new: &Table) -> Result<diff::Plan, ApplyError> {
    diff_tables(old, new).map_err(|e| ApplyError::Other {
        backend: "nftables",
        message: e.to_string(),
    })
}
