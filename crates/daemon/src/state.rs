//! State shared between the reconcile loop and the HTTP listeners.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use kproxy_graph::{BackendKind, ServiceGraph, SyncStats};

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
    /// The graph last applied.
    pub graph: Option<Arc<ServiceGraph>>,
    /// The ruleset last applied, in the backend's syntax.
    pub rules: Option<String>,
}

/// Shared state.
pub struct Shared {
    /// Metrics.
    pub metrics: Metrics,
    health: Mutex<ProxyHealth>,
    status: Mutex<Status>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves data that is still consistent
    // enough to report; never propagate the poison.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// New shared state.
    pub fn new(health: ProxyHealth, status: Status) -> Arc<Self> {
        Arc::new(Shared {
            metrics: Metrics::new(),
            health: Mutex::new(health),
            status: Mutex::new(status),
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
}
