//! Property test: random graphs, built through intake from generated
//! Services and EndpointSlices (hostile names included), always give
//! restore input that `iptables-restore --test` accepts (both flavours,
//! both families), that parses back, and whose only lines are chain
//! declarations, kproxy's rules and table markers: no input can inject a
//! rule. proptest drives the generators (`kproxy_testkit::draws`) and
//! shrinks a failing batch; `KPROXY_PROPTEST_CASES=N` runs N batches
//! instead of 6, and failures are kept in `property.proptest-regressions`.

use std::fmt::Write as _;

use kproxy_graph::{IpFamily, Objects, ProxyConfig, ServiceGraph};
use kproxy_iptables::IptablesTransport;
use kproxy_iptables::{Flavour, GenOptions, Runner, generate, parse_save};
use kproxy_testkit::{Draw, NetNs, TestRng, check_property, draws, sample_draws};
use serde_json::{Value, json};

const HOSTILE: &[&str] = &[
    "web",
    "a b",
    "quo\"te",
    "back\\slash",
    "single'quote",
    "new\nline",
    "\n-A INPUT -j DROP",
    "COMMIT",
    "-j",
    "*nat",
    "# comment",
    "tab\there",
    "ünïcødé-名前",
    "",
    "--comment",
    "x:y/z",
    "$(reboot)",
    "\r\n:KUBE-EVIL - [0:0]",
];

fn name(r: &mut TestRng) -> String {
    match r.below(4) {
        0 => format!("svc{}", r.below(1000)),
        1 => r.pick(HOSTILE).to_string(),
        2 => "n".repeat(1 + r.below(400) as usize),
        _ => format!("{}{}", r.pick(HOSTILE), r.below(10)),
    }
}

fn ip4(r: &mut TestRng, a: u8) -> String {
    format!("{a}.{}.{}.{}", r.below(256), r.below(256), 1 + r.below(254))
}

fn ip6(r: &mut TestRng) -> String {
    format!("fd00:{:x}::{:x}", r.below(0xffff), 1 + r.below(0xffff))
}

fn service(r: &mut TestRng, ns: &str, svc: &str, i: usize) -> (Value, Vec<(String, String)>) {
    let dual = r.chance(40);
    let v6_only = !dual && r.chance(15);
    let mut cluster_ips = Vec::new();
    if !v6_only {
        cluster_ips.push(format!("172.30.{}.{}", i / 250, 1 + i % 250));
    }
    if dual || v6_only {
        cluster_ips.push(format!("fd00:172:30::{:x}", i + 1));
    }
    let ty = *r.pick(&["ClusterIP", "NodePort", "LoadBalancer"]);
    let protos = ["TCP", "UDP", "SCTP"];
    let nports = 1 + r.below(3) as usize;
    let mut ports = Vec::new();
    let mut port_names = Vec::new();
    for p in 0..nports {
        let pname = if nports == 1 && r.chance(50) {
            String::new()
        } else {
            format!("{}{p}", name(r))
        };
        let proto = *r.pick(&protos);
        let mut port = json!({"name": pname, "port": 1 + r.below(65535), "protocol": proto,
            "targetPort": 1 + r.below(65535)});
        if ty != "ClusterIP" {
            port["nodePort"] = json!(30000 + r.below(2768));
        }
        port_names.push((pname, proto.to_string()));
        ports.push(port);
    }
    let mut spec = json!({
        "type": ty,
        "clusterIP": cluster_ips[0],
        "clusterIPs": cluster_ips,
        "ports": ports,
    });
    if r.chance(30) {
        spec["externalIPs"] = json!([ip4(r, 192), ip6(r)]);
    }
    if ty == "LoadBalancer" || r.chance(10) {
        spec["externalTrafficPolicy"] = json!(*r.pick(&["Cluster", "Local"]));
        if r.chance(50) {
            spec["healthCheckNodePort"] = json!(30000 + r.below(2768));
        }
        if r.chance(40) {
            spec["loadBalancerSourceRanges"] =
                json!(["203.0.113.0/25", "192.168.0.0/24", "2001:db8::/64", " bad "]);
        }
    }
    if r.chance(20) {
        spec["internalTrafficPolicy"] = json!("Local");
    }
    if r.chance(20) {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 1 + r.below(86400)}});
    }
    let mut status = json!({});
    if ty == "LoadBalancer" {
        let mut ingress = vec![json!({"ip": ip4(r, 1)}), json!({"ip": ip6(r)})];
        if r.chance(30) {
            ingress.push(json!({"ip": ip4(r, 5), "ipMode": "Proxy"}));
        }
        status = json!({"loadBalancer": {"ingress": ingress}});
    }
    (
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc, "namespace": ns}, "spec": spec, "status": status}),
        port_names,
    )
}

fn slice(r: &mut TestRng, ns: &str, svc: &str, ports: &[(String, String)], v6: bool) -> Value {
    let n = r.below(6);
    let mut eps = Vec::new();
    for _ in 0..n {
        let addr = if v6 { ip6(r) } else { ip4(r, 10) };
        let mut ep = json!({"addresses": [addr], "conditions": {
            "ready": r.chance(70), "serving": r.chance(80), "terminating": r.chance(20)}});
        if r.chance(50) {
            ep["nodeName"] = json!(*r.pick(&["test-node", "node2", "node3"]));
        }
        if r.chance(15) {
            ep["hints"] = json!({"forZones": [{"name": "zone-a"}]});
        }
        eps.push(ep);
    }
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": 1 + r.below(65535), "protocol": p}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-{}", r.below(1000)), "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc}},
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "ports": ports, "endpoints": eps})
}

