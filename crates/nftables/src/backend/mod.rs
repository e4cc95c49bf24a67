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
//!   not on the cluster. The state between syncs keeps no contribution:
//!   it keeps each applied service port (without what the generator does
//!   not read) and its generation context, and generates an old
//!   contribution again when a sync needs it.
//! - Every sync bumps a generation element in the `sync-generation` set;
//!   [`check`](Backend::check) reads, through netlink, every chain's rule
//!   count and every set's element count and compares them with what the
//!   last sync applied ([`crate::drift`]), then the generation: no `nft`
//!   process, no text, memory independent of the cluster's size.
//! - A failed transaction leaves the kernel as it was (nft transactions
//!   are atomic); the error carries nft's message and statement, and the
//!   next sync is full.

use std::collections::{BTreeMap, BTreeSet};

use kproxy_graph::{
    ApplyError, Backend, BackendKind, ChangeSet, FamilyGraph, GenError, Generator, IpFamily,
    Render, ServiceGraph, ServicePort, ServicePortName, SyncStats, Transport,
};

use crate::claims::Claims;
use crate::drift;
use crate::generate::{
    self, Ctx, FamilyRules, LbChain, NftGenerator, ServiceRules, TABLE, lb_closure,
};
use crate::ir::{ChunkWriter, Family, Op, Table, Transaction};
use crate::nl_transport::NetlinkTransport;
use crate::transport::Nft;
use kproxy_netlink::{self as netlink, NfSocket, TableSummary};

mod affinity;
mod check;
mod full;
mod incremental;
mod supported;

pub use supported::{Unsupported, kernel_supported, supported, supported_for, supported_with};

/// The default bound on elements per transaction for large full syncs.
pub const DEFAULT_MAX_ELEMENTS: usize = 50_000;

/// What kproxy last applied for one family: the skeleton, and for each
/// service port what its contribution was generated from (not the
/// contribution: its element texts, chains and rules took about 80 MB at
/// 50,000 Services). The generator is a pure function of a service port
/// and the family's node-wide context, so a contribution generated again
/// from these is the one applied: an incremental sync generates the old
/// contributions of the ports it changes, `last_applied` and the drift
/// check generate them all.
#[derive(Debug, Clone)]
struct FamilyState {
    family: Family,
    /// Base and helper chains, shared sets and maps with their own
    /// elements.
    skeleton: Table,
    /// The masquerade mark the contributions were generated with.
    mark: u32,
    /// `masqueradeAll`, likewise.
    masquerade_all: bool,
    /// The node-wide part of the family graph they were generated with
    /// (no service ports).
    header: FamilyGraph,
    /// Each applied service port, as [`applied_port`] keeps it.
    ports: BTreeMap<ServicePortName, ServicePort>,
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

/// The node-wide part of a family graph: what a service port's
/// contribution reads besides the port.
fn family_header(fg: &FamilyGraph) -> FamilyGraph {
    let mut h = FamilyGraph::empty(fg.family);
    h.node_ips = fg.node_ips.clone();
    h.local_traffic = fg.local_traffic.clone();
    h.nodeport_ips = fg.nodeport_ips.clone();
    h.localhost_nodeports = fg.localhost_nodeports;
    h.service_cidrs = fg.service_cidrs.clone();
    h
}

/// A service port as the state keeps it: without what the generator
/// never reads (the list of all endpoints, `trafficDistribution`, the
/// reachable endpoints that are not local ones of its family, which only
/// hairpin elements read). Its contribution is the full port's (a test
/// checks it); two ports equal in this form have equal contributions.
fn applied_port(sp: &ServicePort, family: IpFamily) -> ServicePort {
    let mut p = sp.clone();
    p.endpoints = Vec::new();
    p.traffic_distribution = None;
    p.reachable_endpoints
        .retain(|e| e.is_local && IpFamily::of(&e.ip) == family);
    p.reachable_endpoints.shrink_to_fit();
    p
}

fn ip_family(f: Family) -> IpFamily {
    match f {
        Family::Ip => IpFamily::V4,
        Family::Ip6 => IpFamily::V6,
    }
}

impl FamilyState {
    /// The state after applying `rules`, generated from `graph`.
    fn new(family: Family, rules: FamilyRules, graph: &ServiceGraph) -> Self {
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
        let FamilyRules {
            skeleton,
            services,
            mark,
        } = rules;
        // The contributions go before the ports are copied.
        drop(services);
        let ipf = ip_family(family);
        let (header, ports) = match graph.family(ipf) {
            Some(fg) => (
                family_header(fg),
                fg.services
                    .iter()
                    .map(|(n, sp)| (n.clone(), applied_port(sp, ipf)))
                    .collect(),
            ),
            None => (FamilyGraph::empty(ipf), BTreeMap::new()),
        };
        FamilyState {
            family,
            skeleton,
            mark,
            masquerade_all: graph.config.masquerade_all,
            header,
            ports,
            lb_refs,
            chain_rules,
            claims,
        }
    }

