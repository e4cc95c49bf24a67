//! Kernel tests (root, network namespaces): the seed fixture's rules,
//! applied by the backend, carry real connections to both pods.

mod common;

use kproxy_graph::{Backend, ProxyMode};
use kproxy_nftables::{NftablesBackend, TransportKind};
use kproxy_testkit::load_fixture;
use kproxy_testkit::{Topology, echo_server, probe, probe_many};

#[test]
fn seed_clusterip_and_nodeport_reach_both_pods() {
    let topo = Topology::seed("nft", &["10.244.1.5", "10.244.2.4"]);
    let _echo = echo_server(&topo.pod, "0.0.0.0:80");
    // Before kproxy: the ClusterIP goes nowhere.
    assert!(probe(topo.client.name(), "10.107.33.105:80").is_err());

    let graph = load_fixture("seed", ProxyMode::Nftables);
    let mut backend = NftablesBackend::in_netns(topo.node.name());
    backend.sync(&graph, None).expect("full sync");
    assert!(
        backend.check().expect("check"),
        "no drift right after a sync"
    );

    let both = answers(&["10.244.1.5", "10.244.2.4"]);
    // ClusterIP from outside (prerouting), from the node (output), and the
    // NodePort on the node's primary address from outside.
    for (ns, addr) in [
        (topo.client.name(), "10.107.33.105:80"),
        (topo.node.name(), "10.107.33.105:80"),
        (topo.client.name(), "192.168.49.2:30007"),
    ] {
        let seen = probe_many(ns, addr, 40);
        assert_eq!(seen, both, "{addr} from {ns}");
    }
    // A wrong port of the ClusterIP is rejected (connection refused fast),
    // not routed onward.
    let err = probe(topo.client.name(), "10.107.33.105:81").expect_err("wrong port");
    assert!(
        err.contains("refused") || err.contains("unreachable"),
        "{err}"
    );

    // Drift: someone deletes our table; check() notices.
    topo.node.exec_all(&["nft delete table ip kproxy"]);
    assert!(!backend.check().expect("check"));
    backend.cleanup().expect("cleanup");
}

/// `addrs` as the set of answers the echo servers give.
fn answers(addrs: &[&str]) -> std::collections::BTreeSet<String> {
    addrs.iter().map(|s| s.to_string()).collect()
}

/// The graph of `svcs` with `node_ip` as the node's only NodePort
/// address (the test topology's node), synced into the topology's node.
fn program_node(topo: &Topology, svcs: &[common::cluster::Svc], node_ip: &str) -> NftablesBackend {
    let mut g = common::cluster::graph(svcs);
    let ip: std::net::IpAddr = node_ip.parse().expect("ip");
    if let Some(fg) = g.families.get_mut(&kproxy_graph::IpFamily::of(&ip)) {
        fg.nodeport_ips = kproxy_graph::NodePortIps::Only(vec![ip]);
    }
    let mut backend = NftablesBackend::in_netns(topo.node.name());
    backend.sync(&g, None).expect("full sync");
    backend
}

/// UDP services load-balance too, for ClusterIP and NodePort (the shared
/// chains' data maps are per protocol: see `LbChain::chain`).
#[test]
fn udp_service_reaches_both_pods() {
    use common::cluster::Svc;
    use kproxy_testkit::{udp_echo_server, udp_probe};
    let topo = Topology::seed("nft", &["10.244.1.5", "10.244.2.4"]);
    let _a = udp_echo_server(&topo.pod, "10.244.1.5:5353");
    let _b = udp_echo_server(&topo.pod, "10.244.2.4:5353");
    let mut dns = Svc::new("kube-system", "dns", "10.96.0.10", 53)
        .ep("10.244.1.5", "node-2")
        .ep("10.244.2.4", "node-3");
    dns.protocol = "UDP";
    dns.target_port = 5353;
    dns.node_port = Some(30053);
    // The test topology's node address.
    let _backend = program_node(&topo, &[dns], "192.168.49.2");
    let both = answers(&["10.244.1.5", "10.244.2.4"]);
    for addr in ["10.96.0.10:53", "192.168.49.2:30053"] {
        let seen: std::collections::BTreeSet<String> = (0..40)
            .map(|_| udp_probe(topo.client.name(), addr).unwrap_or_else(|e| format!("error: {e}")))
            .collect();
        assert_eq!(seen, both, "UDP {addr}");
    }
}

/// A namespace with kube-proxy's tables (ip and ip6), then `more`, then a
/// table of another program (`inet someone-else`).
fn foreign_tables(prefix: &str, more: &[&str]) -> kproxy_testkit::NetNs {
    let ns = kproxy_testkit::NetNs::new(prefix);
    ns.exec_all(&[
        "nft add table ip kube-proxy",
        "nft add table ip6 kube-proxy",
    ]);
    ns.exec_all(more);
    ns.exec_all(&["nft add table inet someone-else"]);
    ns
}

