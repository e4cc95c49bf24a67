//! Prometheus metrics: kube-proxy 1.36's `kubeproxy_*` families with its
//! types, label names and buckets, registered per mode as kube-proxy does
//! (`pkg/proxy/metrics` `RegisterMetrics`), so existing dashboards and
//! alerts keep working; plus kproxy's own `kproxy_*`. The differences that
//! remain are listed in docs/operations.md ("Known differences from
//! kube-proxy") and checked by tests/metrics.rs against recorded
//! kube-proxy 1.36 expositions.

use std::sync::atomic::AtomicU64;

use kproxy_graph::{BackendKind, IpFamily};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// `{ip_family, table}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
    /// The iptables table.
    pub table: String,
}

/// `{code}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The HTTP status code.
    pub code: String,
}

/// `{ip_family, traffic_policy}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
    /// `internal` or `external`.
    pub traffic_policy: String,
}

/// `{kind}`: the kind a source watcher watches (`EndpointSlice`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// `{ip_family}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

impl FamilyLabel {
    /// The label of `family`, spelled as kube-proxy (`v1.IPFamily`).
    pub fn of(family: IpFamily) -> Self {
        FamilyLabel {
            ip_family: family.as_k8s_str().into(),
        }
    }
}

/// `{sync}`: `full` or `partial`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabel {
    /// `full` or `partial`.
    pub sync: String,
}

type FGauge = Gauge<f64, AtomicU64>;
/// A histogram per IP family, all with the same buckets.
pub type FamilyHistogram = Family<FamilyLabel, Histogram, fn() -> Histogram>;

/// kube-proxy's sync and conntrack-reconciler buckets:
/// `ExponentialBuckets(0.001, 2, 15)`, 1 ms to 16.384 s.
fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// kube-proxy's network-programming buckets: `MergeBuckets` of 0.25 s and
/// 0.5 s, 1..59 s, 60..115 s by 5 and 120..300 s by 30, after the 0 that
/// `MergeBuckets` starts with.
fn network_programming_histogram() -> Histogram {
    let buckets: Vec<f64> = [0.0, 0.25, 0.5]
        .into_iter()
        .chain((1..=59).map(f64::from))
        .chain((60..=115).step_by(5).map(f64::from))
        .chain((120..=300).step_by(30).map(f64::from))
        .collect();
    Histogram::new(buckets)
}

/// Builds metrics and registers them. Counters are registered without
/// `_total`: the encoder appends it.
struct Registrar(Registry);

impl Registrar {
    /// A new metric, registered as `name`.
    fn add<M: Metric + Clone + Default>(&mut self, name: &str, help: &str) -> M {
        self.add_if(true, name, help)
    }

    /// A new metric, registered as `name` when `on` (kube-proxy registers
    /// it only in one mode).
    fn add_if<M: Metric + Clone + Default>(&mut self, on: bool, name: &str, help: &str) -> M {
        let metric = M::default();
        if on {
            self.0.register(name, help, metric.clone());
        }
        metric
    }

    /// `metric`, registered as `name`.
    fn add_with<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }
}