    /// The generation context the applied contributions were made in.
    fn ctx(&self) -> Ctx<'_> {
        Ctx::from_parts(&self.header, self.mark, self.masquerade_all)
    }

    /// Whether `graph`'s family `fg` generates contributions in the same
    /// context as the applied ones.
    fn same_ctx(&self, graph: &ServiceGraph, fg: &FamilyGraph) -> bool {
        self.mark == graph.masquerade_mark()
            && self.masquerade_all == graph.config.masquerade_all
            && self.header == family_header(fg)
    }

    /// The applied contribution of `name`, generated again (`None` when
    /// it has none).
    fn contribution(&self, name: &ServicePortName) -> Result<Option<ServiceRules>, ApplyError> {
        match self.ports.get(name) {
            Some(sp) => Ok(Some(
                generate::service_rules(&self.ctx(), sp).map_err(gen_err)?,
            )),
            None => Ok(None),
        }
    }

    /// Every applied contribution, generated again, in service-port order.
    fn contributions(&self) -> impl Iterator<Item = Result<ServiceRules, ApplyError>> + '_ {
        let ctx = self.ctx();
        self.ports
            .values()
            .map(move |sp| generate::service_rules(&ctx, sp).map_err(gen_err))
    }

    /// What was applied, generated again.
    fn rules(&self) -> Result<FamilyRules, ApplyError> {
        let ctx = self.ctx();
        let services = self
            .ports
            .iter()
            .map(|(n, sp)| {
                Ok((
                    n.clone(),
                    generate::service_rules(&ctx, sp).map_err(gen_err)?,
                ))
            })
            .collect::<Result<_, ApplyError>>()?;
        Ok(FamilyRules {
            skeleton: self.skeleton.clone(),
            services,
            mark: self.mark,
        })
    }
}

/// An incremental sync's per-family outcome, committed to the state only
/// once the transaction succeeded: (family index, updated contributions,
/// the old contributions of the updated ports that had one, new
/// shared-chain reference counts, new skeleton).
type PendingFamily = (
    usize,
    Vec<(kproxy_graph::ServicePortName, Option<ServiceRules>)>,
    std::collections::HashMap<ServicePortName, ServiceRules>,
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

/// The transport a backend sends every transaction through, chosen when
/// it is built.
#[derive(Debug, Clone)]
pub enum NftTransport {
    /// `nft -f -`.
    Exec(Nft),
    /// One nf_tables netlink batch per transaction.
    Netlink(NetlinkTransport),
}

impl NftTransport {
    /// The transport `kind` in the network namespace `nft` runs in.
    pub fn new(kind: TransportKind, nft: &Nft) -> Self {
        match kind {
            TransportKind::Exec => NftTransport::Exec(nft.clone()),
            TransportKind::Netlink => NftTransport::Netlink(match nft.netns() {
                Some(ns) => NetlinkTransport::in_netns(ns),
                None => NetlinkTransport::host(),
            }),
        }
    }

    /// Which transport this is.
    pub fn kind(&self) -> TransportKind {
        match self {
            NftTransport::Exec(_) => TransportKind::Exec,
            NftTransport::Netlink(_) => TransportKind::Netlink,
        }
    }

    /// Apply `tx`; the bytes sent (script or batch).
    pub fn send(&mut self, tx: &Transaction) -> Result<usize, ApplyError> {
        match self {
            NftTransport::Exec(nft) => {
                let text = tx.render();
                Nft::apply(nft, &text)?;
                Ok(text.len())
            }
            NftTransport::Netlink(nl) => {
                nl.apply(tx)?;
                Ok(nl.last_batch_bytes())
            }
        }
    }

    /// Apply `tx`, over netlink on a thread of its own while the caller
    /// goes on ([`NetlinkTransport::send_pipelined`]): the error returned
    /// may be the previous transaction's. [`NftTransport::wait`] ends it.
    pub fn send_pipelined(&mut self, tx: Transaction) -> Result<usize, ApplyError> {
        match self {
            NftTransport::Exec(_) => self.send(&tx),
            NftTransport::Netlink(nl) => nl.send_pipelined(tx),
        }
    }

    /// Wait for a pipelined transaction still being applied.
    pub fn wait(&mut self) -> Result<(), ApplyError> {
        match self {
            NftTransport::Exec(_) => Ok(()),
            NftTransport::Netlink(nl) => nl.wait(),
        }
    }
}

impl Transport for NftTransport {
    type Payload = Transaction;

    fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        self.send(tx).map(|_| ())
    }
}