/// Only the other program's table is left.
fn assert_only_someone_else(ns: &kproxy_testkit::NetNs) {
    let tables = ns.exec(&["nft", "list", "tables"]);
    assert_eq!(tables.trim(), "table inet someone-else", "{tables}");
}

/// `cleanup` removes kproxy's tables and kube-proxy's, and nothing else;
/// `check` reports drift when the `services` chain was tampered with.
#[test]
fn cleanup_removes_kproxy_and_kube_proxy_tables() {
    let ns = foreign_tables("nft", &[]);
    let graph = load_fixture("seed", ProxyMode::Nftables);
    let mut backend = NftablesBackend::in_netns(ns.name());
    backend.sync(&graph, None).expect("full sync");
    assert!(backend.check().expect("check"));
    ns.exec_all(&["nft flush chain ip kproxy services"]);
    assert!(
        !backend.check().expect("check"),
        "a flushed services chain is drift"
    );
    backend.cleanup().expect("cleanup");
    assert_only_someone_else(&ns);
    // Cleaning up twice is fine (nothing left to delete).
    backend.cleanup().expect("second cleanup");
}

/// With the netlink transport, `cleanup_foreign` and `cleanup` remove
/// kube-proxy's tables without running any program: the backend's `nft`
/// is given a PATH where nothing can be found.
#[test]
fn cleanup_foreign_over_netlink_needs_no_nft() {
    let ns = foreign_tables("nftnl", &["nft add chain ip kube-proxy services"]);
    let no_nft = kproxy_nftables::Nft::with_runner(
        kproxy_exec::Runner::in_netns(ns.name()).with_env("PATH", "/nonexistent"),
    );
    assert!(no_nft.version().is_err(), "nft must not be reachable");
    let mut backend = NftablesBackend::with_nft(no_nft).transport(TransportKind::Netlink);
    backend.cleanup_foreign().expect("cleanup_foreign");
    assert_only_someone_else(&ns);
    // Nothing left: still fine.
    backend.cleanup_foreign().expect("second cleanup_foreign");
    ns.exec_all(&["nft add table ip6 kube-proxy"]);
    backend.cleanup().expect("cleanup");
    assert_only_someone_else(&ns);
}

/// This machine (kernel 6.x, nft 1.0.6) runs the nftables backend.
#[test]
fn supported_here() {
    kproxy_nftables::supported().expect("kernel >= 5.13 and nft >= 1.0.1 here");
    let v = kproxy_nftables::Nft::host()
        .version()
        .expect("nft --version");
    assert!(v >= (1, 0, 1), "{v:?}");
}

/// IPv6: a ClusterIP and a NodePort of the ip6 table reach both pods.
#[test]
fn ipv6_service_reaches_both_pods() {
    use common::cluster::Svc;
    let topo = Topology::seed("nft", &["10.244.1.5"]);
    topo.node.exec_all(&[
        "sysctl -qw net.ipv6.conf.all.forwarding=1",
        "ip -6 addr add fd00:49::2/64 dev vc nodad",
        "ip -6 addr add fd00:10::1/64 dev vp nodad",
        "ip -6 route add default via fd00:49::10",
    ]);
    topo.client.exec_all(&[
        "ip -6 addr add fd00:49::10/64 dev eth0 nodad",
        "ip -6 route add fd00:30::/108 via fd00:49::2",
    ]);
    topo.pod.exec_all(&[
        "ip -6 addr add fd00:10::5/64 dev eth0 nodad",
        "ip -6 addr add fd00:10::6/64 dev eth0 nodad",
        "ip -6 route add default via fd00:10::1",
    ]);
    let _echo = echo_server(&topo.pod, "[::]:80");
    let mut web = Svc::new("web", "web6", "fd00:30::10", 80)
        .ep("fd00:10::5", "node-2")
        .ep("fd00:10::6", "node-3");
    web.node_port = Some(30080);
    let _backend = program_node(&topo, &[web], "fd00:49::2");
    let both = answers(&["fd00:10::5", "fd00:10::6"]);
    for addr in ["[fd00:30::10]:80", "[fd00:49::2]:30080"] {
        assert_eq!(probe_many(topo.client.name(), addr, 40), both, "{addr}");
    }
}