/// Every metric the daemon exports. All exist whatever the backend; the
/// registry exposes the ones kube-proxy registers in that mode.
pub struct Metrics {
    registry: Registry,
    /// Duration of every sync, per family it covered.
    pub sync_duration: FamilyHistogram,
    /// Duration of full syncs.
    pub sync_full_duration: FamilyHistogram,
    /// Duration of partial syncs.
    pub sync_partial_duration: FamilyHistogram,
    /// EndpointSlice trigger time to rules in the kernel, by the slice's
    /// family.
    pub network_programming: FamilyHistogram,
    /// Last successful sync (Unix seconds).
    pub last_sync_timestamp: Family<FamilyLabel, FGauge>,
    /// Last time a sync was requested (Unix seconds).
    pub last_queued_timestamp: Family<FamilyLabel, FGauge>,
    /// EndpointSlice changes not yet synced.
    pub endpoint_changes_pending: Gauge,
    /// EndpointSlice changes seen.
    pub endpoint_changes_total: Counter,
    /// Service changes not yet synced.
    pub service_changes_pending: Gauge,
    /// Service changes seen.
    pub service_changes_total: Counter,
    /// Rules owned (iptables backends).
    pub iptables_total: Family<TableLabel, Gauge>,
    /// Rules written in the last restore (iptables backends).
    pub iptables_last: Family<TableLabel, Gauge>,
    /// Failed restores (iptables backends).
    pub iptables_restore_failures: Family<FamilyLabel, Counter>,
    /// Failed partial restores (iptables backends).
    pub iptables_partial_restore_failures: Family<FamilyLabel, Counter>,
    /// Failed nft transactions.
    pub nftables_sync_failures: Family<FamilyLabel, Counter>,
    /// Failed removals of stale nftables objects: kproxy removes them in
    /// the sync's own transaction, so this never counts (a failure counts
    /// as a sync failure).
    pub nftables_cleanup_failures: Family<FamilyLabel, Counter>,
    /// Local-policy service ports without local endpoints.
    pub no_local_endpoints: Family<PolicyLabel, Gauge>,
    /// /healthz answers by code.
    pub healthz_total: Family<CodeLabel, Counter>,
    /// /livez answers by code.
    pub livez_total: Family<CodeLabel, Counter>,
    /// Conntrack cleanup run time, per family cleaned.
    pub conntrack_duration: FamilyHistogram,
    /// Conntrack entries deleted.
    pub conntrack_deleted: Family<FamilyLabel, Counter>,
    /// kproxy: bytes sent to the kernel.
    pub bytes_written: Counter,
    /// kproxy: bytes sent in the last sync.
    pub bytes_last: Gauge,
    /// kproxy: rules/statements sent to the kernel.
    pub objects_written: Counter,
    /// kproxy: rules/statements the backend owns.
    pub objects_total: Gauge,
    /// kproxy: syncs by kind.
    pub syncs: Family<SyncLabel, Counter>,
    /// kproxy: failed syncs by kind (every backend).
    pub sync_failures: Family<SyncLabel, Counter>,
    /// kproxy: drift found by the periodic check and repaired.
    pub drift_repairs: Counter,
    /// kproxy: objects or fields skipped as invalid in the current state.
    pub invalid_objects: Gauge,
    /// kproxy: invalid objects or fields seen (each distinct one once).
    pub invalid_objects_total: Counter,
    /// kproxy: service ports in the graph.
    pub service_ports: Gauge,
    /// kproxy: endpoints in the graph.
    pub endpoints: Gauge,
    /// kproxy: 1 while a source watcher's last request failed.
    pub source_errors: Family<KindLabel, Gauge>,
    /// kproxy: source watcher errors seen.
    pub source_errors_total: Family<KindLabel, Counter>,
}

