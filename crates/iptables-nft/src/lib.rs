//! kproxy backend iptables-nft: kube-proxy's iptables rules through `iptables-nft-restore` (iptables rules on nf_tables).
//!
//! [`IptablesNftBackend`] is a thin wrapper: generation, the restore writer, partial
//! syncs, the canary and cleanup live in `kproxy-iptables`
//! ([`kproxy_iptables::IptablesBackend`]); this crate fixes the flavour
//! ([`Flavour::Nft`]) and so the binaries.

#![deny(missing_docs)]

use kproxy_graph::{
    ApplyError, Backend, BackendKind, ChangeSet, GenError, ServiceGraph, SyncStats,
};
use kproxy_iptables::{Flavour, IptablesBackend};

/// The nft-flavour iptables backend.
#[derive(Debug)]
pub struct IptablesNftBackend {
    inner: IptablesBackend,
}

impl IptablesNftBackend {
    /// The backend programming the host's tables.
    pub fn new() -> Self {
        IptablesNftBackend {
            inner: IptablesBackend::new(Flavour::Nft),
        }
    }

    /// The backend running every command inside network namespace `name`
    /// (`ip netns exec NAME ...`), for tests.
    pub fn in_netns(name: &str) -> Self {
        IptablesNftBackend {
            inner: IptablesBackend::in_netns(Flavour::Nft, name),
        }
    }

    /// The shared backend underneath (last applied IR, transport).
    pub fn inner(&self) -> &IptablesBackend {
        &self.inner
    }
}

impl Default for IptablesNftBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for IptablesNftBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::IptablesNft
    }

    fn render_full(&self, graph: &ServiceGraph) -> Result<String, GenError> {
        self.inner.render_full(graph)
    }

    fn sync(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        self.inner.sync(graph, changes)
    }

    fn check(&mut self) -> Result<bool, ApplyError> {
        self.inner.check()
    }

    fn last_applied(&self) -> Option<String> {
        self.inner.last_applied()
    }

    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
        self.inner.cleanup()
    }
}
