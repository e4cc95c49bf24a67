//! The reconcile loop: source changes in, coalesced syncs out.
//!
//! - Changes are coalesced: a sync runs no sooner than `min_sync_period`
//!   after the previous one and at least every `sync_period`.
//! - The graph is kept by an [`IncrementalGraph`]: the source hands it
//!   the objects that changed, and each sync rebuilds only the Services
//!   they touch (a change of this node or of the configuration rebuilds
//!   more). The graph is changed in place, so no copy of it is kept
//!   between syncs beyond the one `/graph` shows, which is dropped before
//!   the update.
//! - The first sync is full; later ones are incremental from the
//!   [`ChangeSet`](kproxy_graph::ChangeSet) of the graph update, which is against the previous
//!   graph: the last *successfully applied* one, since any failure makes
//!   the next sync full. A full sync is forced after any failure, every
//!   `full_sync_period`, when the change set says so (node topology,
//!   configuration) and when [`Backend::check`] finds drift (checked every
//!   `sync_period`).
//! - Nothing is flushed at start: the first full sync replaces the
//!   previous rules in one transaction.
//! - After the first successful sync, other modes' leftovers (kproxy's and
//!   kube-proxy's) are removed, so switching modes never opens a window
//!   without rules.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use kproxy_graph::incremental::Applied;
use kproxy_graph::{
    Backend, FamilyGraph, IncrementalGraph, IpFamily, Objects, ProxyConfig, ServiceGraph,
    SyncStats, TrafficPolicy, Warning,
};
use tokio::time::sleep_until;

use crate::cleanup;
use crate::conntrack::Conntrack;
use crate::hcports::HealthCheckPorts;
use crate::metrics::{FamilyLabel, PolicyLabel, TableLabel};
use crate::settings::Settings;
use crate::source::Source;
use crate::state::{Shared, SharedBackend, lock};

/// The annotation the EndpointSlice controller sets to the time of the
/// change that triggered the slice update.
const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// How stale the iptables per-table rule counts may get under a stream of
/// incremental syncs: they are counted in the rendered ruleset.
const RULE_COUNT_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Options of the loop beyond [`Settings`].
#[derive(Debug, Clone, Default)]
pub struct LoopOptions {
    /// Do not touch the kernel; print each sync's ruleset.
    pub dry_run: bool,
    /// Remove other modes' rules after the first successful sync.
    pub cleanup_other_modes: bool,
    /// Delete stale UDP conntrack entries after syncs.
    pub conntrack_cleanup: bool,
    /// Serve health-check node ports.
    pub health_check_node_ports: bool,
    /// Add the host's interface addresses to the node's.
    pub host_addresses: bool,
}

/// The reconciler: the backend and everything remembered between syncs.
pub struct Reconciler {
    settings: Settings,
    opts: LoopOptions,
    /// Shared with `/rules`, which renders the applied ruleset on request.
    backend: SharedBackend,
    kind: kproxy_graph::BackendKind,
    shared: Arc<Shared>,
    /// The objects and the graph built from them.
    graph: IncrementalGraph,
    /// A sync has succeeded (so the graph update's change set is against
    /// what the kernel holds, unless `need_full`).
    applied: bool,
    need_full: bool,
    last_full: Option<Instant>,
    last_attempt: Option<Instant>,
    last_check: Instant,
    cleaned_other_modes: bool,
    seen_warnings: BTreeSet<Warning>,
    /// Per EndpointSlice, the trigger time already observed.
    seen_triggers: BTreeMap<String, String>,
    /// EndpointSlices changed since the last successful sync, with their
    /// trigger time (`None`: deleted, or no annotation) and family.
    pending_triggers: BTreeMap<String, (Option<String>, Option<IpFamily>)>,
    hc_ports: Option<HealthCheckPorts>,
    conntrack: Option<Conntrack>,
    /// The ruleset a dry run printed last.
    dry_run_printed: Option<String>,
    /// When the iptables rules per table were last counted.
    rules_counted: Option<Instant>,
}

impl Reconciler {
    /// A reconciler for `backend`.
    pub fn new(
        settings: Settings,
        opts: LoopOptions,
        backend: Box<dyn Backend>,
        shared: Arc<Shared>,
    ) -> Self {
        let conntrack = (opts.conntrack_cleanup && !opts.dry_run).then(Conntrack::new);
        let hc_ports = opts
            .health_check_node_ports
            .then(|| HealthCheckPorts::new(shared.clone()));
        let proxy = settings.proxy.clone();
        let kind = backend.kind();
        let backend: SharedBackend = Arc::new(std::sync::Mutex::new(backend));
        shared.set_backend(backend.clone());
        Reconciler {
            settings,
            opts,
            backend,
            kind,
            shared,
            graph: IncrementalGraph::new(proxy),
            applied: false,
            need_full: true,
            last_full: None,
            last_attempt: None,
            last_check: Instant::now(),
            cleaned_other_modes: false,
            seen_warnings: BTreeSet::new(),
            seen_triggers: BTreeMap::new(),
            pending_triggers: BTreeMap::new(),
            hc_ports,
            conntrack,
            dry_run_printed: None,
            rules_counted: None,
        }
    }