impl Metrics {
    /// All metrics, registered as kube-proxy registers them in the mode
    /// of `backend` (both iptables backends are kube-proxy's iptables
    /// mode).
    pub fn new(backend: BackendKind) -> Self {
        let nft = backend.mode() == kproxy_graph::ProxyMode::Nftables;
        let hist = |f: fn() -> Histogram| FamilyHistogram::new_with_constructor(f);
        let mut r = Registrar(Registry::default());
        if !nft {
            r.0.register_collector(Box::new(NfacctCollector::default()));
        }
        // Built in registration order: kube-proxy's metrics of every
        // mode, the mode's own, then kproxy's.
        Metrics {
            sync_duration: r.add_with(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "Time each sync of the proxy rules took, in seconds",
                hist(sync_histogram),
            ),
            sync_full_duration: r.add_with(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "Time each full sync of the proxy rules took, in seconds",
                hist(sync_histogram),
            ),
            sync_partial_duration: r.add_with(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "Time each partial sync of the proxy rules took, in seconds",
                hist(sync_histogram),
            ),
            network_programming: r.add_with(
                "kubeproxy_network_programming_duration_seconds",
                "Time from an EndpointSlice change to its rules in the kernel, in seconds",
                hist(network_programming_histogram),
            ),
            last_sync_timestamp: r.add(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "When the proxy rules were last synced successfully (Unix seconds)",
            ),
            last_queued_timestamp: r.add(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "When a sync of the proxy rules was last requested (Unix seconds)",
            ),
            endpoint_changes_pending: r.add(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "EndpointSlice changes not yet synced",
            ),
            endpoint_changes_total: r.add(
                "kubeproxy_sync_proxy_rules_endpoint_changes",
                "EndpointSlice changes seen",
            ),
            service_changes_pending: r.add(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Service changes not yet synced",
            ),
            service_changes_total: r.add(
                "kubeproxy_sync_proxy_rules_service_changes",
                "Service changes seen",
            ),
            no_local_endpoints: r.add(
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Service ports with a Local traffic policy and no local endpoints",
            ),
            healthz_total: r.add(
                "kubeproxy_proxy_healthz",
                "Answers of the /healthz endpoint by HTTP status",
            ),
            livez_total: r.add(
                "kubeproxy_proxy_livez",
                "Answers of the /livez endpoint by HTTP status",
            ),
            conntrack_duration: r.add_with(
                "kubeproxy_conntrack_reconciler_sync_duration_seconds",
                "Time each cleanup of stale conntrack flows took, in seconds",
                hist(sync_histogram),
            ),
            conntrack_deleted: r.add(
                "kubeproxy_conntrack_reconciler_deleted_entries",
                "Conntrack flows deleted by the stale-flow cleanup",
            ),
            nftables_sync_failures: r.add_if(
                nft,
                "kubeproxy_sync_proxy_rules_nftables_sync_failures",
                "Failed nftables transactions",
            ),
            nftables_cleanup_failures: r.add_if(
                nft,
                "kubeproxy_sync_proxy_rules_nftables_cleanup_failures",
                "Failed removals of stale nftables objects \
                 (kproxy removes them in the sync's transaction)",
            ),
            iptables_total: r.add_if(
                !nft,
                "kubeproxy_sync_proxy_rules_iptables_total",
                "iptables rules kproxy owns, by table",
            ),
            iptables_last: r.add_if(
                !nft,
                "kubeproxy_sync_proxy_rules_iptables_last",
                "iptables rules kproxy wrote in the last sync, by table",
            ),
            iptables_restore_failures: r.add_if(
                !nft,
                "kubeproxy_sync_proxy_rules_iptables_restore_failures",
                "Failed iptables-restore runs",
            ),
            iptables_partial_restore_failures: r.add_if(
                !nft,
                "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
                "Failed iptables-restore runs of partial syncs (the next sync is full)",
            ),
            bytes_written: r.add(
                "kproxy_sync_bytes_written",
                "Bytes sent to the kernel by syncs",
            ),
            bytes_last: r.add(
                "kproxy_sync_bytes_last",
                "Bytes sent to the kernel by the last sync",
            ),
            objects_written: r.add(
                "kproxy_sync_objects_written",
                "Rules or statements sent to the kernel by syncs",
            ),
            objects_total: r.add(
                "kproxy_rules",
                "Rules or statements kproxy owns after the last sync",
            ),
            syncs: r.add("kproxy_syncs", "Successful syncs by kind (full, partial)"),
            sync_failures: r.add(
                "kproxy_sync_failures",
                "Failed syncs by kind (full, partial)",
            ),
            drift_repairs: r.add(
                "kproxy_drift_repairs",
                "Syncs forced because the kernel no longer held kproxy's rules",
            ),
            invalid_objects: r.add(
                "kproxy_invalid_objects",
                "Objects or fields skipped as invalid in the current state",
            ),
            invalid_objects_total: r.add(
                "kproxy_invalid_objects_seen",
                "Distinct invalid objects or fields seen since start",
            ),
            service_ports: r.add("kproxy_service_ports", "Service ports in the service graph"),
            endpoints: r.add("kproxy_endpoints", "Endpoints in the service graph"),
            source_errors: r.add(
                "kproxy_source_errors",
                "1 while a source watcher (by kind) is failing: \
                 from its error until the API server answers it again",
            ),
            source_errors_total: r.add(
                "kproxy_source_watch_errors",
                "Errors of the source watchers by kind (each failed list or watch request)",
            ),
            registry: r.0,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// kube-proxy's two nfacct packet counters, read from nfnetlink_acct at
/// scrape time (kube-proxy's `ctStateInvalidPacketsCollector` and
/// `localhostNodePortsAcceptedPacketsCollector`): a counter that cannot be
/// read (the kernel has no nfnetlink_acct, or the counter is gone) is left
/// out of the exposition, with a debug log.
#[derive(Debug, Default)]
struct NfacctCollector {
    /// The socket, opened on the first scrape (this process's namespace).
    sock: std::sync::Mutex<Option<kproxy_netlink::NfSocket>>,
}

/// The metric (without `_total`, which the encoder appends) of each
/// counter.
const NFACCT_METRICS: [(&str, &str, &str); 2] = [
    (
        kproxy_iptables::NFACCT_CT_STATE_INVALID,
        "kubeproxy_iptables_ct_state_invalid_dropped_packets",
        "packets dropped by iptables to work around conntrack problems",
    ),
    (
        kproxy_iptables::NFACCT_LOCALHOST_NODEPORTS,
        "kubeproxy_iptables_localhost_nodeports_accepted_packets",
        "Number of packets accepted on nodeports of loopback interface",
    ),
];

impl NfacctCollector {
    fn read(&self, counter: &str) -> Option<u64> {
        let mut guard = self.sock.lock().ok()?;
        let sock = match kproxy_netlink::NfSocket::kept(&mut guard, None) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "nfacct socket");
                return None;
            }
        };
        match kproxy_netlink::acct::get(sock, counter) {
            Ok(c) => Some(c.packets),
            Err(e) => {
                tracing::debug!(counter, error = %e, "reading an nfacct counter");
                if !matches!(e, kproxy_netlink::Error::Kernel { .. }) {
                    *guard = None;
                }
                None
            }
        }
    }
}

