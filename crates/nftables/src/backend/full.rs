//! Full syncs: the generation element, replacing both tables (in
//! bounded transactions when large), and re-asserting a large ruleset as
//! one diff.

use kproxy_graph::{ApplyError, ChangeSet, FamilyGraph, ServiceGraph, SyncStats};

use crate::generate::{self, FamilyRules, TABLE, sets};
use crate::ir::{ChunkWriter, Element, Family, Op, Table, Transaction};

use super::{
    FamilyState, NftablesBackend, applied_port, fill_counts, gen_err, ip_family, send_via_pipelined,
};

impl NftablesBackend {
    pub(super) fn generation_ops(&self, tx: &mut Transaction, families: &[Family]) {
        for f in families {
            tx.push(
                *f,
                TABLE,
                Op::FlushSet {
                    name: sets::GENERATION.to_string(),
                    map: false,
                },
            );
            tx.add_elements(
                *f,
                TABLE,
                sets::GENERATION,
                [(format!("{:#x}", self.generation), Element::default())],
            );
        }
    }

    /// A full sync. When kproxy's tables are in place (state known, no
    /// drift seen) and the ruleset is too large for one transaction, the
    /// complete new ruleset is diffed against what was applied (skeleton
    /// and every service port) and sent as one atomic transaction: a
    /// periodic resync of a large cluster never empties the tables, not
    /// even briefly. Otherwise the tables are replaced (`replace`).
    pub(super) fn full_sync(&mut self, graph: &ServiceGraph) -> Result<SyncStats, ApplyError> {
        let fams = generate::generate_families(graph).map_err(gen_err)?;
        let elements: usize = fams
            .iter()
            .map(|(_, fr)| fr.services.values().map(|s| s.elems.len()).sum::<usize>())
            .sum();
        if elements > self.max_elements
            && let Some((changes, skeletons)) = self.reassert_plan(graph, &fams)
        {
            match self.incremental_sync(graph, &changes, Some(&skeletons)) {
                Ok(mut stats) => {
                    stats.full = true;
                    return Ok(stats);
                }
                // The transaction failed: the state is gone, report it
                // (the next sync replaces the tables).
                Err(e) if self.state.is_none() => return Err(e),
                // The diff was refused before anything was sent (a base
                // chain changed): replace instead.
                Err(_) => {}
            }
        }
        self.replace(graph, fams)
    }

    /// The changes between what was applied and `fams` (generated from
    /// `graph`), when they can be applied as a diff (same families, same
    /// masquerade mark). A service port is unchanged when it is the one
    /// applied and, in another context (node addresses, detector), its
    /// applied contribution generated again is the new one.
    pub(super) fn reassert_plan(
        &self,
        graph: &ServiceGraph,
        fams: &[(Family, FamilyRules)],
    ) -> Option<(ChangeSet, Vec<(Family, Table)>)> {
        let state = self.state.as_ref()?;
        if state.len() != fams.len() {
            return None;
        }
        let mut changes = ChangeSet::default();
        let mut skeletons = Vec::new();
        for ((f, fr), fs) in fams.iter().zip(state) {
            if *f != fs.family || fr.mark != fs.mark {
                return None;
            }
            let ipf = ip_family(*f);
            let empty;
            let fg = match graph.family(ipf) {
                Some(fg) => fg,
                None => {
                    empty = FamilyGraph::empty(ipf);
                    &empty
                }
            };
            let same_ctx = fs.same_ctx(graph, fg);
            let mut fc = kproxy_graph::FamilyChanges::default();
            for (name, sr) in &fr.services {
                let Some(old) = fs.ports.get(name) else {
                    fc.added.insert(name.clone());
                    continue;
                };
                // A port kept as it is must generate what was applied in
                // the new context too: so a changed port is updated even
                // when its contribution stays the same.
                let changed = fg
                    .services
                    .get(name)
                    .is_none_or(|sp| applied_port(sp, ipf) != *old)
                    || (!same_ctx
                        && generate::service_rules(&fs.ctx(), old).map_or(true, |o| o != *sr));
                if changed {
                    fc.changed.insert(name.clone());
                }
            }
            for name in fs.ports.keys() {
                if !fr.services.contains_key(name) {
                    fc.removed.insert(name.clone());
                }
            }
            changes.families.insert(ipf, fc);
            skeletons.push((*f, fr.skeleton.clone()));
        }
        Some((changes, skeletons))
    }

    /// Replace both tables (`add table; delete table;` then everything),
    /// in bounded transactions when large.
    pub(super) fn replace(
        &mut self,
        graph: &ServiceGraph,
        fams: Vec<(Family, FamilyRules)>,
    ) -> Result<SyncStats, ApplyError> {
        let mut stats = SyncStats {
            full: true,
            ..SyncStats::default()
        };
        self.generation = self.generation.wrapping_add(1);
        let families: Vec<Family> = fams.iter().map(|(f, _)| *f).collect();
        let mut gen_tx = Transaction::new();
        for (f, keys) in self.carried_affinity(&fams) {
            gen_tx.add_elements(
                f,
                TABLE,
                sets::AFFINITY,
                keys.into_iter().map(|k| (k, Element::default())),
            );
        }
        self.generation_ops(&mut gen_tx, &families);
        let mut failure: Option<ApplyError> = None;
        let mut bytes = 0usize;
        let (transport, peak) = (&mut self.transport, &mut self.peak_batch);
        let mut sink = |tx: Transaction| {
            if failure.is_some() {
                return;
            }
            // Over netlink each part is applied while the next is built.
            match send_via_pipelined(transport, peak, tx) {
                Ok(n) => bytes += n,
                Err(e) => failure = Some(e),
            }
        };
        let mut w = ChunkWriter::streaming_ops(self.max_elements, &mut sink);
        for (_, fr) in &fams {
            fr.render_full(&mut w);
            stats.rules_total += fr.assemble_rule_count();
        }
        for (f, t, op) in &gen_tx.ops {
            w.op(*f, t, op);
        }
        w.finish();
        let last = self.transport.wait();
        if failure.is_none() {
            failure = last.err();
        }
        self.replaced(graph, fams, stats, bytes, failure)
    }

    /// The end of [`NftablesBackend::replace`]: the new state, or none
    /// after a failure.
    pub(super) fn replaced(
        &mut self,
        graph: &ServiceGraph,
        fams: Vec<(Family, FamilyRules)>,
        mut stats: SyncStats,
        bytes: usize,
        failure: Option<ApplyError>,
    ) -> Result<SyncStats, ApplyError> {
        stats.rules_written = stats.rules_total;
        stats.bytes_written = bytes;
        if let Some(e) = failure {
            self.state = None;
            return Err(e);
        }
        self.stale.clear();
        self.state = Some(
            fams.into_iter()
                .map(|(f, fr)| FamilyState::new(f, fr, graph))
                .collect(),
        );
        fill_counts(&mut stats, graph);
        Ok(stats)
    }
}
