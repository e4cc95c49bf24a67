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

use std::net::IpAddr;

use kproxy_graph::{Backend, BackendKind, IpFamily, Protocol, ProxyMode, ServiceGraph};
use kproxy_iptables::{Flavour, IptablesBackend};
use kproxy_nftables::NftablesBackend;
use kproxy_testkit::NetNs;
use kproxy_trace::{Node, Packet, diff, tracer_for};

fn render(kind: BackendKind, graph: &ServiceGraph) -> String {
    let backend: Box<dyn Backend> = match kind {
        BackendKind::IptablesLegacy => Box::new(IptablesBackend::new(Flavour::Legacy)),
        BackendKind::IptablesNft => Box::new(IptablesBackend::new(Flavour::Nft)),
        BackendKind::Nftables => Box::new(NftablesBackend::new()),
    };
    backend.render_full(graph).expect("renders")
}

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
        let node_ip = graph
            .node
            .primary_ips
            .iter()
            .find(|ip| IpFamily::of(ip) == *fam)
            .copied();
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
