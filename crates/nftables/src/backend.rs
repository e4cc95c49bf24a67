//! [`NftablesBackend`]: generator + transport + the state between syncs,
//! behind the daemon's [`kproxy_graph::Backend`] trait; and [`supported`].
//!
//! - A **full sync** replaces both tables (`add table; delete table;
//!   add ...`). Up to [`NftablesBackend::max_elements_per_transaction`]
//!   elements that is one atomic transaction. A larger initial load is
//!   split into bounded transactions (the first one recreates the tables
//!   with every chain and rule; the following ones add elements, data maps
//!   before the verdict maps that route to them): `nft -f` needs about
//!   2.4 KB of memory per element, so one transaction of 50,000 services
//!   with 10 endpoints would need over 1 GB (docs/backends/nftables.md).
//! - An **incremental sync** regenerates only the service ports the
//!   [`ChangeSet`] names and diffs their old and new contributions
//!   ([`crate::diff`]): one transaction whose size depends on the change,
//!   not on the cluster.
//! - Every sync bumps a generation element in the `sync-generation` set;
//!   [`check`](Backend::check) reads, through netlink, every chain's rule
//!   count and every set's element count and compares them with what the
//!   last sync applied ([`crate::drift`]), then the generation: no `nft`
//!   process, no text, memory independent of the cluster's size.
//! - A failed transaction leaves the kernel as it was (nft transactions
//!   are atomic); the error carries nft's message and statement, and the
//!   next sync is full.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kproxy_graph::{
    ApplyError, Backend, BackendKind, ChangeSet, GenError, Generator, IpFamily, Render,
    ServiceGraph, ServicePortName, SyncStats,
};

use std::fmt::Write as _;

use crate::claims::{self, Claims, Winner};
use crate::diff::{self, diff_tables};
use crate::drift;
use crate::generate::{
    self, Ctx, FamilyRules, FastHash, LbChain, NftGenerator, ServiceRules, TABLE, lb_closure, sets,
};
use crate::ir::{ChunkWriter, Element, Family, Op, Table, Transaction};
use crate::nl_transport::NetlinkTransport;
use crate::transport::{self, Nft};
use kproxy_netlink::{self as netlink, NfSocket, TableSummary};
use std::cell::RefCell;

/// The default bound on elements per transaction for large full syncs.
pub const DEFAULT_MAX_ELEMENTS: usize = 50_000;

/// What kproxy last applied for one family.
#[derive(Debug, Clone)]
struct FamilyState {
    family: Family,
    rules: FamilyRules,
    /// How many service ports use each shared chain (closure included).
    lb_refs: BTreeMap<LbChain, usize>,
    /// Rules in the per-service chains (kept up to date so statistics
    /// never walk every service).
    chain_rules: usize,
    /// Who claims each key of the shared sets and maps.
    claims: Claims,
}

fn service_chain_rules(sr: &ServiceRules) -> usize {
    sr.chains.iter().map(|c| c.rules.len()).sum()
}

impl FamilyState {
    fn new(family: Family, rules: FamilyRules) -> Self {
        // Shared chains are counted per user, so each survives while any
        // service port needs it.
        let mut lb_refs = BTreeMap::new();
        for sr in rules.services.values() {
            for lb in lb_closure(&sr.lb) {
                *lb_refs.entry(lb).or_insert(0) += 1;
            }
        }
        let chain_rules = rules.services.values().map(service_chain_rules).sum();
        let claims = Claims::build(&rules.services);
        FamilyState {
            family,
            rules,
            lb_refs,
            chain_rules,
            claims,
        }
    }
}

/// An incremental sync's per-family outcome, committed to the state only
/// once the transaction succeeded: (family index, updated contributions,
/// new shared-chain reference counts).
type PendingFamily = (
    usize,
    Vec<(kproxy_graph::ServicePortName, Option<ServiceRules>)>,
    BTreeMap<LbChain, usize>,
    Option<Table>,
);

/// How the nftables backend's transactions reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// One nf_tables netlink batch per transaction ([`NetlinkTransport`]):
    /// no `nft` process. The default.
    #[default]
    Netlink,
    /// `nft -f -` ([`Nft`]).
    Exec,
}

