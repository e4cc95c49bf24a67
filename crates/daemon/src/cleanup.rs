//! Removing rules: `kproxy cleanup`, and other modes' leftovers after the
//! daemon's first successful sync.
//!
//! Each backend's `cleanup` removes what that backend (and kube-proxy's
//! equivalent mode) installed. One case needs care: when kproxy runs the
//! nftables backend, kube-proxy's nftables tables must go but kproxy's own
//! table must stay, so kube-proxy's tables are deleted here directly.

use std::process::{Command, Stdio};

use kproxy_graph::BackendKind;

use crate::backends;
use crate::cli::CleanupBackend;

/// kube-proxy's nftables mode tables (deleted by upstream's
/// `platformCleanup` in cmd/kube-proxy/app/server_linux.go).
const KUBE_PROXY_NFT_TABLES: [&str; 2] = ["ip kube-proxy", "ip6 kube-proxy"];

/// Delete kube-proxy's nftables tables, if present. Returns the errors.
pub fn kube_proxy_nft_tables() -> Vec<String> {
    let mut errors = Vec::new();
    for table in KUBE_PROXY_NFT_TABLES {
        let (family, name) = table.split_once(' ').unwrap_or(("ip", table));
        // `list` first: deleting a missing table is an error we do not want
        // to report.
        let exists = Command::new("nft")
            .args(["list", "table", family, name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !exists {
            continue;
        }
        match Command::new("nft")
            .args(["delete", "table", family, name])
            .stderr(Stdio::piped())
            .output()
        {
            Ok(o) if o.status.success() => {
                tracing::info!(table, "removed kube-proxy's nftables table");
            }
            Ok(o) => errors.push(format!(
                "nft delete table {table}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("nft delete table {table}: {e}")),
        }
    }
    errors
}

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
/// (kproxy's and kube-proxy's). Failures are logged, never fatal: the
/// node's own rules are in place.
pub fn other_modes(current: BackendKind) {
    for kind in BackendKind::ALL {
        if kind == current {
            continue;
        }
        for e in backend_cleanup(kind) {
            tracing::warn!(backend = %kind, error = %e, "cleaning up another mode's rules");
        }
    }
    if current == BackendKind::Nftables {
        for e in kube_proxy_nft_tables() {
            tracing::warn!(error = %e, "cleaning up kube-proxy's nftables tables");
        }
    }
}

/// `kproxy cleanup`: returns every error.
pub fn run(which: CleanupBackend) -> Vec<String> {
    let kinds: Vec<BackendKind> = match which {
        CleanupBackend::All => BackendKind::ALL.to_vec(),
        CleanupBackend::IptablesLegacy => vec![BackendKind::IptablesLegacy],
        CleanupBackend::IptablesNft => vec![BackendKind::IptablesNft],
        CleanupBackend::Nftables => vec![BackendKind::Nftables],
    };
    let mut errors = Vec::new();
    for kind in &kinds {
        errors.extend(backend_cleanup(*kind));
    }
    if kinds.contains(&BackendKind::Nftables) {
        errors.extend(kube_proxy_nft_tables());
    }
    errors
}