    /// The configuration the graph is built with now: the settings plus,
    /// with `host_addresses`, the host's current interface addresses.
    fn proxy_config(&self) -> ProxyConfig {
        let mut config = self.settings.proxy.clone();
        if self.opts.host_addresses {
            config.extra_node_ips.extend(crate::hostaddrs::host_ips());
            config.extra_node_ips.sort();
            config.extra_node_ips.dedup();
        }
        config
    }

    /// Take in what the source changed since the last drain: counted as
    /// kube-proxy's change counters (pending until the next successful
    /// sync), and the slices' trigger times noted for the
    /// network-programming latency.
    pub fn ingest(&mut self, source: &mut Source) {
        let applied = source.drain_into(&mut self.graph);
        self.note_applied(applied);
    }

    fn note_applied(&mut self, applied: Applied) {
        let m = &self.shared.metrics;
        m.service_changes_total.inc_by(applied.services);
        m.endpoint_changes_total.inc_by(applied.slices);
        m.service_changes_pending.inc_by(applied.services as i64);
        m.endpoint_changes_pending.inc_by(applied.slices as i64);
        for s in &applied.changed_slices {
            let t = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
                .cloned();
            let family = match s.address_type.as_str() {
                "IPv4" => Some(IpFamily::V4),
                "IPv6" => Some(IpFamily::V6),
                _ => None,
            };
            self.pending_triggers
                .insert(slice_key(&s.metadata), (t, family));
        }
        for (ns, name) in applied.deleted_slices {
            self.pending_triggers
                .insert(format!("{ns}/{name}"), (None, None));
        }
    }

    /// A change notification arrived: health and the queued timestamp.
    /// Cheap on purpose: under an event storm this runs per event, while
    /// the changes are drained once per sync.
    pub fn note_queued(&mut self) {
        let now = SystemTime::now();
        let families: Vec<IpFamily> = self.settings.proxy.families.clone();
        self.shared.health().queued(&families, now);
        for f in &families {
            self.shared
                .metrics
                .last_queued_timestamp
                .get_or_create(&FamilyLabel::of(*f))
                .set(unix_secs(now));
        }
    }

    /// Make `objects` the whole state and sync it (a source that reads
    /// everything at once; the tests).
    #[cfg_attr(not(test), expect(dead_code, reason = "the loop drains sources"))]
    pub fn sync_objects(&mut self, objects: &Objects, source_warnings: Vec<Warning>) -> bool {
        self.graph.set_extra_warnings(source_warnings);
        let applied = self.graph.replace_all(objects.clone());
        self.note_applied(applied);
        self.sync()
    }