fn random_graph(r: &mut TestRng) -> ServiceGraph {
    let mut items = vec![json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "test-node", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.0.2"},
            {"type": "InternalIP", "address": "2001:db8::1"}]}})];
    for i in 0..(1 + r.below(8) as usize) {
        let ns = name(r);
        let svc = name(r);
        let (s, ports) = service(r, &ns, &svc, i);
        items.push(s);
        for v6 in [false, true] {
            if r.chance(80) {
                items.push(slice(r, &ns, &svc, &ports, v6));
            }
        }
    }
    let text = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let (objs, _) = Objects::from_yaml("random", &text).expect("generated JSON parses");
    let mut cfg = ProxyConfig {
        node_name: "test-node".into(),
        masquerade_all: r.chance(10),
        localhost_nodeports: r.chance(70),
        masquerade_bit: r.below(32) as u8,
        ..ProxyConfig::default()
    };
    cfg.cluster_cidrs = vec![
        "10.0.0.0/8".parse().expect("cidr"),
        "fd00::/16".parse().expect("cidr"),
    ];
    if r.chance(20) {
        cfg.nodeport_addresses = vec![kproxy_graph::NodePortAddress::Cidr(
            "192.168.0.0/24".parse().expect("cidr"),
        )];
    }
    ServiceGraph::build(&objs, &cfg)
}

/// Every line kproxy writes is a table marker, a chain declaration, a
/// rule into a kproxy chain, or a jump inserted into a built-in chain.
fn assert_no_injection(text: &str) {
    for line in text.lines() {
        let ok = line.starts_with('#')
            || line.starts_with("*")
            || line == "COMMIT"
            || (line.starts_with(":KUBE-") && line.ends_with(" - [0:0]"))
            || line.starts_with("-A KUBE-")
            || (line.starts_with("-I ") && line.contains(" -j KUBE-"));
        assert!(ok, "unexpected line {line:?}");
    }
}

/// The draws one random graph takes at the most (8 Services of up to 3
/// ports and 2 slices of up to 5 endpoints).
const DRAWS: usize = 512;

/// Graphs per batch: `iptables-restore --test` runs once per batch, family
/// and flavour.
const BATCH: usize = 50;

/// The generator is exercised: over many graphs hostile names reach the
/// output and graphs are not trivially empty.
#[test]
fn random_graphs_are_not_trivial() {
    let (cases, mut services, mut hostile_seen) = (300, 0, 0);
    for mut r in sample_draws(cases, DRAWS) {
        let g = random_graph(&mut r);
        services += g.families.values().map(|f| f.services.len()).sum::<usize>();
        for fr in generate(&g, &GenOptions::default()).families {
            let text = fr.render_full();
            if text.contains("quo?te") || text.contains("new?line") {
                hostile_seen += 1;
            }
        }
    }
    assert!(hostile_seen > 0, "hostile names reached the output");
    assert!(
        services > cases,
        "graphs were not trivially empty ({services} service ports)"
    );
}

/// Check one batch of graphs: each renders without injection and parses
/// back, and each family's text of the whole batch passes
/// `iptables-restore --test` on both flavours.
fn check_batch(ns: &NetNs, batch: Vec<TestRng>) {
    let transports: Vec<IptablesTransport> = [Flavour::Legacy, Flavour::Nft]
        .into_iter()
        .map(|flavour| IptablesTransport {
            flavour,
            runner: Runner::in_netns(ns.name()),
        })
        .collect();
    let mut texts: Vec<(IpFamily, String)> = Vec::new();
    for (case, mut r) in batch.into_iter().enumerate() {
        let g = random_graph(&mut r);
        for fr in generate(&g, &GenOptions::default()).families {
            let text = fr.render_full();
            assert_no_injection(&text);
            parse_save(&text).unwrap_or_else(|e| panic!("graph {case}: {e}"));
            texts.push((fr.family, text));
        }
    }
    for family in IpFamily::ALL {
        let mine: Vec<&String> = texts
            .iter()
            .filter(|(f, _)| *f == family)
            .map(|(_, t)| t)
            .collect();
        let mut all = String::new();
        for t in &mine {
            let _ = write!(all, "{t}");
        }
        for t in &transports {
            if let Err(e) = t.test_restore(family, &all) {
                // Narrow the batch down to the offending input.
                let bad = mine
                    .iter()
                    .find(|x| t.test_restore(family, x).is_err())
                    .map(|x| x.as_str())
                    .unwrap_or("");
                panic!("{:?} {family}: {e}\n{bad}", t.flavour);
            }
        }
    }
}

#[test]
fn random_graphs_always_give_valid_restore_input() {
    let ns = NetNs::new("ipt");
    let batches = proptest::collection::vec(draws(DRAWS), 1..=BATCH);
    check_property(file!(), 6, &batches, |batch| {
        check_batch(&ns, batch);
        Ok(())
    });
}