impl TransportKind {
    /// The spelling of `--nftables-transport`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Netlink => "netlink",
            TransportKind::Exec => "exec",
        }
    }
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftablesBackend {
    nft: Nft,
    /// Set when transactions go over netlink rather than through `nft`.
    netlink: Option<RefCell<NetlinkTransport>>,
    /// The largest netlink batch sent so far, in bytes.
    peak_batch: std::cell::Cell<usize>,
    generator: NftGenerator,
    state: Option<Vec<FamilyState>>,
    generation: u32,
    /// Chains flushed by an earlier sync, to delete in a later one.
    stale: BTreeSet<(Family, String)>,
    /// What the kernel must hold after the sync of generation `.0`, as
    /// counts (computed by the first drift check after a sync).
    expected: Option<(u32, Vec<(Family, TableSummary)>)>,
    /// The netlink socket the drift check reads through (opened on first
    /// use, dropped after an error).
    sock: Option<NfSocket>,
    /// Sets up to this size are counted exactly by the drift check.
    exact_limit: usize,
    max_elements: usize,
    dry_run: bool,
}

impl Default for NftablesBackend {
    fn default() -> Self {
        NftablesBackend::new()
    }
}

impl NftablesBackend {
    /// The backend for this host's network namespace, with the default
    /// transport ([`TransportKind::default`]).
    pub fn new() -> Self {
        NftablesBackend::with_nft(Nft::host()).transport(TransportKind::default())
    }

    /// The backend for the named network namespace, with the default
    /// transport (`nft` runs as `ip netns exec NAME nft`).
    pub fn in_netns(name: &str) -> Self {
        NftablesBackend::with_nft(Nft::in_netns(name)).transport(TransportKind::default())
    }

    /// The backend sending through `nft` as given (the exec transport;
    /// [`NftablesBackend::transport`] switches).
    pub fn with_nft(nft: Nft) -> Self {
        NftablesBackend {
            nft,
            netlink: None,
            peak_batch: std::cell::Cell::new(0),
            generator: NftGenerator,
            state: None,
            generation: 0,
            stale: BTreeSet::new(),
            expected: None,
            sock: None,
            exact_limit: drift::EXACT_LIMIT,
            max_elements: DEFAULT_MAX_ELEMENTS,
            dry_run: false,
        }
    }

    /// Bound the elements of one transaction in a full sync (≥ 1000).
    pub fn max_elements_per_transaction(mut self, n: usize) -> Self {
        self.max_elements = n.max(1000);
        self
    }

    /// The drift check counts the elements of sets up to `n` elements and
    /// only checks larger ones for being non-empty (default
    /// [`drift::EXACT_LIMIT`]).
    pub fn drift_exact_limit(mut self, n: usize) -> Self {
        self.exact_limit = n;
        self
    }

