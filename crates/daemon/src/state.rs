//! State shared between the reconcile loop and the HTTP listeners.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use kproxy_graph::{Backend, BackendKind, ServiceGraph, SyncStats};

use crate::health::ProxyHealth;
use crate::http::DocCache;
use crate::metrics::Metrics;

/// What `/status` reports.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// The backend in use.
    pub backend: Option<BackendKind>,
    /// The source (`kube`, `file:PATH`).
    pub source: String,
    /// The source's current problems (API watch errors, unreadable files).
    pub source_errors: Vec<String>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// Last successful sync.
    pub last_sync: Option<SystemTime>,
    /// Last successful full sync.
    pub last_full_sync: Option<SystemTime>,
    /// Statistics of the last successful sync.
    pub last_stats: Option<SyncStats>,
    /// The last failure, with its time.
    pub last_error: Option<(SystemTime, String)>,
    /// Successful syncs.
    pub syncs: u64,
    /// Failed syncs.
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// Drift repairs.
    pub drift_repairs: u64,
    /// Current warnings (invalid objects).
    pub warnings: Vec<String>,
    /// The graph of the last sync: the one applied, unless that sync
    /// failed (see `last_error`). Dropped while a sync updates the graph
    /// in place, so holding it would cost a copy of the whole graph.
    pub graph: Option<Arc<ServiceGraph>>,
    /// The ruleset a dry run printed; `None` otherwise, and
    /// [`Shared::rules`] asks the backend for what it applied.
    pub rules: Option<String>,
}

/// The backend, shared by the reconcile loop and `/rules`.
pub type SharedBackend = Arc<Mutex<Box<dyn Backend>>>;

/// Shared state.
///
/// The HTTP listeners read it from a runtime of their own: the health and
/// status locks are only ever held for a copy or a field update, never
/// across a render or a kernel transaction; the backend lock is taken only
/// on the blocking pool.
pub struct Shared {
    /// Metrics.
    pub metrics: Metrics,
    health: Mutex<ProxyHealth>,
    status: Mutex<Status>,
    backend: Mutex<Option<SharedBackend>>,
    /// The runtime serving the HTTP listeners (health-check node ports
    /// included), when it is not the caller's.
    http: std::sync::OnceLock<tokio::runtime::Handle>,
    /// `/rules`, rendered on request and shared by concurrent clients.
    pub rules_doc: Arc<DocCache>,
    /// `/graph`, likewise.
    pub graph_doc: Arc<DocCache>,
}

/// Lock `m`, whatever a panicking holder left.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves data that is still consistent
    // enough to report; never propagate the poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// New shared state.
    pub fn new(health: ProxyHealth, status: Status) -> Arc<Self> {
        Arc::new(Shared {
            // kube-proxy's iptables-mode families unless told the backend.
            metrics: Metrics::new(
                status
                    .backend
                    .unwrap_or(kproxy_graph::BackendKind::IptablesNft),
            ),
            health: Mutex::new(health),
            status: Mutex::new(status),
            backend: Mutex::new(None),
            http: std::sync::OnceLock::new(),
            rules_doc: DocCache::new(2),
            graph_doc: DocCache::new(2),
        })
    }

    /// Serve HTTP from `handle` (set once, before any listener starts).
    pub fn set_http_runtime(&self, handle: tokio::runtime::Handle) {
        let _ = self.http.set(handle);
    }

    /// Where HTTP listeners run: the runtime set by
    /// [`Shared::set_http_runtime`], else the caller's.
    pub fn http_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.http
            .get()
            .cloned()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
    }

    /// A number that changes whenever a sync ends (successful or not):
    /// the version of `/rules` and `/graph`.
    pub fn sync_generation(&self) -> u64 {
        let st = self.status();
        st.syncs.wrapping_add(st.failures)
    }

    /// The health state.
    pub fn health(&self) -> MutexGuard<'_, ProxyHealth> {
        lock(&self.health)
    }

    /// The status.
    pub fn status(&self) -> MutexGuard<'_, Status> {
        lock(&self.status)
    }

    /// Register the backend whose applied ruleset [`Shared::rules`] renders.
    pub fn set_backend(&self, backend: SharedBackend) {
        *lock(&self.backend) = Some(backend);
    }

    /// The ruleset last applied, rendered now by the backend (waiting for
    /// a sync in progress), or what a dry run printed. `None` before the
    /// first sync, and after a failed sync until the next successful one
    /// when the backend forgets what it applied (nftables does: its next
    /// sync reloads everything); rendering it after every sync instead
    /// would cost more than an incremental sync.
    pub fn rules(&self) -> Option<String> {
        if let Some(text) = self.status().rules.clone() {
            return Some(text);
        }
        let backend = lock(&self.backend).clone()?;
        lock(&backend).last_applied()
    }
}
