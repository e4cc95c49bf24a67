//! Property test: random clusters (built from generated Services and
//! EndpointSlices through `kproxy_graph::Objects`, with hostile names,
//! colliding addresses and ports, both families) always render to text
//! that `nft -c -f` accepts. Seeded, so a failure is reproducible: the
//! message names the seed (`KPROXY_PROPTEST_SEED=N` reruns one case).

mod common;

use common::cluster::{Svc, graph};
use common::random::random_svc;
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

fn random_cluster(r: &mut TestRng) -> Vec<Svc> {
    (0..1 + r.below(12))
        .map(|_| {
            let (ns, name, port_name) = (name(r), name(r), name(r));
            random_svc(r, &ns, &name, &port_name)
        })
        .collect()
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
