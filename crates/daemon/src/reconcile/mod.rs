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
//! - With `--once`, the source and the incremental graph's objects and
//!   indexes are dropped once the graph is built: the one sync holds the
//!   graph and the backend's work alone.
//! - Nothing is flushed at start: the first full sync replaces the
//!   previous rules in one transaction.
//! - After the first successful sync, other modes' leftovers (kproxy's and
//!   kube-proxy's) are removed, so switching modes never opens a window
//!   without rules.
//!
//! Files: this one holds the loop (coalescing, drift checks, shutdown);
//! [`plan`] updates the graph and decides full or incremental; [`record`]
//! turns the outcome into metrics, logs and `/status`; [`after_sync`]
//! deletes stale flows, updates health and cleans up other modes. The
//! reconciler never asks which backend it drives: `--dry-run` is the
//! [`kproxy_graph::DryRun`] decorator around the backend.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use kproxy_graph::incremental::Applied;
use kproxy_graph::{
    Backend, IncrementalGraph, IpFamily, Objects, ProxyConfig, ProxyMode, ServiceGraph,
    TrafficPolicy, Warning,
};
use tokio::time::sleep_until;

mod after_sync;
mod plan;
mod record;

use crate::conntrack::Conntrack;
use crate::hcports::HealthCheckPorts;
use crate::metrics::{FamilyLabel, PolicyLabel};
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
    /// kube-proxy's mode the backend stands in for: which of kube-proxy's
    /// mode-specific metrics (iptables or nftables) this sync feeds.
    mode: ProxyMode,
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
        let conntrack = opts.conntrack_cleanup.then(Conntrack::new);
        let hc_ports = opts
            .health_check_node_ports
            .then(|| HealthCheckPorts::new(shared.clone()));
        let proxy = settings.proxy.clone();
        let kind = backend.kind();
        let mode = kind.mode();
        let backend: SharedBackend = Arc::new(std::sync::Mutex::new(backend));
        shared.set_backend(backend.clone());
        Reconciler {
            settings,
            opts,
            backend,
            kind,
            mode,
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
    pub fn sync_objects(&mut self, objects: &Objects, source_warnings: Vec<Warning>) -> bool {
        self.graph.set_extra_warnings(source_warnings);
        let applied = self.graph.replace_all(objects.clone());
        self.note_applied(applied);
        self.sync()
    }

    /// One sync of the current objects; `false` when the backend refused
    /// (the previous rules stay, the next sync is full): plan it
    /// ([`plan`]), hand it to the backend, record the outcome ([`record`])
    /// and do what follows a successful sync ([`after_sync`]).
    pub fn sync(&mut self) -> bool {
        let plan = self.plan();
        self.apply_plan(plan)
    }

    /// The one sync of `run --once`: what only later syncs would need
    /// (the objects the graph was built from and the incremental graph's
    /// indexes) is dropped before the backend runs, so the process's peak
    /// holds the graph and the backend's work alone.
    fn sync_last(&mut self) -> bool {
        let plan = self.plan();
        self.graph = IncrementalGraph::new(self.settings.proxy.clone());
        self.apply_plan(plan)
    }

    fn apply_plan(&mut self, plan: plan::SyncPlan) -> bool {
        let result = {
            let backend = self.backend.clone();
            let (graph, changes) = (&plan.graph, plan.changes.as_ref());
            block(|| lock(&backend).sync(graph, changes)).map_err(|e| e.to_string())
        };
        let elapsed = plan.started.elapsed();
        match result {
            Ok(stats) => {
                let now = SystemTime::now();
                self.record_success(&plan, &stats, elapsed, now);
                self.conntrack_cleanup(&plan);
                self.update_health(&plan, now);
                self.record_rule_counts(&plan, &stats);
                self.record_status(&plan, stats, now);
                self.applied = true;
                self.need_full = false;
                if plan.full {
                    self.last_full = Some(plan.started);
                }
                self.cleanup_other_modes();
                true
            }
            Err(e) => {
                self.record_failure(plan, e);
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
        if !self.applied || self.need_full {
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
            // The source's copy of the objects is not needed again.
            drop(source);
            return Ok(self.sync_last());
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
mod tests;
