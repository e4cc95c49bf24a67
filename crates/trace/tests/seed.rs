//! The seed article's walk: a NodePort connection from outside the node,
//! traced through every backend's rendered ruleset.

use kproxy_graph::{Backend, BackendKind, ProxyMode, ServiceGraph};
use kproxy_iptables::{Flavour, IptablesBackend};
use kproxy_nftables::NftablesBackend;
use kproxy_trace::{Node, Packet, report, tracer_for};

fn render(kind: BackendKind) -> (String, ServiceGraph) {
    let mode = match kind {
        BackendKind::Nftables => ProxyMode::Nftables,
        _ => ProxyMode::Iptables,
    };
    let graph = kproxy_testkit::load_fixture("seed", mode);
    let backend: Box<dyn Backend> = match kind {
        BackendKind::IptablesLegacy => Box::new(IptablesBackend::new(Flavour::Legacy)),
        BackendKind::IptablesNft => Box::new(IptablesBackend::new(Flavour::Nft)),
        BackendKind::Nftables => Box::new(NftablesBackend::new()),
    };
    (backend.render_full(&graph).expect("renders"), graph)
}

fn seed_packet() -> Packet {
    Packet::new(
        "203.0.113.2".parse().expect("ip"),
        "192.168.49.2".parse().expect("ip"),
        30007,
        kproxy_graph::Protocol::Tcp,
    )
}

/// The seed's NodePort connection through `kind`'s rendered rules.
fn trace_seed(kind: BackendKind) -> kproxy_trace::Trace {
    let (text, graph) = render(kind);
    let tracer = tracer_for(kind, &text).expect("parses");
    tracer
        .trace(&seed_packet(), &Node::new(graph.node.ips.clone()))
        .expect("traces")
}

#[test]
fn seed_nodeport_through_iptables() {
    let trace = trace_seed(BackendKind::IptablesLegacy);
    let out = report::text(&trace);
    println!("{out}");
    let path = report::path_summary(&trace);
    assert!(
        path.starts_with("PREROUTING -> KUBE-SERVICES -> KUBE-NODEPORTS -> KUBE-EXT-6NP7QLHXVWVVFBVL -> KUBE-SVC-6NP7QLHXVWVVFBVL -> KUBE-SEP-"),
        "{path}"
    );
    assert!(path.contains("(50%) / KUBE-SEP-"), "{path}");
    assert_eq!(
        trace.outcome().to_string(),
        "DNAT to 10.244.1.5:80 (50%) or 10.244.2.4:80 (50%), masqueraded"
    );
}

#[test]
fn seed_nodeport_through_nftables() {
    let trace = trace_seed(BackendKind::Nftables);
    println!("{}", report::text(&trace));
    assert_eq!(
        trace.outcome().to_string(),
        "DNAT to 10.244.1.5:80 (50%) or 10.244.2.4:80 (50%), masqueraded"
    );
}

#[test]
fn every_connection_to_the_seed_service_reaches_both_pods() {
    for kind in BackendKind::ALL {
        let (text, graph) = render(kind);
        let tracer = tracer_for(kind, &text).expect("parses");
        let packets = kproxy_trace::service_connections(&graph, "web", "web-service");
        // Pod, external and node clients to the ClusterIP, and the NodePort.
        assert_eq!(packets.len(), 4, "{packets:?}");
        let node = Node::new(graph.node.ips.clone());
        let traces: Vec<_> = packets
            .iter()
            .map(|p| tracer.trace(p, &node).expect("traces"))
            .collect();
        for t in &traces {
            let o = t.outcome();
            let targets: Vec<String> = o
                .parts
                .iter()
                .filter_map(|p| p.dnat.map(|d| d.to_string()))
                .collect();
            assert_eq!(
                targets,
                ["10.244.1.5:80", "10.244.2.4:80"],
                "{kind} {}: {o}",
                t.packet
            );
        }
        let dot = report::dot_many(&traces, "web/web-service");
        for p in &packets {
            assert!(dot.contains(&format!("\"{p}\" [label=")), "{dot}");
        }
        assert!(dot.contains("\"DNAT to 10.244.2.4:80\""), "{dot}");
    }
}