    /// `--dry-run`: check every transaction with `nft -c` and apply nothing.
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = on;
        self
    }

    /// Send transactions through `kind`: over netlink (in the same network
    /// namespace as [`NftablesBackend::nft`]) or through `nft -f`.
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.netlink = match kind {
            TransportKind::Exec => None,
            TransportKind::Netlink => Some(RefCell::new(match self.nft.netns() {
                Some(ns) => NetlinkTransport::in_netns(ns),
                None => NetlinkTransport::host(),
            })),
        };
        self
    }

    /// The transport in use.
    pub fn transport_kind(&self) -> TransportKind {
        if self.netlink.is_some() {
            TransportKind::Netlink
        } else {
            TransportKind::Exec
        }
    }

    /// The largest netlink batch this backend sent, in bytes (0 with the
    /// exec transport).
    pub fn peak_batch_bytes(&self) -> usize {
        self.peak_batch.get()
    }

    /// The `nft` program (reads, and the exec transport).
    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    fn send(&self, tx: &Transaction) -> Result<(), ApplyError> {
        self.send_counted(tx).map(|_| ())
    }

    /// Apply (or, in a dry run, check) one transaction; the bytes sent.
    /// Over netlink a dry run compiles the batch and sends nothing.
    fn send_counted(&self, tx: &Transaction) -> Result<usize, ApplyError> {
        if let Some(nl) = &self.netlink {
            let mut nl = nl.borrow_mut();
            if self.dry_run {
                let c = nl.compile(tx)?;
                return Ok(c.chunks.iter().map(Vec::len).sum());
            }
            nl.apply(tx)?;
            let n = nl.last_batch_bytes();
            self.peak_batch.set(self.peak_batch.get().max(n));
            return Ok(n);
        }
        let text = tx.render();
        if self.dry_run {
            self.nft.check(&text)?;
        } else {
            self.nft.apply(&text)?;
        }
        Ok(text.len())
    }

    fn generation_ops(&self, tx: &mut Transaction, families: &[Family]) {
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
    fn full_sync(&mut self, graph: &ServiceGraph) -> Result<SyncStats, ApplyError> {
        let fams = generate::generate_families(graph).map_err(gen_err)?;
        let elements: usize = fams
            .iter()
            .map(|(_, fr)| fr.services.values().map(|s| s.elems.len()).sum::<usize>())
            .sum();
        if elements > self.max_elements
            && !self.dry_run
            && let Some((changes, skeletons)) = self.reassert_plan(&fams)
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

    /// The changes between what was applied and `fams`, when they can be
    /// applied as a diff (same families, same masquerade mark).
    fn reassert_plan(
        &self,
        fams: &[(Family, FamilyRules)],
    ) -> Option<(ChangeSet, Vec<(Family, Table)>)> {
        let state = self.state.as_ref()?;
        if state.len() != fams.len() {
            return None;
        }
        let mut changes = ChangeSet::default();
        let mut skeletons = Vec::new();
        for ((f, fr), fs) in fams.iter().zip(state) {
            if *f != fs.family || fr.mark != fs.rules.mark {
                return None;
            }
            let mut fc = kproxy_graph::FamilyChanges::default();
            for (name, sr) in &fr.services {
                match fs.rules.services.get(name) {
                    None => {
                        fc.added.insert(name.clone());
                    }
                    Some(old) if old != sr => {
                        fc.changed.insert(name.clone());
                    }
                    Some(_) => {}
                }
            }
            for name in fs.rules.services.keys() {
                if !fr.services.contains_key(name) {
                    fc.removed.insert(name.clone());
                }
            }
            let ipf = match f {
                Family::Ip => kproxy_graph::IpFamily::V4,
                Family::Ip6 => kproxy_graph::IpFamily::V6,
            };
            changes.families.insert(ipf, fc);
            skeletons.push((*f, fr.skeleton.clone()));
        }
        Some((changes, skeletons))
    }

    /// Replace both tables (`add table; delete table;` then everything),
    /// in bounded transactions when large.
    fn replace(
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
        if !self.dry_run {
            for (f, keys) in self.carried_affinity(&fams) {
                gen_tx.add_elements(
                    f,
                    TABLE,
                    sets::AFFINITY,
                    keys.into_iter().map(|k| (k, Element::default())),
                );
            }
        }
        self.generation_ops(&mut gen_tx, &families);
        // `nft -c` of a later part would not see the earlier parts'
        // objects, so a dry run checks one transaction.
        let max = if self.dry_run {
            usize::MAX
        } else {
            self.max_elements
        };
        if self.netlink.is_some() {
            let mut failure: Option<ApplyError> = None;
            let mut bytes = 0usize;
            let this = &*self;
            let mut sink = |tx: Transaction| {
                if failure.is_some() {
                    return;
                }
                match this.send_counted(&tx) {
                    Ok(n) => bytes += n,
                    Err(e) => failure = Some(e),
                }
            };
            let mut w = ChunkWriter::streaming_ops(max, &mut sink);
            for (_, fr) in &fams {
                fr.render_full(&mut w);
                stats.rules_total += fr.assemble_rule_count();
            }
            for (f, t, op) in &gen_tx.ops {
                w.op(*f, t, op);
            }
            w.finish();
            return self.replaced(graph, fams, stats, bytes, failure);
        }
        let (nft, dry_run) = (&self.nft, self.dry_run);
        let mut failure: Option<ApplyError> = None;
        let mut bytes = 0usize;
        let mut sink = |text: String| {
            if failure.is_some() {
                return;
            }
            bytes += text.len();
            let res = if dry_run {
                nft.check(&text)
            } else {
                nft.apply(&text)
            };
            if let Err(e) = res {
                failure = Some(e);
            }
        };
        let mut w = ChunkWriter::streaming(max, &mut sink);
        for (_, fr) in &fams {
            fr.render_full(&mut w);
            stats.rules_total += fr.assemble_rule_count();
        }
        for (f, t, op) in &gen_tx.ops {
            w.op(*f, t, op);
        }
        w.finish();
        self.replaced(graph, fams, stats, bytes, failure)
    }

    /// The end of [`NftablesBackend::replace`]: the new state, or none
    /// after a failure.
    fn replaced(
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
                .map(|(f, fr)| FamilyState::new(f, fr))
                .collect(),
        );
        fill_counts(&mut stats, graph);
        Ok(stats)
    }

    fn incremental_sync(
        &mut self,
        graph: &ServiceGraph,
        changes: &ChangeSet,
        skeletons: Option<&[(Family, Table)]>,
    ) -> Result<SyncStats, ApplyError> {
        // Chains flushed by an earlier sync go first, in their own
        // transaction; a failure here only delays their removal.
        if !self.stale.is_empty() && !self.dry_run {
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
                .filter(|t| **t != fs.rules.skeleton);
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
                let plan =
                    diff_tables(&fs.rules.skeleton, skel).map_err(|e| ApplyError::Other {
                        backend: "nftables",
                        message: e.to_string(),
                    })?;
                tx.extend(plan.tx);
                stale.extend(plan.stale_chains.into_iter().map(|c| (fs.family, c)));
                added.extend(plan.added_chains.into_iter().map(|c| (fs.family, c)));
            }
            let mut old_part = partial_table(&fs.rules.skeleton);
            let mut new_part = partial_table(&fs.rules.skeleton);
            let mut refs = fs.lb_refs.clone();
            let mut touched: BTreeSet<LbChain> = BTreeSet::new();
            let mut updates = Vec::new();
            for name in fc.removed.iter().chain(fc.changed.iter()) {
                if let Some(sr) = fs.rules.services.get(name) {
                    add_chains(&mut old_part, sr);
                    for lb in lb_closure(&sr.lb) {
                        touched.insert(lb);
                        if let Some(n) = refs.get_mut(&lb) {
                            *n = n.saturating_sub(1);
                        }
                    }
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
            let new_skel = new_skeleton.unwrap_or(&fs.rules.skeleton);
            shared_elements(fs, &updates, new_skel, &mut old_part, &mut new_part);
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
            let plan = diff_tables(&old_part, &new_part).map_err(|e| ApplyError::Other {
                backend: "nftables",
                message: e.to_string(),
            })?;
            tx.extend(plan.tx);
            stale.extend(plan.stale_chains.into_iter().map(|c| (fs.family, c)));
            added.extend(plan.added_chains.into_iter().map(|c| (fs.family, c)));
            new_state.push((idx, updates, refs, new_skeleton.cloned()));
        }
        // Affinity ids of endpoints that go away: their clients' entries
        // are removed after the transaction, as kube-proxy deletes an
        // endpoint's affinity set with its chain (a returning endpoint
        // starts with no clients).
        let mut purge: Vec<(Family, BTreeSet<(u32, u32)>)> = Vec::new();
        for (idx, updates, _, _) in &new_state {
            let fs = &state[*idx];
            let mut gone = BTreeSet::new();
            for (name, sr) in updates {
                if let Some(old) = fs.rules.services.get(name) {
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
        if self.dry_run {
            return Ok(stats);
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(stats);
        };
        for (idx, updates, refs, skeleton) in new_state {
            let fs = &mut state[idx];
            if let Some(skel) = skeleton {
                fs.rules.skeleton = skel;
            }
            for (name, sr) in updates {
                let new_rules = sr.as_ref().map_or(0, service_chain_rules);
                if let Some(old) = fs.rules.services.get(&name) {
                    fs.claims.remove(&name, old);
                }
                if let Some(sr) = &sr {
                    fs.claims.add(&name, sr);
                }
                let old = match sr {
                    Some(sr) => fs.rules.services.insert(name, sr),
                    None => fs.rules.services.remove(&name),
                };
                fs.chain_rules = fs.chain_rules + new_rules
                    - old
                        .as_ref()
                        .map_or(0, service_chain_rules)
                        .min(fs.chain_rules + new_rules);
            }
            fs.lb_refs = refs;
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
                    .map(|fs| fs.rules.skeleton.rule_count() + fs.chain_rules + fs.lb_refs.len())
                    .sum()
            })
            .unwrap_or(0);
        fill_counts(&mut stats, graph);
        Ok(stats)
    }
}

impl NftablesBackend {
    /// What differs between the kernel and the last sync, read through
    /// netlink as counts ([`crate::drift`]): `None` when nothing does.
    /// Nothing applied (no sync yet, or the last one failed) is reported
    /// as a difference too: there is nothing to compare with.
    fn drift(&mut self) -> Result<Option<String>, ApplyError> {
        let Some(state) = self.state.as_ref() else {
            return Ok(Some("nothing applied".into()));
        };
        if self
            .expected
            .as_ref()
            .is_none_or(|(g, _)| *g != self.generation)
        {
            let summaries = state
                .iter()
                .map(|fs| {
                    let mut s = drift::expected(&fs.rules, fs.lb_refs.keys());
                    // The one element each sync writes.
                    if let Some(g) = s.sets.get_mut(sets::GENERATION) {
                        g.elements = 1;
                    }
                    (fs.family, s)
                })
                .collect();
            self.expected = Some((self.generation, summaries));
        }
        let sock = match self.sock.as_mut() {
            Some(s) => s,
            None => {
                let s = match self.nft.netns() {
                    Some(ns) => NfSocket::open_in_netns(ns),
                    None => NfSocket::open(),
                }
                .map_err(netlink_err)?;
                self.sock.insert(s)
            }
        };
        let Some((_, expected)) = self.expected.as_ref() else {
            return Ok(None);
        };
        for (f, want) in expected {
            let exact = |set: &str| {
                want.sets
                    .get(set)
                    .is_some_and(|s| s.elements <= self.exact_limit)
            };
            let Some(got) =
                netlink::read_table(sock, (*f).into(), TABLE, &exact).map_err(netlink_err)?
            else {
                return Ok(Some(format!("table {} {TABLE} is gone", f.as_str())));
            };
            let flushed: Vec<&str> = self
                .stale
                .iter()
                .filter(|(sf, _)| sf == f)
                .map(|(_, c)| c.as_str())
                .collect();
            let diffs = drift::compare(*f, want, &got, &flushed);
            if !diffs.is_empty() {
                return Ok(Some(diffs.join("; ")));
            }
            // Same counts: still the generation kproxy wrote last (another
            // writer's reload would show another one).
            let keys = netlink::set_keys(sock, (*f).into(), TABLE, sets::GENERATION)
                .map_err(netlink_err)?;
            let want_key = self.generation.to_ne_bytes();
            if keys.len() != 1 || keys[0] != want_key {
                return Ok(Some(format!(
                    "set {} {} holds another generation than {:#x}",
                    f.as_str(),
                    sets::GENERATION,
                    self.generation
                )));
            }
        }
        Ok(None)
    }
}

fn netlink_err(e: netlink::Error) -> ApplyError {
    ApplyError::Other {
        backend: "nftables",
        message: format!("reading the kernel's tables: {e}"),
    }
}

impl NftablesBackend {
    /// Before the tables are replaced: the affinity entries in the kernel
    /// whose endpoint is still in `fams`, as keys with their remaining
    /// time (`client . hi . lo timeout Ns`), so a restart or a resync
    /// after drift keeps every client on its endpoint as kube-proxy does.
    /// Nothing when there is no table yet.
    fn carried_affinity(&self, fams: &[(Family, FamilyRules)]) -> Vec<(Family, Vec<String>)> {
        let mut out = Vec::new();
        for (f, fr) in fams {
            let ids: BTreeSet<(u32, u32)> = fr
                .services
                .values()
                .flat_map(|sr| sr.affinity_ids.iter().copied())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let Ok(listing) = self.affinity_read(*f) else {
                continue;
            };
            let keys: Vec<String> = listing
                .into_iter()
                .filter(|e| ids.contains(&e.id))
                .filter_map(|e| match e.expires {
                    Some(s) if s > 0 => Some(format!("{} timeout {s}s", e.key())),
                    _ => None,
                })
                .collect();
            if !keys.is_empty() {
                out.push((*f, keys));
            }
        }
        out
    }

    /// Remove the `affinity` entries whose endpoint id is in `ids`; returns
    /// how many. The kernel adds and expires entries on its own, so the
    /// listing can be stale by the time the delete arrives (an entry
    /// expired in between fails the delete): one retry with a fresh
    /// listing.
    fn purge_affinity(
        &self,
        family: Family,
        ids: &BTreeSet<(u32, u32)>,
    ) -> Result<usize, ApplyError> {
        let mut last = None;
        for _ in 0..2 {
            let keys: Vec<String> = self
                .affinity_read(family)?
                .into_iter()
                .filter(|e| ids.contains(&e.id))
                .map(|e| e.key())
                .collect();
            if keys.is_empty() {
                return Ok(0);
            }
            if let Some(nl) = &self.netlink {
                let mut tx = Transaction::new();
                tx.delete_elements(family, TABLE, sets::AFFINITY, keys.iter().cloned());
                match nl.borrow_mut().apply(&tx) {
                    Ok(()) => return Ok(keys.len()),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            let mut text = String::new();
            for chunk in keys.chunks(1000) {
                let _ = writeln!(
                    text,
                    "delete element {} {TABLE} {} {{ {} }}",
                    family.as_str(),
                    sets::AFFINITY,
                    chunk.join(", ")
                );
            }
            match self.nft.apply(&text) {
                Ok(()) => return Ok(keys.len()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ApplyError::Other {
            backend: "nftables",
            message: "affinity purge failed".into(),
        }))
    }
}

impl NftablesBackend {
    /// The `affinity` set's entries: over netlink with the netlink
    /// transport (no `nft` needed), else from `nft -j list set`.
    fn affinity_read(&self, family: Family) -> Result<Vec<AffinityEntry>, ApplyError> {
        if self.netlink.is_none() {
            let json = self.nft.run(
                &["-j", "list", "set", family.as_str(), TABLE, sets::AFFINITY],
                None,
            )?;
            return Ok(affinity_listing(&json));
        }
        let mut sock = match self.nft.netns() {
            Some(ns) => NfSocket::open_in_netns(ns),
            None => NfSocket::open(),
        }
        .map_err(netlink_err)?;
        let elems = netlink::set_elements_expiring(&mut sock, family.into(), TABLE, sets::AFFINITY)
            .map_err(netlink_err)?;
        let addr_len = match family {
            Family::Ip => 4,
            Family::Ip6 => 16,
        };
        Ok(elems
            .into_iter()
            .filter_map(|(k, exp)| {
                if k.len() != addr_len + 8 {
                    return None;
                }
                let client = match family {
                    Family::Ip => {
                        std::net::IpAddr::from(<[u8; 4]>::try_from(&k[..4]).ok()?).to_string()
                    }
                    Family::Ip6 => {
                        std::net::IpAddr::from(<[u8; 16]>::try_from(&k[..16]).ok()?).to_string()
                    }
                };
                let word = |at: usize| {
                    <[u8; 4]>::try_from(&k[at..at + 4])
                        .ok()
                        .map(u32::from_ne_bytes)
                };
                Some(AffinityEntry {
                    client,
                    id: (word(addr_len)?, word(addr_len + 4)?),
                    expires: exp.map(|ms| ms / 1000),
                })
            })
            .collect())
    }
}

/// One entry of the `affinity` set as `nft -j list set` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AffinityEntry {
    client: String,
    id: (u32, u32),
    /// Seconds left before it expires.
    expires: Option<u64>,
}

impl AffinityEntry {
    fn key(&self) -> String {
        format!("{} . {} . {}", self.client, self.id.0, self.id.1)
    }
}

/// The entries of an `nft -j list set` of the affinity set (nothing on
/// output it cannot read: the entries only ever matter as a courtesy).
fn affinity_listing(json: &str) -> Vec<AffinityEntry> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let objects = v.get("nftables").and_then(|n| n.as_array());
    for obj in objects.into_iter().flatten() {
        let Some(elems) = obj.pointer("/set/elem").and_then(|e| e.as_array()) else {
            continue;
        };
        for e in elems {
            // With timeouts an element is `{"elem": {"val": ...}}`.
            let val = e.pointer("/elem/val").unwrap_or(e);
            let Some([client, hi, lo]) = val
                .get("concat")
                .and_then(|c| c.as_array())
                .map(|c| c.as_slice())
            else {
                continue;
            };
            let (Some(client), Some(hi), Some(lo)) = (client.as_str(), hi.as_u64(), lo.as_u64())
            else {
                continue;
            };
            let (Ok(hi), Ok(lo)) = (u32::try_from(hi), u32::try_from(lo)) else {
                continue;
            };
            out.push(AffinityEntry {
                client: client.to_string(),
                id: (hi, lo),
                expires: e.pointer("/elem/expires").and_then(|x| x.as_u64()),
            });
        }
    }
    out
}

/// The keys (`client . hi . lo`) of the listed entries whose id is in `ids`.
#[cfg(test)]
fn affinity_entries(json: &str, ids: &BTreeSet<(u32, u32)>) -> Vec<String> {
    affinity_listing(json)
        .into_iter()
        .filter(|e| ids.contains(&e.id))
        .map(|e| e.key())
        .collect()
}

/// Add the per-service chains of a contribution to a partial table (their
/// names are unique to the service port).
fn add_chains(t: &mut Table, sr: &ServiceRules) {
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
fn shared_elements(
    fs: &FamilyState,
    updates: &[(ServicePortName, Option<ServiceRules>)],
    new_skeleton: &Table,
    old_part: &mut Table,
    new_part: &mut Table,
) {
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
    let olds = updates.iter().filter_map(|(n, _)| fs.rules.services.get(n));
    let news = updates.iter().filter_map(|(_, sr)| sr.as_ref());
    for sr in olds.chain(news) {
        for e in &sr.elems {
            keys.insert((e.set, e.key()));
        }
    }
    let services = &fs.rules.services;
    for (set, key) in keys {
        let recorded = fs.claims.claimants(set, key);
        let before = claims::winner(
            &fs.rules.skeleton,
            set,
            key,
            recorded
                .iter()
                .filter_map(|(n, at)| services.get_key_value(*n).map(|(n, sr)| (n, sr, *at))),
        );
        let unchanged = recorded
            .iter()
            .filter(|(n, _)| !changed.contains(n))
            .filter_map(|(n, at)| services.get_key_value(*n).map(|(n, sr)| (n, sr, *at)));
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
}

/// A table with the skeleton's set declarations (no elements, no chains):
/// the frame partial contributions are assembled into.
fn partial_table(skeleton: &Table) -> Table {
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

fn fill_counts(stats: &mut SyncStats, graph: &ServiceGraph) {
    stats.services = graph.families.values().map(|f| f.services.len()).sum();
    stats.endpoints = graph.families.values().map(|f| f.total_endpoints()).sum();
}

fn gen_err(e: GenError) -> ApplyError {
    ApplyError::Other {
        backend: "nftables",
        message: e.to_string(),
    }
}

impl Backend for NftablesBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nftables
    }

    fn render_full(&self, graph: &ServiceGraph) -> Result<String, GenError> {
        Ok(self.generator.generate(graph)?.render())
    }

    fn sync(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        match changes {
            // A dry run applies nothing, so there is no kernel state to
            // diff against: every dry-run sync checks a full load.
            Some(c) if self.state.is_some() && !c.needs_full_sync && !self.dry_run => {
                // Changed service CIDRs: the new skeletons, whose diff is
                // element updates of the `service-cidrs` set.
                let skeletons = if c.service_cidrs_changed {
                    Some(generate::skeletons(graph))
                } else {
                    None
                };
                self.incremental_sync(graph, c, skeletons.as_deref())
            }
            _ => self.full_sync(graph),
        }
    }

    fn check(&mut self) -> Result<bool, ApplyError> {
        match self.drift() {
            Ok(None) => Ok(true),
            Ok(Some(what)) => {
                tracing::warn!(backend = "nftables", differences = %what,
                    "the kernel's kproxy tables differ from the last sync");
                // What kproxy applied is no longer what the kernel has: the
                // next sync must reload, not diff against the stale state.
                self.state = None;
                Ok(false)
            }
            Err(e) => {
                self.sock = None;
                Err(e)
            }
        }
    }

    fn last_applied(&self) -> Option<String> {
        let state = self.state.as_ref()?;
        let mut w = ChunkWriter::new(usize::MAX);
        for fs in state {
            fs.rules.render_full(&mut w);
        }
        // Without an element bound there is one text: move it rather than
        // copy it, trimmed to its length, since the daemon keeps it (about
        // 50 MB at 50,000 Services).
        let mut texts = w.finish();
        let mut text = match texts.len() {
            1 => texts.pop().unwrap_or_default(),
            _ => texts.concat(),
        };
        text.shrink_to_fit();
        Some(text)
    }

    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
        self.state = None;
        self.stale.clear();
        let mut errors = Vec::new();
        for table in [TABLE, KUBE_PROXY_TABLE] {
            for f in [Family::Ip, Family::Ip6] {
                // `add` first so that `delete` cannot fail on a missing table.
                let mut tx = Transaction::new();
                tx.push(f, table, Op::AddTable { comment: None });
                tx.push(f, table, Op::DeleteTable);
                let res = match &self.netlink {
                    Some(nl) => nl.borrow_mut().apply(&tx),
                    None => self.nft.apply(&tx.render()),
                };
                if let Err(e) = res {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn cleanup_foreign(&mut self) -> Result<(), Vec<ApplyError>> {
        let mut errors = Vec::new();
        for f in [Family::Ip, Family::Ip6] {
            let family = f.as_str();
            // `list` first: deleting a missing table is an error not worth
            // reporting.
            if self
                .nft
                .run(&["list", "table", family, KUBE_PROXY_TABLE], None)
                .is_err()
            {
                continue;
            }
            match self
                .nft
                .run(&["delete", "table", family, KUBE_PROXY_TABLE], None)
            {
                Ok(_) => {
                    tracing::info!(table = %format!("{family} {KUBE_PROXY_TABLE}"),
                        "removed kube-proxy's nftables table");
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn dump_live(&mut self, family: IpFamily) -> Result<Option<String>, ApplyError> {
        let f = Family::from(family);
        match self.nft.list_table(f.as_str(), TABLE) {
            Ok(text) => Ok(Some(text)),
            Err(ApplyError::Rejected { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// kube-proxy's nftables mode's table (in both families).
const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// Why nftables mode cannot run here (upstream's checks:
/// `getNFTablesInterface` in pkg/proxy/nftables/supported.go).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// The kernel is older than 5.13.
    #[error("kernel {0} is older than 5.13")]
    Kernel(String),
    /// `nft` is older than 1.0.1.
    #[error("nft {0}.{1}.{2} is older than 1.0.1")]
    Nft(u32, u32, u32),
    /// `nft` or the kernel version could not be read.
    #[error("{0}")]
    Probe(String),
}

/// Whether this host can run the nftables backend: kernel ≥ 5.13 (skipped
/// when `KUBE_PROXY_NFTABLES_SKIP_KERNEL_VERSION_CHECK` is set, as
/// upstream) and, with the exec transport, `nft` ≥ 1.0.1.
pub fn supported() -> Result<(), Unsupported> {
    supported_for(TransportKind::default())
}

/// [`supported`] for a given transport.
pub fn supported_for(kind: TransportKind) -> Result<(), Unsupported> {
    match kind {
        TransportKind::Netlink => kernel_supported(),
        TransportKind::Exec => supported_with(&Nft::host()),
    }
}

/// [`supported`] with a given `nft`.
pub fn supported_with(nft: &Nft) -> Result<(), Unsupported> {
    kernel_supported()?;
    let v = nft
        .version()
        .map_err(|e| Unsupported::Probe(e.to_string()))?;
    if v < (1, 0, 1) {
        return Err(Unsupported::Nft(v.0, v.1, v.2));
    }
    Ok(())
}

/// The kernel part of [`supported`] (all the netlink transport needs).
pub fn kernel_supported() -> Result<(), Unsupported> {
    let skip = std::env::var_os("KUBE_PROXY_NFTABLES_SKIP_KERNEL_VERSION_CHECK")
        .is_some_and(|v| !v.is_empty());
    if !skip {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_err(|e| Unsupported::Probe(format!("reading the kernel version: {e}")))?;
        let release = release.trim().to_string();
        let v = transport::parse_dotted(&release).ok_or_else(|| {
            Unsupported::Probe(format!("cannot parse kernel version {release:?}"))
        })?;
        if v < (5, 13, 0) {
            return Err(Unsupported::Kernel(release));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_entries_of_removed_endpoints() {
        // `nft -j list set ip kproxy affinity` (nft 1.0.6), IPv4 and IPv6.
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip", "name": "affinity", "table": "kproxy", "type": ["ipv4_addr", "integer", "integer"], "flags": ["timeout"], "elem": [{"elem": {"val": {"concat": ["10.0.0.2", 5, 6]}, "timeout": 3600, "expires": 3599}}, {"elem": {"val": {"concat": ["10.0.0.3", 4000000000, 7]}, "timeout": 3600, "expires": 3599}}, {"elem": {"val": {"concat": ["fd00::2", 5, 6]}, "timeout": 60}}]}}]}"#;
        let ids: BTreeSet<(u32, u32)> = [(5, 6), (9, 9)].into();
        assert_eq!(
            affinity_entries(out, &ids),
            vec!["10.0.0.2 . 5 . 6", "fd00::2 . 5 . 6"]
        );
        let ids: BTreeSet<(u32, u32)> = [(4_000_000_000, 7)].into();
        assert_eq!(
            affinity_entries(out, &ids),
            vec!["10.0.0.3 . 4000000000 . 7"]
        );
        assert!(affinity_entries("not json", &ids).is_empty());
        assert!(affinity_entries(r#"{"nftables": []}"#, &ids).is_empty());
    }
}