impl prometheus_client::collector::Collector for NfacctCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        for (counter, name, help) in NFACCT_METRICS {
            if let Some(packets) = self.read(counter) {
                let c = ConstCounter::new(packets);
                let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
                c.encode(m)?;
            }
        }
        Ok(())
    }
}

/// The metrics listener's handler: `/metrics` and the debug endpoints
/// `/rules`, `/graph`, `/status`. `/rules` and `/graph` are rendered on
/// the blocking pool, once per sync however many clients ask
/// ([`crate::http::DocCache`]).
pub fn handler(shared: std::sync::Arc<crate::state::Shared>) -> crate::http::Handler {
    use crate::http::{DocAnswer, Reply};
    std::sync::Arc::new(move |path: &str| {
        let shared = shared.clone();
        let path = path.to_string();
        Box::pin(async move {
            let doc = |answer: DocAnswer, missing: &str| match answer {
                DocAnswer::Doc(text) => Reply::bytes(200, "text/plain; charset=utf-8", text),
                DocAnswer::Nothing => Reply::text(503, missing),
                DocAnswer::Busy => {
                    let mut r = Reply::text(
                        503,
                        "busy: earlier versions are still being downloaded; retry later\n",
                    );
                    r.headers.push(("Retry-After", "10".into()));
                    r
                }
            };
            match path.as_str() {
                "/metrics" => {
                    let mut r = Reply::text(200, shared.metrics.encode());
                    r.content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                    r
                }
                "/rules" => {
                    let key = shared.sync_generation();
                    let s = shared.clone();
                    let answer = shared.rules_doc.get(key, move || s.rules()).await;
                    doc(answer, "no ruleset applied yet\n")
                }
                "/graph" => {
                    let key = shared.sync_generation();
                    let s = shared.clone();
                    let answer = shared
                        .graph_doc
                        .get(key, move || {
                            let g = s.status().graph.clone()?;
                            Some(kproxy_graph::display::graph(&g))
                        })
                        .await;
                    doc(answer, "no graph built yet\n")
                }
                "/status" => Reply::json(200, status_json(&shared.status()).to_string()),
                "/" => Reply::text(200, "kproxy: /metrics /rules /graph /status\n"),
                _ => Reply::text(404, "404 page not found\n"),
            }
        })
    })
}

fn status_json(st: &crate::state::Status) -> serde_json::Value {
    let t = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok())
            .map(|t| t.to_string())
    };
    serde_json::json!({
        "backend": st.backend.map(|b| b.as_str()),
        "source": st.source,
        "sourceErrors": st.source_errors,
        "dryRun": st.dry_run,
        "lastSync": t(st.last_sync),
        "lastFullSync": t(st.last_full_sync),
        "lastSyncStats": st.last_stats.as_ref().map(|s| serde_json::json!({
            "full": s.full,
            "services": s.services,
            "endpoints": s.endpoints,
            "rulesTotal": s.rules_total,
            "rulesWritten": s.rules_written,
            "bytesWritten": s.bytes_written,
        })),
        "syncs": st.syncs,
        "failures": st.failures,
        "consecutiveFailures": st.consecutive_failures,
        "lastError": st.last_error.as_ref().map(|(when, e)| serde_json::json!({"time": t(Some(*when)), "error": e})),
        "driftRepairs": st.drift_repairs,
        "invalidObjects": st.warnings,
    })
}