/// Partial damage is drift: each case is seen by `check` (counts read
/// through netlink) and a full sync restores the table.
#[test]
fn partial_damage_is_detected_and_repaired() {
    let ns = kproxy_testkit::NetNs::new("nftdrift");
    let graph = load_fixture("seed", ProxyMode::Nftables);
    let mut backend = NftablesBackend::in_netns(ns.name());
    backend.sync(&graph, None).expect("full sync");
    // The table without the generation, which every sync bumps.
    let listing = || -> String {
        ns.exec(&["nft", "list", "table", "ip", "kproxy"])
            .lines()
            .filter(|l| !l.trim_start().starts_with("elements = { 0x"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let pristine = listing();
    let jump_handle = |chain: &str| -> String {
        let out = ns.exec(&["nft", "-a", "list", "chain", "ip", "kproxy", chain]);
        let line = out
            .lines()
            .find(|l| l.contains("jump services"))
            .unwrap_or_else(|| panic!("no jump services in {chain}: {out}"));
        line.rsplit("handle ")
            .next()
            .expect("handle")
            .trim()
            .to_string()
    };
    type Damage<'a> = Box<dyn Fn() + 'a>;
    let ns = &ns;
    let nft = |cmd: &'static str| -> Damage { Box::new(move || ns.exec_all(&[cmd])) };
    let cases: Vec<(&str, Damage)> = vec![
        (
            "one element of service-ips deleted",
            nft("nft delete element ip kproxy service-ips { 10.107.33.105 . tcp . 80 }"),
        ),
        (
            "jump services deleted from nat-prerouting",
            Box::new(|| {
                let h = jump_handle("nat-prerouting");
                ns.exec(&[
                    "nft",
                    "delete",
                    "rule",
                    "ip",
                    "kproxy",
                    "nat-prerouting",
                    "handle",
                    &h,
                ]);
            }),
        ),
        (
            "an endpoint map flushed",
            nft("nft flush map ip kproxy cluster-endpoints-tcp"),
        ),
        (
            "the services chain flushed",
            nft("nft flush chain ip kproxy services"),
        ),
        (
            "a rule added to a chain",
            nft("nft add rule ip kproxy services counter"),
        ),
        ("the table deleted", nft("nft delete table ip kproxy")),
    ];
    let mut missed = Vec::new();
    for (what, damage) in &cases {
        assert!(backend.check().expect("check"), "{what}: in sync before");
        damage();
        if backend.check().expect("check") {
            missed.push(*what);
        }
        // The daemon then forces a full sync.
        let stats = backend.sync(&graph, None).expect("repair");
        assert!(stats.full, "{what}");
        assert!(backend.check().expect("check"), "{what}: in sync after");
        let repaired = listing();
        assert_eq!(
            kproxy_testkit::line_diff(&pristine, &repaired),
            "",
            "{what}: repaired"
        );
    }
    assert!(missed.is_empty(), "drift not seen: {missed:?}");
    // Entries the kernel adds to the dynamic affinity set are not drift.
    ns.exec_all(&["nft add element ip kproxy affinity { 10.0.0.9 . 1 . 2 timeout 1h }"]);
    assert!(
        backend.check().expect("check"),
        "affinity entries are not drift"
    );
    backend.cleanup().expect("cleanup");
}

/// Sets above the exact-count limit are read one reply datagram deep: a
/// flushed map is drift, a missing element of it is left to the periodic
/// full sync.
#[test]
fn large_sets_are_probed_for_emptiness() {
    use common::cluster::{bulk, graph};
    let ns = kproxy_testkit::NetNs::new("nftprobe");
    // 1,000 endpoints: more than one ~32 KiB reply of the endpoint map.
    let svcs = bulk(500, "ns", "10.96", ["10.244", "10.245"]);
    let g = graph(&svcs);
    let mut backend = NftablesBackend::in_netns(ns.name()).drift_exact_limit(100);
    backend.sync(&g, None).expect("full sync");
    assert!(backend.check().expect("check"), "in sync");
    // One element of the endpoint map gone.
    let delete_one = || {
        ns.exec_all(&[
            "nft delete element ip kproxy cluster-endpoints-tcp { 10.96.0.1 . tcp . 80 . 0 }",
        ])
    };
    delete_one();
    assert!(
        backend.check().expect("check"),
        "one element of a probed map is not seen"
    );
    ns.exec_all(&["nft flush map ip kproxy cluster-endpoints-tcp"]);
    assert!(
        !backend.check().expect("check"),
        "a flushed probed map is drift"
    );
    backend.sync(&g, None).expect("repair");
    assert!(backend.check().expect("check"), "in sync after");
    // Exact counts (the default limit) see the single element.
    let mut backend = backend.drift_exact_limit(kproxy_nftables::drift::EXACT_LIMIT);
    assert!(backend.check().expect("check"));
    delete_one();
    assert!(
        !backend.check().expect("check"),
        "counted: one element seen"
    );
}