    /// One sync of the current objects; `false` when the backend refused
    /// (the previous rules stay, the next sync is full).
    pub fn sync(&mut self) -> bool {
        let started = Instant::now();
        self.last_attempt = Some(started);
        let config = self.proxy_config();
        self.graph.set_config(config);
        if self.graph.is_dirty() {
            // The update changes the graph in place: a copy still held
            // here would make it copy the whole graph first.
            self.shared.status().graph = None;
        }
        let update = self.graph.update();
        let graph = self.graph.graph().clone();
        self.report_warnings(&graph);
        let graph_built = started.elapsed();

        let full_due = self
            .last_full
            .is_none_or(|t| started.duration_since(t) >= self.settings.full_sync_period);
        let changes = if self.applied && !self.need_full && !full_due {
            (!update.changes.needs_full_sync).then_some(update.changes)
        } else {
            None
        };
        // What left the graph, for the conntrack clean-up of removed UDP
        // service ports (it reads nothing else of the previous graph).
        let before = self.applied.then(|| ServiceGraph {
            node: graph.node.clone(),
            config: graph.config.clone(),
            families: update
                .removed
                .into_iter()
                .map(|(f, ports)| {
                    let mut fg = FamilyGraph::empty(f);
                    fg.services = ports.into_iter().map(|sp| (sp.name.clone(), sp)).collect();
                    (f, fg)
                })
                .collect(),
            warnings: Vec::new(),
        });
        let full = changes.is_none();
        let kind = if full { "full" } else { "partial" };
        if let Some(c) = &changes {
            for (family, fc) in &c.families {
                tracing::debug!(family = %family, added = fc.added.len(), removed = fc.removed.len(),
                    changed = fc.changed.len(), "service port changes");
            }
        } else {
            tracing::debug!(
                need_full = self.need_full,
                full_due,
                first = !self.applied,
                "full sync"
            );
        }

        let result = if self.opts.dry_run {
            let rendered = lock(&self.backend).render_full(&graph);
            match rendered {
                Ok(text) => {
                    // Print each distinct ruleset once: periodic syncs of
                    // an unchanged state would only repeat it.
                    if self.dry_run_printed.as_deref() != Some(text.as_str()) {
                        println!("# kproxy dry run: {} sync, backend {}", kind, self.kind);
                        print!("{text}");
                        self.dry_run_printed = Some(text.clone());
                    }
                    Ok(SyncStats {
                        full: true,
                        services: service_ports(&graph),
                        endpoints: endpoints(&graph),
                        rules_total: text.lines().count(),
                        rules_written: 0,
                        bytes_written: 0,
                        rules_written_by_table: Vec::new(),
                    })
                }
                Err(e) => Err(e.to_string()),
            }
        } else {
            let backend = self.backend.clone();
            block(|| lock(&backend).sync(&graph, changes.as_ref())).map_err(|e| e.to_string())
        };
        let elapsed = started.elapsed();
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let label = crate::metrics::SyncLabel { sync: kind.into() };
        // kube-proxy runs a proxier per family and labels its sync
        // metrics with it; kproxy syncs every family at once, so each
        // family's series gets the same observation.
        let family_labels: Vec<FamilyLabel> =
            graph.families.keys().map(|f| FamilyLabel::of(*f)).collect();
        match result {
            Ok(stats) => {
                let now = SystemTime::now();
                let secs = elapsed.as_secs_f64();
                for fl in &family_labels {
                    m.sync_duration.get_or_create(fl).observe(secs);
                    if full {
                        m.sync_full_duration.get_or_create(fl).observe(secs);
                    } else {
                        m.sync_partial_duration.get_or_create(fl).observe(secs);
                    }
                    m.last_sync_timestamp.get_or_create(fl).set(unix_secs(now));
                }
                m.syncs.get_or_create(&label).inc();
                m.service_changes_pending.set(0);
                m.endpoint_changes_pending.set(0);
                m.bytes_written.inc_by(stats.bytes_written as u64);
                m.bytes_last.set(stats.bytes_written as i64);
                m.objects_written.inc_by(stats.rules_written as u64);
                m.objects_total.set(stats.rules_total as i64);
                m.service_ports.set(service_ports(&graph) as i64);
                m.endpoints.set(endpoints(&graph) as i64);
                self.no_local_endpoint_metrics(&graph);
                self.network_programming(now);
                tracing::info!(
                    backend = %self.kind,
                    sync = kind,
                    services = stats.services,
                    endpoints = stats.endpoints,
                    rules_written = stats.rules_written,
                    bytes_written = stats.bytes_written,
                    rules_total = stats.rules_total,
                    duration_ms = elapsed.as_millis() as u64,
                    graph_ms = graph_built.as_millis() as u64,
                    services_rebuilt = update.rebuilt,
                    "synced"
                );
                if !self.opts.dry_run
                    && let Some(ct) = &mut self.conntrack
                {
                    // Compared with the last applied graph: removed UDP
                    // service ports lose their flows too.
                    let report = block(|| ct.cleanup(before.as_ref(), &graph, changes.as_ref()));
                    // One cleanup covers every family: each gets its time.
                    for fl in &family_labels {
                        m.conntrack_duration
                            .get_or_create(fl)
                            .observe(report.duration.as_secs_f64());
                    }
                    for (fam, n) in report.deleted {
                        m.conntrack_deleted
                            .get_or_create(&FamilyLabel::of(fam))
                            .inc_by(n);
                    }
                }
                let families: Vec<IpFamily> = graph.families.keys().copied().collect();
                {
                    let mut h = self.shared.health();
                    h.updated(&families, now);
                    h.node_eligible = graph.node.known && !graph.node.draining;
                }
                if let Some(hc) = &mut self.hc_ports {
                    hc.update(&graph);
                }
                // `/rules` asks the backend to render the applied ruleset
                // when requested: the whole text (~6 MB of nft at 10,000
                // Services, ~170 MB of iptables at 50,000) costs more than
                // an incremental sync. A dry run keeps what it printed
                // (this sync's render: it is replaced whenever it differs).
                let rules = if self.opts.dry_run {
                    self.dry_run_printed.clone()
                } else {
                    None
                };
                if self.kind != kproxy_graph::BackendKind::Nftables {
                    // Rules written per family and table; tables this
                    // sync did not write count 0, as kube-proxy's buffer.
                    for f in graph.families.keys() {
                        for table in ["filter", "nat"] {
                            m.iptables_last
                                .get_or_create(&TableLabel {
                                    ip_family: f.as_k8s_str().into(),
                                    table: table.into(),
                                })
                                .set(0);
                        }
                    }
                    // Only kube-proxy's tables, and others kproxy wrote to.
                    for (f, table, n) in &stats.rules_written_by_table {
                        if *n == 0 {
                            continue;
                        }
                        m.iptables_last
                            .get_or_create(&TableLabel {
                                ip_family: f.as_k8s_str().into(),
                                table: table.clone(),
                            })
                            .set(*n as i64);
                    }
                    // kube-proxy's per-table gauges: the rules kproxy owns
                    // in each table (both families), counted in the applied
                    // text, so after full syncs and at most every
                    // RULE_COUNT_PERIOD otherwise.
                    let due = full
                        || self
                            .rules_counted
                            .is_none_or(|t| t.elapsed() >= RULE_COUNT_PERIOD);
                    let text = match &rules {
                        Some(text) => Some(text.clone()),
                        None if due => lock(&self.backend).last_applied(),
                        None => None,
                    };
                    if let Some(text) = text {
                        for ((family, table), n) in iptables_rules_per_table(&text) {
                            if n == 0 && table != "filter" && table != "nat" {
                                continue;
                            }
                            m.iptables_total
                                .get_or_create(&TableLabel {
                                    ip_family: family.as_k8s_str().into(),
                                    table,
                                })
                                .set(n as i64);
                        }
                        self.rules_counted = Some(Instant::now());
                    }
                }
                {
                    let mut st = self.shared.status();
                    st.last_sync = Some(now);
                    if full {
                        st.last_full_sync = Some(now);
                    }
                    st.last_stats = Some(stats.clone());
                    st.syncs += 1;
                    st.consecutive_failures = 0;
                    st.graph = Some(graph.clone());
                    st.rules = rules;
                    st.warnings = graph.warnings.iter().map(ToString::to_string).collect();
                }
                self.applied = true;
                self.need_full = false;
                if full {
                    self.last_full = Some(started);
                }
                if !self.cleaned_other_modes && self.opts.cleanup_other_modes && !self.opts.dry_run
                {
                    self.cleaned_other_modes = true;
                    cleanup::other_modes(self.kind);
                }
                true
            }
            Err(e) => {
                self.need_full = true;
                m.sync_failures.get_or_create(&label).inc();
                // The sync of every family failed (and is retried whole).
                for fl in &family_labels {
                    match self.kind {
                        kproxy_graph::BackendKind::Nftables => {
                            m.nftables_sync_failures.get_or_create(fl).inc();
                        }
                        _ => {
                            m.iptables_restore_failures.get_or_create(fl).inc();
                            if !full {
                                m.iptables_partial_restore_failures.get_or_create(fl).inc();
                            }
                        }
                    }
                }
                tracing::error!(backend = %self.kind, sync = kind, error = %e,
                    "sync failed; the previous rules stay, the next sync is full");
                let mut st = self.shared.status();
                // What the failed sync tried to apply, for /graph.
                st.graph = Some(graph);
                st.failures += 1;
                st.consecutive_failures += 1;
                st.last_error = Some((SystemTime::now(), e.clone()));
                false
            }
        }
    }

