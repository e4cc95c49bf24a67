//! Property test: random clusters (built from generated Services and
//! EndpointSlices through `kproxy_graph::Objects`, with hostile names,
//! colliding addresses and ports, both families) always render to text
//! that `nft -c -f` accepts. Seeded, so a failure is reproducible: the
//! message names the seed (`KPROXY_PROPTEST_SEED=N` reruns one case).

mod common;

use common::cluster::{Svc, graph};
use kproxy_graph::{Generator, Render};
use kproxy_nftables::NftGenerator;
use kproxy_testkit::{Draw, NetNs, TestRng, seeded};

const HOSTILE: &[&str] = &[
    "web",
    "a",
    "kube-system",
    "x-y.z",
    "ns\"; flush ruleset; #",
    "name with space",
    "semi;colon",
    "brace{}",
    "new\nline",
    "tab\tname",
    "dollar$var",
    "back\\slash",
    "ünïcødé",
    "@set",
    "-lead",
    "comment \"x\"",
    "",
    "0digit",
    "a/b/c",
    "*",
    ".",
    "..",
    "\u{0}nul",
];

fn name(r: &mut TestRng) -> String {
    let mut s = (*r.pick(HOSTILE)).to_string();
    if r.chance(10) {
        s = s.repeat(1 + r.below(40) as usize);
    }
    if s.is_empty() && r.chance(50) {
        s = "x".into();
    }
    s
}

fn v4(r: &mut TestRng, net: &str) -> String {
    format!("{net}.{}.{}", r.below(4), 1 + r.below(5))
}

fn v6(r: &mut TestRng, net: &str) -> String {
    format!("{net}::{:x}:{:x}", r.below(4), 1 + r.below(5))
}

fn random_cluster(r: &mut TestRng) -> Vec<Svc> {
    let n = 1 + r.below(12);
    let mut out = Vec::new();
    for _ in 0..n {
        let six = r.chance(30);
        let ip =
            |r: &mut TestRng, four: &str, sixn: &str| if six { v6(r, sixn) } else { v4(r, four) };
        let cluster_ip = ip(r, "172.30", "fd00:30");
        let port = [80u16, 443, 53, 1, 65535][r.below(5) as usize];
        let mut s = Svc::new(&name(r), &name(r), &cluster_ip, port);
        s.port_name = name(r);
        s.protocol = ["TCP", "UDP", "SCTP"][r.below(3) as usize];
        s.target_port = [80u16, 8080, 53][r.below(3) as usize];
        if r.chance(50) {
            s.node_port = Some(30000 + r.below(5) as u16);
        }
        for _ in 0..r.below(3) {
            s.external_ips.push(ip(r, "192.168.99", "fd00:99"));
        }
        if r.chance(30) {
            s.node_port.get_or_insert(30010);
            for _ in 0..1 + r.below(2) {
                s.lb_ips.push(ip(r, "5.6", "fd00:56"));
            }
            for _ in 0..r.below(4) {
                let range = if six {
                    ["fd00::/8", "fd00:56::/64", "::/0", "fd00:56::1/128"][r.below(4) as usize]
                } else {
                    [
                        "203.0.113.0/25",
                        "10.0.0.0/8",
                        "10.1.0.0/16",
                        "5.6.0.0/16",
                        "192.168.0.2/32",
                        "0.0.0.0/0",
                    ][r.below(6) as usize]
                };
                s.source_ranges.push(range.into());
            }
        }
        if r.chance(25) {
            s.affinity = Some([1u32, 10800, 86400][r.below(3) as usize]);
        }
        s.etp_local = r.chance(40);
        s.itp_local = r.chance(20);
        for _ in 0..r.below(6) {
            let node = (*r.pick(&["test-node", "node-2", "node-3"])).to_string();
            let ready = r.chance(80);
            s.endpoints.push((ip(r, "10.180", "fd00:10"), node, ready));
        }
        out.push(s);
    }
    out
}

#[test]
fn random_graphs_render_to_text_nft_accepts() {
    let ns = NetNs::new("nft");
    let (first, count) = match std::env::var("KPROXY_PROPTEST_SEED") {
        Ok(s) => (s.parse().expect("seed"), 1),
        Err(_) => (1u64, 300u64),
    };
    let mut failures = Vec::new();
    let mut elements = 0usize;
    for seed in first..first + count {
        let mut r = seeded(seed);
        let svcs = random_cluster(&mut r);
        let g = graph(&svcs);
        let ruleset = NftGenerator
            .generate(&g)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        elements += ruleset
            .tables()
            .iter()
            .map(|t| t.element_count())
            .sum::<usize>();
        let text = ruleset.render();
        let (ok, _, stderr) = ns.run_with_input(&["nft", "-c", "-f", "-"], &text);
        if !ok {
            failures.push(format!("seed {seed}: {stderr}"));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "nft -c rejected:\n{}",
        failures.join("\n")
    );
    // The generator was exercised, not handed empty graphs.
    assert!(
        elements > (count as usize) * 3,
        "only {elements} elements over {count} cases"
    );
}
