//! State shared between the reconcile loop and the HTTP listeners.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use kproxy_graph::{Backend, BackendKind, ServiceGraph, SyncStats};

use crate::health::ProxyHealth;
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
pub struct Shared {
    /// Metrics.
    pub metrics: Metrics,
    health: Mutex<ProxyHealth>,
    status: Mutex<Status>,
    backend: Mutex<Option<SharedBackend>>,
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
        })
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