    /// The periodic drift check: `true` when the kernel lost our rules.
    ///
    /// Only a kernel that no longer holds what the last *successful* sync
    /// applied is drift. After a failed sync the next sync is full anyway
    /// and the failure was counted as such: checking then would count the
    /// same failure again as drift, every period, while the loader fails.
    pub fn check_drift(&mut self) -> bool {
        self.last_check = Instant::now();
        if self.opts.dry_run || !self.applied || self.need_full {
            return false;
        }
        let backend = self.backend.clone();
        match block(|| lock(&backend).check()) {
            Ok(true) => false,
            Ok(false) => {
                tracing::warn!(backend = %self.kind,
                    "the kernel no longer holds kproxy's rules (flushed or edited); repairing with a full sync");
                self.need_full = true;
                self.shared.metrics.drift_repairs.inc();
                self.shared.status().drift_repairs += 1;
                true
            }
            Err(e) => {
                tracing::warn!(backend = %self.kind, error = %e, "drift check failed; forcing a full sync");
                self.need_full = true;
                true
            }
        }
    }

    fn report_warnings(&mut self, graph: &ServiceGraph) {
        let m = &self.shared.metrics;
        m.invalid_objects.set(graph.warnings.len() as i64);
        for w in &graph.warnings {
            if self.seen_warnings.insert(w.clone()) {
                m.invalid_objects_total.inc();
                tracing::warn!(kind = %w.kind, object = %w.object, field = %w.field,
                    reason = %w.reason, "skipped invalid input");
            }
        }
        // Forget warnings that went away, so a recurrence is logged again.
        let current: BTreeSet<&Warning> = graph.warnings.iter().collect();
        self.seen_warnings.retain(|w| current.contains(w));
    }

