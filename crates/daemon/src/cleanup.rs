//! Removing rules: `kproxy cleanup`, and other modes' leftovers after the
//! daemon's first successful sync.
//!
//! Each backend's [`Backend::cleanup`] removes what that backend (and
//! kube-proxy's equivalent mode) installed. After a switch, every other
//! backend's cleanup runs, then the current backend's
//! [`Backend::cleanup_foreign`], which removes kube-proxy's leftovers of
//! the same mode without touching kproxy's own rules (the nftables backend
//! deletes kube-proxy's `kube-proxy` tables and keeps its `kproxy` ones).

use kproxy_graph::{Backend, BackendKind};

use crate::backends;
use crate::cli::CleanupBackend;

/// Run one backend's cleanup; errors as text.
fn backend_cleanup(kind: BackendKind) -> Vec<String> {
    match backends::make_backend(kind) {
        Ok(mut b) => match b.cleanup() {
            Ok(()) => Vec::new(),
            Err(errs) => errs.into_iter().map(|e| e.to_string()).collect(),
        },
        Err(e) => vec![format!("{kind}: {e:#}")],
    }
}

/// After the first successful sync: remove every other mode's rules
/// (kproxy's and kube-proxy's), then kube-proxy's leftovers of the
/// current mode. Failures are logged, never fatal: the node's own rules
/// are in place.
pub fn other_modes(current: &mut dyn Backend) {
    let kind = current.kind();
    for other in BackendKind::ALL {
        if other == kind {
            continue;
        }
        for e in backend_cleanup(other) {
            tracing::warn!(backend = %other, error = %e, "cleaning up another mode's rules");
        }
    }
    if let Err(errs) = current.cleanup_foreign() {
        for e in errs {
            tracing::warn!(backend = %kind, error = %e, "cleaning up kube-proxy's rules of this mode");
        }
    }
}

/// `kproxy cleanup`: returns every error.
pub fn run(which: CleanupBackend) -> Vec<String> {
    which
        .kinds()
        .into_iter()
        .flat_map(backend_cleanup)
        .collect()
}
