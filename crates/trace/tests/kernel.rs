//! The tracers read what the kernel prints back: every fixture's rules are
//! loaded into a network namespace (prefix `trc`) with each backend's own
//! loader, dumped the way `kproxy trace --live` and `kproxy diff` read them
//! (`iptables-save` of the flavour, `nft list table`), and
//! - tracing the dump gives the same outcome as tracing the rendered text,
//!   for connections to every VIP and NodePort of the fixture;
//! - diffing the dump against the rendered text shows no change.
//!
//! Needs root, iptables (both flavours) and nft; fails (never skips)
//! without them.

mod common;

use std::net::IpAddr;

use common::render;
use kproxy_graph::{BackendKind, IpFamily, Protocol, ProxyMode, ServiceGraph};
use kproxy_testkit::{NetNs, Topology};
use kproxy_trace::{Node, Packet, Verdict, diff, tracer_for};

/// kproxy's combined iptables text, split at its `# IPv4` / `# IPv6`
/// headers.
fn sections(text: &str) -> Vec<(IpFamily, String)> {
    let mut out: Vec<(IpFamily, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("# IPv4") {
            out.push((IpFamily::V4, String::new()));
        } else if line.starts_with("# IPv6") {
            out.push((IpFamily::V6, String::new()));
        } else if let Some((_, s)) = out.last_mut() {
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

fn tool(kind: BackendKind, fam: IpFamily, what: &str) -> String {
    let six = if fam == IpFamily::V6 { "6" } else { "" };
    let flavour = if kind == BackendKind::IptablesLegacy {
        "legacy"
    } else {
        "nft"
    };
    format!("ip{six}tables-{flavour}-{what}")
}

/// Load `text` into `ns` and return what the kernel prints back.
fn load_and_dump(ns: &NetNs, kind: BackendKind, text: &str) -> String {
    match kind {
        BackendKind::Nftables => {
            let (ok, _, err) = ns.run_with_input(&["nft", "-f", "-"], text);
            assert!(ok, "nft -f failed: {err}");
            let mut dump = String::new();
            for fam in ["ip", "ip6"] {
                if text.contains(&format!("add table {fam} kproxy")) {
                    dump.push_str(&ns.exec(&["nft", "list", "table", fam, "kproxy"]));
                    dump.push('\n');
                }
            }
            dump
        }
        _ => {
            // The render counts into kube-proxy's nfacct counters: they
            // must exist before `-m nfacct` loads.
            assert!(kproxy_iptables::nfacct::ensure_counters(Some(ns.name())));
            let mut dump = String::new();
            for (fam, part) in sections(text) {
                let restore = tool(kind, fam, "restore");
                let (ok, _, err) = ns.run_with_input(&[&restore, "--noflush"], &part);
                assert!(ok, "{restore} failed: {err}\n{part}");
                let save = tool(kind, fam, "save");
                dump.push_str(&format!("# {}: {save}\n", fam.as_k8s_str()));
                dump.push_str(&ns.exec(&[&save]));
            }
            dump
        }
    }
}

fn packets(graph: &ServiceGraph) -> Vec<Packet> {
    let mut out = Vec::new();
    for (fam, fg) in &graph.families {
        let (ext, pod): (IpAddr, IpAddr) = match fam {
            IpFamily::V4 => (
                "203.0.113.2".parse().expect("ip"),
                "10.1.2.3".parse().expect("ip"),
            ),
            IpFamily::V6 => (
                "2001:db8::2".parse().expect("ip"),
                "fd00:10::3".parse().expect("ip"),
            ),
        };
        let node_ip = graph.node.primary_ip(*fam);
        for sp in fg.services.values() {
            let proto: Protocol = sp.name.protocol;
            let mut dsts = vec![(sp.cluster_ip, sp.port), (sp.cluster_ip, 1)];
            dsts.extend(sp.external_ips.iter().map(|ip| (*ip, sp.port)));
            dsts.extend(sp.load_balancer_ips.iter().map(|l| (l.ip, sp.port)));
            if let (Some(np), Some(n)) = (sp.node_port, node_ip) {
                dsts.push((n, np));
            }
            for (dst, port) in dsts {
                for src in [ext, pod].into_iter().chain(node_ip) {
                    out.push(Packet::new(src, dst, port, proto));
                }
            }
        }
    }
    out
}

#[test]
fn tracing_the_kernels_dump_matches_the_rendered_rules() {
    let mut checked = 0;
    for name in kproxy_testkit::fixtures() {
        if name == "bad-input" {
            continue;
        }
        for kind in BackendKind::ALL {
            let mode = if kind == BackendKind::Nftables {
                ProxyMode::Nftables
            } else {
                ProxyMode::Iptables
            };
            let graph = kproxy_testkit::load_fixture(&name, mode);
            let text = render(kind, &graph);
            let ns = NetNs::new("trc");
            let dump = load_and_dump(&ns, kind, &text);
            let rendered = tracer_for(kind, &text).expect("rendered text parses");
            let dumped = tracer_for(kind, &dump).unwrap_or_else(|e| {
                panic!("{name} {kind}: the kernel's dump does not parse: {e}\n{dump}")
            });
            for t in [&rendered, &dumped] {
                let unknown = t.unknown_rules();
                assert!(
                    unknown.is_empty(),
                    "{name} {kind}: not understood: {unknown:#?}"
                );
            }
            let node = Node::new(graph.node.ips.clone());
            for p in packets(&graph) {
                let a = rendered.trace(&p, &node).expect("traces").outcome();
                let b = dumped
                    .trace(&p, &node)
                    .unwrap_or_else(|e| panic!("{name} {kind} {p}: {e}"))
                    .outcome();
                assert!(
                    a.same_as(&b),
                    "{name} {kind} {p}: rendered says {a}, kernel dump says {b}"
                );
                checked += 1;
            }
            let d = match kind {
                BackendKind::Nftables => diff::nftables(&dump, &text),
                _ => diff::iptables(&dump, &text),
            }
            .expect("diff parses");
            assert!(
                d.is_empty(),
                "{name} {kind}: the kernel holds what was rendered, yet diff says:\n{}",
                d.render()
            );
        }
    }
    assert!(checked > 100, "only {checked} connections checked");
}

/// Client, node and pod namespaces ([`Topology::linked`]): client
/// 203.0.113.2 reaches the node (203.0.113.1, node address 192.168.49.2)
/// and, through it, ClusterIPs; the node routes the pod network to the pod
/// namespace, which holds the seed's two pod addresses and drops every
/// packet (connections time out, and the node's conntrack table records
/// what its rules did to them).
fn topology() -> Topology {
    let t = Topology::linked("trc");
    let Topology { node, pod, client } = &t;
    node.exec_all(&[
        "ip addr add 203.0.113.1/24 dev vc",
        "ip addr add 192.168.49.2/32 dev vc",
        "ip addr add 10.244.255.1/16 dev vp",
        "ip link set vc up",
        "ip link set vp up",
        // A node has a default route; without one, traffic to a ClusterIP
        // nothing DNATs would die in routing before the forward hook.
        "ip route add default via 10.244.1.5",
        "sysctl -q -w net.ipv4.ip_forward=1",
        "sysctl -q -w net.ipv4.icmp_ratelimit=0",
    ]);
    client.exec_all(&[
        "ip addr add 203.0.113.2/24 dev eth0",
        "ip link set eth0 up",
        "ip route add 192.168.49.2/32 via 203.0.113.1",
        "ip route add 10.96.0.0/12 via 203.0.113.1",
    ]);
    pod.exec_all(&[
        "ip addr add 10.244.1.5/16 dev eth0",
        "ip addr add 10.244.2.4/16 dev eth0",
        "ip link set eth0 up",
        "ip route add default via 10.244.255.1",
        "sysctl -q -w net.ipv4.icmp_ratelimit=0",
    ]);
    let (ok, _, err) = pod.run_with_input(
        &["nft", "-f", "-"],
        "add table ip blackhole\nadd chain ip blackhole in { type filter hook input priority 0 ; policy drop ; }\n",
    );
    assert!(ok, "pod namespace: {err}");
    t
}

/// What the kernel did to `tries` connections from the client: the DNAT
/// destinations with counts and whether they were masqueraded (from the
/// node's conntrack table), and how many attempts failed without a
/// connection being tracked, quickly (refused) or by timing out.
#[derive(Debug, Default)]
struct Observed {
    dnat: std::collections::BTreeMap<std::net::SocketAddr, usize>,
    masqueraded: std::collections::BTreeSet<bool>,
    refused_untracked: usize,
    timed_out: usize,
    untouched: usize,
    /// ICMP destination-unreachable messages the node sent (its REJECTs;
    /// the client may not see them: on a veth they can arrive while
    /// connect() still holds the socket lock and be ignored).
    icmp_unreachable_sent: u64,
}

fn icmp_out_dest_unreachs(ns: &NetNs) -> u64 {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]);
    let rows: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Icmp: ")).collect();
    let [names, values] = rows.as_slice() else {
        panic!("unexpected /proc/net/snmp: {snmp}");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == "OutDestUnreachs")
        .expect("OutDestUnreachs counter");
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .expect("counter value")
}

/// [`probe_once`] until every client got as far as connecting.
fn probe(t: &Topology, dst: &str, port: u16, tries: usize) -> Observed {
    const ROUNDS: usize = 5;
    for round in 1..=ROUNDS {
        match probe_once(t, dst, port, tries) {
            Some(o) => return o,
            None => eprintln!("{dst}:{port}: round {round}: a client did not start in time"),
        }
    }
    panic!("{dst}:{port}: in {ROUNDS} rounds, some client never started within its timeout");
}

/// `None` when a client did not get to its connect() before its 1 s
/// timeout (a loaded machine can take that long to start a shell): the
/// kernel saw fewer than `tries` connections, and the round says nothing
/// about the rules.
fn probe_once(t: &Topology, dst: &str, port: u16, tries: usize) -> Option<Observed> {
    t.node.exec(&["conntrack", "-F"]);
    let icmp_before = icmp_out_dest_unreachs(&t.node);
    let script = format!(
        "for i in $(seq {tries}); do (timeout 1 bash -c 'echo started; exec 3<>/dev/tcp/{dst}/{port}' 2>/dev/null; echo $?) & done; wait"
    );
    let out = t.client.exec(&["bash", "-c", &script]);
    let (started, codes): (Vec<&str>, Vec<&str>) =
        out.lines().map(str::trim).partition(|l| *l == "started");
    if started.len() < tries {
        return None;
    }
    let table = t
        .node
        .exec(&["conntrack", "-L", "-p", "tcp", "-s", "203.0.113.2"]);
    let mut o = Observed {
        icmp_unreachable_sent: icmp_out_dest_unreachs(&t.node) - icmp_before,
        ..Observed::default()
    };
    let mut tracked = 0;
    for line in table.lines() {
        // orig: src dst sport dport, reply: src dst sport dport
        let kv: Vec<(&str, &str)> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let get = |k: &str, n: usize| kv.iter().filter(|(a, _)| *a == k).nth(n).map(|(_, v)| *v);
        let (Some(osrc), Some(odst), Some(odport), Some(rsrc), Some(rdst), Some(rsport)) = (
            get("src", 0),
            get("dst", 0),
            get("dport", 0),
            get("src", 1),
            get("dst", 1),
            get("sport", 1),
        ) else {
            continue;
        };
        tracked += 1;
        if (rsrc, rsport) == (odst, odport) {
            // Tracked but not DNATed: routed as is.
            o.untouched += 1;
            continue;
        }
        let to: std::net::SocketAddr = format!("{rsrc}:{rsport}").parse().expect("endpoint");
        *o.dnat.entry(to).or_default() += 1;
        o.masqueraded.insert(rdst != osrc);
    }
    let timeouts = codes.iter().filter(|c| **c == "124").count();
    // Tracked connections time out in the black hole; untracked ones were
    // dropped (timeout) or rejected (refused at once) by the node.
    o.timed_out = timeouts.saturating_sub(tracked);
    o.refused_untracked = codes.len() - timeouts;
    Some(o)
}

#[test]
fn tracer_predictions_match_the_kernel() {
    let probes: [(&str, u16); 3] = [
        ("192.168.49.2", 30007),
        ("10.107.33.105", 80),
        ("10.107.33.105", 8080),
    ];
    let tries = 24;
    for kind in BackendKind::ALL {
        let mode = if kind == BackendKind::Nftables {
            ProxyMode::Nftables
        } else {
            ProxyMode::Iptables
        };
        let graph = kproxy_testkit::load_fixture("seed", mode);
        let text = render(kind, &graph);
        let t = topology();
        let dump = load_and_dump(&t.node, kind, &text);
        for (dst, port) in probes {
            let node_ips: Vec<IpAddr> = ["192.168.49.2", "203.0.113.1", "10.244.255.1"]
                .iter()
                .map(|s| s.parse().expect("ip"))
                .collect();
            let client: IpAddr = "203.0.113.2".parse().expect("ip");
            let to: std::net::SocketAddr = format!("{dst}:{port}").parse().expect("addr");
            let predicted =
                kproxy_trace::predict(kind, &dump, &node_ips, client, to, Protocol::Tcp)
                    .expect("predicts");
            let seen = probe(&t, dst, port, tries);
            if let Err(e) = agrees(&predicted, &seen, tries) {
                panic!("{kind} {dst}:{port}: predicted {predicted}, kernel {seen:?}: {e}");
            }
            // The check can fail: predictions from a broken copy of the
            // rules (one endpoint's DNAT gone, or no masquerading) disagree
            // with what the kernel did.
            if port == 30007 {
                let broken = mutate(kind, &dump);
                let wrong =
                    kproxy_trace::predict(kind, &broken, &node_ips, client, to, Protocol::Tcp)
                        .expect("predicts");
                assert!(
                    agrees(&wrong, &seen, tries).is_err(),
                    "{kind}: a mutated ruleset's prediction ({wrong}) passed against {seen:?}"
                );
            }
        }
    }
}

/// Whether what the kernel did to `tries` connections agrees with a
/// prediction.
fn agrees(predicted: &kproxy_trace::Outcome, seen: &Observed, tries: usize) -> Result<(), String> {
    let dnat_parts: Vec<_> = predicted
        .parts
        .iter()
        .filter(|p| p.dnat.is_some())
        .collect();
    let ok = if !dnat_parts.is_empty() {
        // Every connection was DNATed to a predicted endpoint, with the
        // predicted masquerading; every likely endpoint was seen.
        let masq: std::collections::BTreeSet<bool> =
            dnat_parts.iter().map(|p| p.masquerade).collect();
        dnat_parts.len() == predicted.parts.len()
            && seen.dnat.values().sum::<usize>() == tries
            && seen
                .dnat
                .keys()
                .all(|to| dnat_parts.iter().any(|p| p.dnat == Some(*to)))
            && dnat_parts
                .iter()
                .filter(|p| p.probability >= 0.25)
                .all(|p| p.dnat.is_some_and(|d| seen.dnat.contains_key(&d)))
            && seen.masqueraded == masq
    } else if predicted
        .only()
        .is_some_and(|p| p.verdict == Verdict::Reject)
    {
        seen.dnat.is_empty() && seen.untouched == 0 && seen.icmp_unreachable_sent >= tries as u64
    } else if predicted.only().is_some_and(|p| p.verdict == Verdict::Drop) {
        seen.dnat.is_empty() && seen.timed_out == tries && seen.icmp_unreachable_sent == 0
    } else {
        // Not handled: every connection passed untouched.
        seen.dnat.is_empty() && seen.untouched == tries
    };
    if ok { Ok(()) } else { Err("disagree".into()) }
}

/// A broken copy of a kernel dump: iptables loses the DNAT to 10.244.2.4,
/// nftables stops masquerading marked traffic.
fn mutate(kind: BackendKind, dump: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in dump.lines() {
        let hit = !done
            && match kind {
                BackendKind::Nftables => line.contains("meta mark set meta mark ^"),
                _ => line.contains("--to-destination 10.244.2.4:80"),
            };
        if hit {
            done = true;
            if kind == BackendKind::Nftables {
                out.push_str(&line.replace("masquerade fully-random", "accept"));
                out.push('\n');
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(done, "{kind}: nothing to mutate in\n{dump}");
    out
}