/// The nftables backend.
#[derive(Debug)]
pub struct NftablesBackend {
    /// `nft`, for the reads only it does (`dump_live`, and the affinity
    /// listing with the exec transport).
    nft: Nft,
    /// Where every transaction goes.
    transport: NftTransport,
    /// The largest netlink batch sent so far, in bytes.
    peak_batch: usize,
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
            transport: NftTransport::Exec(nft.clone()),
            nft,
            peak_batch: 0,
            generator: NftGenerator,
            state: None,
            generation: 0,
            stale: BTreeSet::new(),
            expected: None,
            sock: None,
            exact_limit: drift::EXACT_LIMIT,
            max_elements: DEFAULT_MAX_ELEMENTS,
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

    /// Send transactions through `kind`: over netlink (in the same network
    /// namespace as [`NftablesBackend::nft`]) or through `nft -f`.
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = NftTransport::new(kind, &self.nft);
        self
    }

    /// The transport in use.
    pub fn transport_kind(&self) -> TransportKind {
        self.transport.kind()
    }

    /// The largest netlink batch this backend sent, in bytes (0 with the
    /// exec transport).
    pub fn peak_batch_bytes(&self) -> usize {
        self.peak_batch
    }

    /// The `nft` program (reads, and the exec transport).
    pub fn nft(&self) -> &Nft {
        &self.nft
    }

    fn send(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        self.send_counted(tx).map(|_| ())
    }

    /// Apply one transaction; the bytes sent.
    fn send_counted(&mut self, tx: &Transaction) -> Result<usize, ApplyError> {
        send_via(&mut self.transport, &mut self.peak_batch, tx)
    }
}

/// One transaction through `transport`; the bytes sent, the largest
/// batch kept in `peak`.
fn send_via(
    transport: &mut NftTransport,
    peak: &mut usize,
    tx: &Transaction,
) -> Result<usize, ApplyError> {
    let n = transport.send(tx)?;
    if transport.kind() == TransportKind::Netlink {
        *peak = (*peak).max(n);
    }
    Ok(n)
}

/// [`send_via`] pipelined: the transaction is applied while the caller
/// builds the next; an error may be the previous transaction's.
fn send_via_pipelined(
    transport: &mut NftTransport,
    peak: &mut usize,
    tx: Transaction,
) -> Result<usize, ApplyError> {
    let n = transport.send_pipelined(tx)?;
    if transport.kind() == TransportKind::Netlink {
        *peak = (*peak).max(n);
    }
    Ok(n)
}

impl NftablesBackend {
    /// Whether table `name` of family `f` exists, read over netlink
    /// (`Some(())` when it does).
    fn table_present(&self, f: Family, name: &str) -> Result<Option<()>, ApplyError> {
        let mut sock = NfSocket::open_in(self.nft.netns()).map_err(netlink_err)?;
        let t = netlink::read_table(&mut sock, f.into(), name, &|_: &str| false)
            .map_err(netlink_err)?;
        Ok(t.map(|_| ()))
    }
}

fn netlink_err(e: netlink::Error) -> ApplyError {
    ApplyError::Other {
        backend: "nftables",
        message: format!("reading the kernel's tables: {e}"),
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
            Some(c) if self.state.is_some() && !c.needs_full_sync => {
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
            match fs.rules() {
                Ok(rules) => rules.render_full(&mut w),
                Err(e) => {
                    tracing::warn!(%e, "could not render the applied ruleset");
                    return None;
                }
            }
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
                if let Err(e) = self.transport.send(&tx) {
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
            // Only a table that is there is worth a log line; when the
            // kernel cannot tell, delete anyway.
            if let Ok(None) = self.table_present(f, KUBE_PROXY_TABLE) {
                continue;
            }
            // `add` first so that `delete` cannot fail on a missing table
            // (how `nft` makes deletion idempotent).
            let mut tx = Transaction::new();
            tx.push(f, KUBE_PROXY_TABLE, Op::AddTable { comment: None });
            tx.push(f, KUBE_PROXY_TABLE, Op::DeleteTable);
            match self.transport.send(&tx) {
                Ok(_) => {
                    tracing::info!(table = %format!("{} {KUBE_PROXY_TABLE}", f.as_str()),
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

#[cfg(test)]
mod tests {
    use kproxy_testkit::mixed_graph;

    use super::*;

    #[test]
    fn a_port_as_the_state_keeps_it_generates_the_same_contribution() {
        let graph = mixed_graph(300);
        let mut ports = 0;
        for (f, fg) in &graph.families {
            let header = family_header(fg);
            let kept = Ctx::from_parts(
                &header,
                graph.masquerade_mark(),
                graph.config.masquerade_all,
            );
            let ctx = Ctx::new(&graph, fg);
            for sp in fg.services.values() {
                let full = generate::service_rules(&ctx, sp).expect("generates");
                let again =
                    generate::service_rules(&kept, &applied_port(sp, *f)).expect("generates");
                assert_eq!(again, full, "{}", sp.name);
                ports += 1;
            }
        }
        assert_eq!(ports, 300);
    }
}