    fn no_local_endpoint_metrics(&self, graph: &ServiceGraph) {
        let m = &self.shared.metrics;
        for (family, fg) in &graph.families {
            let (mut internal, mut external) = (0i64, 0i64);
            for sp in fg.services.values() {
                if sp.local_endpoints.is_empty() && sp.decisions.has_endpoints {
                    if sp.internal_traffic_policy == TrafficPolicy::Local {
                        internal += 1;
                    }
                    if sp.externally_accessible()
                        && sp.external_traffic_policy == TrafficPolicy::Local
                    {
                        external += 1;
                    }
                }
            }
            for (policy, n) in [("internal", internal), ("external", external)] {
                m.no_local_endpoints
                    .get_or_create(&PolicyLabel {
                        ip_family: family.as_k8s_str().into(),
                        traffic_policy: policy.into(),
                    })
                    .set(n);
            }
        }
    }

    /// Observe, for every EndpointSlice whose trigger time is new since the
    /// last successful sync, the time from the trigger to now.
    fn network_programming(&mut self, now: SystemTime) {
        // The first sync after start does not observe: those changes
        // happened before this process and would skew the SLI.
        let first = self.syncs() == 0;
        for (key, (t, family)) in std::mem::take(&mut self.pending_triggers) {
            let Some(t) = t else {
                self.seen_triggers.remove(&key);
                continue;
            };
            if !first
                && self.seen_triggers.get(&key) != Some(&t)
                && let Some(family) = family
                && let Ok(ts) = t.parse::<k8s_openapi::jiff::Timestamp>()
                && let Ok(d) = now.duration_since(SystemTime::from(ts))
            {
                self.shared
                    .metrics
                    .network_programming
                    .get_or_create(&FamilyLabel::of(family))
                    .observe(d.as_secs_f64());
            }
            self.seen_triggers.insert(key, t);
        }
    }

    fn syncs(&self) -> u64 {
        self.shared.status().syncs
    }

    /// When the next sync is due: after `min_sync_period` with pending
    /// changes, after `sync_period` without.
    fn due(&self, dirty: bool) -> Instant {
        let now = Instant::now();
        let Some(last) = self.last_attempt else {
            return now;
        };
        let sync_due = last + self.settings.sync_period;
        let check_due = self.last_check + self.settings.sync_period;
        if dirty {
            (last + self.settings.min_sync_period).min(sync_due)
        } else {
            sync_due.min(check_due)
        }
    }

    /// Run until SIGTERM/SIGINT (rules stay) or a source error.
    ///
    /// `config_changed` resolves when the configuration file changed: like
    /// kube-proxy, the daemon then exits (rules stay) so that it restarts
    /// with the new configuration.
    pub async fn run(
        mut self,
        mut source: Source,
        once: bool,
        config_changed: impl std::future::Future<Output = String>,
    ) -> anyhow::Result<bool> {
        let mut config_changed = std::pin::pin!(config_changed);
        // Nothing is synced before the source's initial state is complete:
        // a partial state would delete rules for Services not yet listed.
        // A daemon stopped while it waits (the API server unreachable)
        // exits as cleanly as one stopped later: there is nothing to undo.
        let mut shutdown = if once { None } else { Some(Shutdown::new()?) };
        if let Some(shutdown) = shutdown.as_mut() {
            tokio::select! {
                r = source.changed() => r?,
                sig = shutdown.recv() => {
                    tracing::info!(signal = sig, "shutting down before the first sync; the rules stay as they were");
                    return Ok(true);
                }
            }
        } else {
            source.changed().await?;
        }
        self.shared.status().source = source.describe();
        self.note_queued();
        self.ingest(&mut source);
        let Some(mut shutdown) = shutdown else {
            return Ok(self.sync());
        };
        let mut dirty = true;
        loop {
            let due = self.due(dirty);
            if Instant::now() >= due {
                if Instant::now() >= self.last_check + self.settings.sync_period {
                    self.check_drift();
                }
                let periodic_only = !dirty
                    && !self.need_full
                    && self
                        .last_attempt
                        .is_some_and(|t| t.elapsed() < self.settings.sync_period);
                if !periodic_only {
                    if dirty {
                        self.ingest(&mut source);
                    }
                    self.sync();
                }
                self.shared.status().source_errors = source.errors();
                dirty = false;
                continue;
            }
            tokio::select! {
                r = source.changed() => {
                    r?;
                    self.shared.status().source_errors = source.errors();
                    self.note_queued();
                    dirty = true;
                }
                _ = sleep_until(due.into()) => {}
                what = &mut config_changed => {
                    anyhow::bail!("{what} changed; exiting so that the new configuration is used (the rules stay)");
                }
                sig = shutdown.recv() => {
                    tracing::info!(signal = sig, "shutting down; the rules stay in place");
                    return Ok(true);
                }
            }
        }
    }
}

