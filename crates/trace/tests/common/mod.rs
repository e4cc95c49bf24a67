//! Helpers shared by the tracer's integration tests.

use kproxy_graph::{Backend, BackendKind, ServiceGraph};
use kproxy_iptables::{Flavour, IptablesBackend};
use kproxy_nftables::NftablesBackend;

/// The full ruleset text a backend renders for `graph`.
pub fn render(kind: BackendKind, graph: &ServiceGraph) -> String {
    let backend: Box<dyn Backend> = match kind {
        BackendKind::IptablesLegacy => Box::new(IptablesBackend::new(Flavour::Legacy)),
        BackendKind::IptablesNft => Box::new(IptablesBackend::new(Flavour::Nft)),
        BackendKind::Nftables => Box::new(NftablesBackend::new()),
    };
    backend.render_full(graph).expect("renders")
}
