//! Every fixture's Services, traced: for each Service, its representative
//! connections (`kproxy trace --service`) and their outcome on every
//! backend, compared with the checked-in golden files (`make golden`
//! regenerates them). A readable record of what each backend does, and of
//! every behaviour change a generator makes.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use kproxy_graph::{Backend, BackendKind, ProxyMode};
use kproxy_iptables::{Flavour, IptablesBackend};
use kproxy_nftables::NftablesBackend;
use kproxy_testkit::{assert_golden, fixtures, load_fixture, repo_root};
use kproxy_trace::{Node, service_connections, tracer_for};

fn backend(kind: BackendKind) -> Box<dyn Backend> {
    match kind {
        BackendKind::IptablesLegacy => Box::new(IptablesBackend::new(Flavour::Legacy)),
        BackendKind::IptablesNft => Box::new(IptablesBackend::new(Flavour::Nft)),
        BackendKind::Nftables => Box::new(NftablesBackend::new()),
    }
}

#[test]
fn service_outcomes_match_golden_files() {
    let names = fixtures();
    assert!(names.len() >= 10, "fixtures missing: {names:?}");
    for name in names {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# fixture {name}: every Service's connections, per backend"
        );
        // iptables-nft loads the same text as iptables-legacy.
        for kind in [BackendKind::IptablesLegacy, BackendKind::Nftables] {
            let mode = if kind == BackendKind::Nftables {
                ProxyMode::Nftables
            } else {
                ProxyMode::Iptables
            };
            let graph = load_fixture(&name, mode);
            let text = backend(kind).render_full(&graph).expect("renders");
            let tracer = tracer_for(kind, &text).expect("parses");
            let node = Node::new(graph.node.ips.clone());
            let services: BTreeSet<(String, String)> = graph
                .families
                .values()
                .flat_map(|f| f.services.keys())
                .map(|k| (k.namespace.clone(), k.name.clone()))
                .collect();
            let _ = writeln!(out, "\n## {kind}");
            for (ns, svc) in services {
                let _ = writeln!(out, "{ns}/{svc}");
                for p in service_connections(&graph, &ns, &svc) {
                    let outcome = tracer
                        .trace(&p, &node)
                        .unwrap_or_else(|e| panic!("{name} {kind} {p}: {e}"))
                        .outcome();
                    let _ = writeln!(out, "  {p}: {outcome}");
                }
            }
        }
        let path = repo_root()
            .join("crates/trace/tests/golden")
            .join(format!("{name}.txt"));
        assert_golden(&path, &out);
    }
}