/// Run blocking backend work without stalling the HTTP listeners.
fn block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Rules (`-A`/`-I` lines) per table in iptables-restore text.
fn iptables_rules_per_table(text: &str) -> BTreeMap<(IpFamily, String), usize> {
    let mut out: BTreeMap<(IpFamily, String), usize> = BTreeMap::new();
    // The applied text holds each family under its header line
    // (`# IPv4: iptables-restore ...`, `# IPv6: ip6tables-restore ...`).
    let mut family = IpFamily::V4;
    let mut table = String::new();
    for line in text.lines() {
        if line.starts_with("# IPv6:") {
            family = IpFamily::V6;
        } else if line.starts_with("# IPv4:") {
            family = IpFamily::V4;
        } else if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            out.entry((family, table.clone())).or_default();
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            *out.entry((family, table.clone())).or_default() += 1;
        }
    }
    out
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn service_ports(g: &ServiceGraph) -> usize {
    g.families.values().map(|f| f.services.len()).sum()
}

fn endpoints(g: &ServiceGraph) -> usize {
    g.families.values().map(|f| f.total_endpoints()).sum()
}

/// `namespace/name` of an object.
fn slice_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("")
    )
}

/// SIGTERM and SIGINT.
struct Shutdown {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Shutdown {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kproxy_graph::{ApplyError, BackendKind, ChangeSet, GenError, ProxyConfig};

    use super::*;
    use crate::health::ProxyHealth;
    use crate::state::Status;

    /// What the fake backend was asked to do.
    #[derive(Debug, Default)]
    struct Log {
        /// `true` for full syncs.
        syncs: Vec<bool>,
        /// The change set of each partial sync.
        changes: Vec<ChangeSet>,
        fail_next: bool,
        /// Every sync fails (a broken loader).
        fail_always: bool,
        drifted: bool,
        /// A failed sync left the backend without a state to compare
        /// with, as the real backends do.
        lost: bool,
    }

    struct Fake(Arc<Mutex<Log>>);

    impl Backend for Fake {
        fn kind(&self) -> BackendKind {
            BackendKind::Nftables
        }
        fn render_full(&self, _graph: &ServiceGraph) -> Result<String, GenError> {
            Ok("table ip kproxy {}\n".into())
        }
        fn sync(
            &mut self,
            graph: &ServiceGraph,
            changes: Option<&ChangeSet>,
        ) -> Result<SyncStats, ApplyError> {
            let mut log = self.0.lock().unwrap();
            log.syncs.push(changes.is_none());
            log.changes.extend(changes.cloned());
            if std::mem::take(&mut log.fail_next) || log.fail_always {
                log.lost = true;
                return Err(ApplyError::Rejected {
                    backend: "fake",
                    program: "nft".into(),
                    status: "exit status: 1".into(),
                    stderr: "injected".into(),
                });
            }
            log.drifted = false;
            log.lost = false;
            Ok(SyncStats {
                full: changes.is_none(),
                services: service_ports(graph),
                endpoints: endpoints(graph),
                rules_total: 10,
                rules_written: 3,
                bytes_written: 100,
                rules_written_by_table: Vec::new(),
            })
        }
        fn check(&mut self) -> Result<bool, ApplyError> {
            let log = self.0.lock().unwrap();
            Ok(!log.drifted && !log.lost)
        }
        fn last_applied(&self) -> Option<String> {
            Some("applied".into())
        }
        fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
            Ok(())
        }
    }

    fn objects(ip: &str) -> Objects {
        let mut o = Objects::default();
        o.add_yaml(
            "test",
            &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80, protocol: TCP}}]\n"
            ),
        )
        .unwrap();
        o
    }

    fn reconciler(log: Arc<Mutex<Log>>) -> Reconciler {
        let settings = Settings {
            backend: BackendKind::Nftables,
            proxy: ProxyConfig {
                node_name: "n".into(),
                ..ProxyConfig::default()
            },
            sync_period: std::time::Duration::from_secs(30),
            min_sync_period: std::time::Duration::from_secs(1),
            full_sync_period: std::time::Duration::from_secs(3600),
            healthz_addr: None,
            metrics_addr: None,
            sysctls: Vec::new(),
            client: Default::default(),
            bind_address_hard_fail: false,
            oom_score_adj: None,
        };
        let shared = Shared::new(
            ProxyHealth::new(std::time::Duration::from_secs(60)),
            Status {
                backend: Some(BackendKind::Nftables),
                ..Status::default()
            },
        );
        Reconciler::new(
            settings,
            LoopOptions::default(),
            Box::new(Fake(log)),
            shared,
        )
    }

    #[test]
    fn first_full_then_partial_failure_forces_full() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut r = reconciler(log.clone());
        assert!(r.sync_objects(&objects("10.0.0.1"), vec![]));
        assert!(r.sync_objects(&objects("10.0.0.2"), vec![]));
        log.lock().unwrap().fail_next = true;
        assert!(!r.sync_objects(&objects("10.0.0.3"), vec![]));
        assert!(r.sync_objects(&objects("10.0.0.3"), vec![]));
        assert!(r.sync_objects(&objects("10.0.0.4"), vec![]));
        assert_eq!(
            log.lock().unwrap().syncs,
            vec![true, false, false, true, false]
        );
        let st = r.shared.status();
        assert_eq!((st.syncs, st.failures), (4, 1));
        let text = r.shared.metrics.encode();
        assert!(
            text.contains(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("kproxy_syncs_total{sync=\"partial\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn a_slice_change_rebuilds_its_service_in_place() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut r = reconciler(log.clone());
        let with_slices = |first_ip: &str| {
            let mut o = objects("10.0.0.1");
            for (svc, ip) in [("s", first_ip), ("t", "10.1.0.2")] {
                if svc == "t" {
                    o.add_yaml("t", "apiVersion: v1\nkind: Service\nmetadata: {name: t, namespace: n}\nspec:\n  clusterIP: 10.0.0.2\n  ports: [{port: 80, protocol: TCP}]\n").unwrap();
                }
                o.add_yaml(
                    "slice",
                    &format!(
                        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: n\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports: [{{port: 80, protocol: TCP}}]\nendpoints: [{{addresses: [{ip}]}}]\n"
                    ),
                )
                .unwrap();
            }
            o
        };
        assert!(r.sync_objects(&with_slices("10.1.0.1"), vec![]));
        let before = Arc::as_ptr(r.graph.graph());
        assert!(r.sync_objects(&with_slices("10.1.0.9"), vec![]));
        // Updated in place: the status' copy was dropped before the update.
        assert_eq!(Arc::as_ptr(r.graph.graph()), before);
        let log = log.lock().unwrap();
        assert_eq!(log.syncs, vec![true, false]);
        let v4 = log.changes[0].family(IpFamily::V4);
        let names: Vec<String> = v4.changed.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["n/s"], "{v4:?}");
        assert!(v4.added.is_empty() && v4.removed.is_empty(), "{v4:?}");
        let text = r.shared.metrics.encode();
        assert!(
            text.contains("kubeproxy_sync_proxy_rules_endpoint_changes_total 3"),
            "two slices, then one: {text}"
        );
    }

    #[test]
    fn drift_forces_a_full_sync() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut r = reconciler(log.clone());
        assert!(r.sync_objects(&objects("10.0.0.1"), vec![]));
        assert!(!r.check_drift(), "no drift yet");
        log.lock().unwrap().drifted = true;
        assert!(r.check_drift());
        assert!(r.sync_objects(&objects("10.0.0.1"), vec![]));
        assert_eq!(log.lock().unwrap().syncs, vec![true, true]);
        assert!(
            r.shared
                .metrics
                .encode()
                .contains("kproxy_drift_repairs_total 1")
        );
    }

    #[test]
    fn a_failing_loader_is_a_failed_sync_not_drift() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut r = reconciler(log.clone());
        assert!(r.sync_objects(&objects("10.0.0.1"), vec![]));
        log.lock().unwrap().fail_always = true;
        assert!(!r.sync_objects(&objects("10.0.0.2"), vec![]));
        // The loop's order: the periodic check, then the retry.
        for _ in 0..4 {
            assert!(!r.check_drift(), "a failed sync is not drift");
            assert!(!r.sync());
        }
        log.lock().unwrap().fail_always = false;
        assert!(!r.check_drift());
        assert!(r.sync());
        assert!(!r.check_drift(), "in sync again");
        assert_eq!(
            log.lock().unwrap().syncs,
            vec![true, false, true, true, true, true, true],
            "retries are full syncs"
        );
        let st = r.shared.status();
        assert_eq!((st.syncs, st.failures, st.drift_repairs), (2, 5, 0));
        drop(st);
        let text = r.shared.metrics.encode();
        assert!(text.contains("kproxy_drift_repairs_total 0"), "{text}");
        assert!(
            text.contains(
                "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 5"
            ),
            "{text}"
        );
    }

    #[test]
    fn invalid_objects_are_counted_once() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut r = reconciler(log);
        let mut o = objects("10.0.0.1");
        o.add_yaml(
            "bad",
            "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: n}\nspec:\n  clusterIP: 10.0.0.999\n  ports: [{port: 80}]\n",
        )
        .unwrap();
        assert!(r.sync_objects(&o, vec![]));
        assert!(r.sync_objects(&o, vec![]));
        let g = r.shared.status().graph.clone().unwrap();
        let n = g.warnings.len();
        assert!(
            n >= 1 && g.warnings.iter().all(|w| w.object == "n/bad"),
            "{:?}",
            g.warnings
        );
        let text = r.shared.metrics.encode();
        assert!(
            text.contains(&format!("kproxy_invalid_objects_seen_total {n}\n")),
            "each warning counted once: {text}"
        );
        assert!(
            text.contains(&format!("kproxy_invalid_objects {n}\n")),
            "{text}"
        );
        assert_eq!(
            g.families[&IpFamily::V4].services.len(),
            1,
            "the valid Service is kept"
        );
    }

    #[test]
    fn network_programming_latency_from_the_trigger_time() {
        let log = Arc::new(Mutex::new(Log::default()));
        let mut r = reconciler(log);
        let with_trigger = |t: &str| {
            let mut o = objects("10.0.0.1");
            o.add_yaml(
                "slice",
                &format!(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s-1\n  namespace: n\n  labels: {{kubernetes.io/service-name: s}}\n  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{t}\"}}\naddressType: IPv4\nports: [{{port: 80, protocol: TCP}}]\nendpoints: [{{addresses: [10.1.0.1]}}]\n"
                ),
            )
            .unwrap();
            o
        };
        let ago = |secs: u64| {
            k8s_openapi::jiff::Timestamp::try_from(
                SystemTime::now() - std::time::Duration::from_secs(secs),
            )
            .unwrap()
            .to_string()
        };
        let count = |r: &Reconciler| {
            let text = r.shared.metrics.encode();
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"} ",
                    )
                })
                .map(|v| v.trim().to_string())
        };
        let first = ago(100);
        assert!(r.sync_objects(&with_trigger(&first), vec![]));
        assert_eq!(
            count(&r).as_deref(),
            None,
            "changes before start are not observed (no series yet)"
        );
        assert!(r.sync_objects(&with_trigger(&first), vec![]));
        assert_eq!(
            count(&r).as_deref(),
            None,
            "an unchanged trigger time is observed once"
        );
        assert!(r.sync_objects(&with_trigger(&ago(3)), vec![]));
        assert_eq!(count(&r).as_deref(), Some("1"));
        let text = r.shared.metrics.encode();
        assert!(
            text.contains("kubeproxy_network_programming_duration_seconds_bucket{le=\"3.0\",ip_family=\"IPv4\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("kubeproxy_network_programming_duration_seconds_bucket{le=\"5.0\",ip_family=\"IPv4\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn iptables_rules_are_counted_per_table() {
        let text = "# IPv4: iptables-restore --noflush --counters\n*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j ACCEPT\nCOMMIT\n*nat\n-I PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n# IPv6: ip6tables-restore --noflush --counters\n*nat\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n";
        let m = iptables_rules_per_table(text);
        let get = |f: IpFamily, t: &str| m.get(&(f, t.to_string())).copied();
        assert_eq!(get(IpFamily::V4, "filter"), Some(1));
        assert_eq!(get(IpFamily::V4, "nat"), Some(2));
        assert_eq!(get(IpFamily::V6, "nat"), Some(1));
        assert_eq!(get(IpFamily::V6, "filter"), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bursts_of_changes_are_coalesced() {
        let dir = std::env::temp_dir().join(format!("kproxy-coalesce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let svc = |ip: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80, protocol: TCP}}]\n"
            )
        };
        std::fs::write(dir.join("a.yaml"), svc("10.0.0.1")).unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let mut r = reconciler(log.clone());
        r.settings.min_sync_period = std::time::Duration::from_millis(1500);
        let source = Source::File(crate::source::file::FileSource::new(dir.clone()));
        let task = tokio::spawn(r.run(source, false, std::future::pending()));
        let syncs = || log.lock().unwrap().syncs.len();
        for _ in 0..50 {
            if syncs() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(syncs(), 1, "the initial sync");
        // Five changes well inside one minSyncPeriod: one more sync.
        for i in 2..7 {
            std::fs::write(dir.join("a.yaml"), svc(&format!("10.0.0.{i}"))).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
        let n = syncs();
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!((2..=3).contains(&n), "{n} syncs for a burst of 5 changes");
        assert!(!log.lock().unwrap().syncs[1], "incremental after the first");
    }
}
