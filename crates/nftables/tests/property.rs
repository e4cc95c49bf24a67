//! Property test: random clusters (built from generated Services and
//! EndpointSlices through `kproxy_graph::Objects`, with hostile names,
//! colliding addresses and ports, both families) always render to text
//! that `nft -c -f` accepts. proptest drives the generators
//! (`kproxy_testkit::draws`) and shrinks a failing cluster;
//! `KPROXY_PROPTEST_CASES=N` runs N clusters instead of 300, and failures
//! are kept in `property.proptest-regressions`.

mod common;

use common::cluster::{Svc, graph};
use common::random::random_svc;
use kproxy_graph::{Generator, Render};
use kproxy_nftables::NftGenerator;
use kproxy_testkit::{Draw, NetNs, TestRng, check_property, draws, sample_draws};
use proptest::prelude::*;

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

/// The draws one random cluster takes at the most (12 Services).
const DRAWS: usize = 1024;

/// The generator is exercised, not handed empty graphs.
#[test]
fn random_clusters_are_not_trivial() {
    let (count, mut elements) = (300, 0);
    for mut r in sample_draws(count, DRAWS) {
        let g = graph(&random_cluster(&mut r));
        elements += NftGenerator
            .generate(&g)
            .expect("generates")
            .tables()
            .iter()
            .map(|t| t.element_count())
            .sum::<usize>();
    }
    assert!(
        elements > count * 3,
        "only {elements} elements over {count} cases"
    );
}

#[test]
fn random_graphs_render_to_text_nft_accepts() {
    let ns = NetNs::new("nft");
    check_property(file!(), 300, &draws(DRAWS), |mut r| {
        let g = graph(&random_cluster(&mut r));
        let text = NftGenerator.generate(&g).expect("generates").render();
        let (ok, _, stderr) = ns.run_with_input(&["nft", "-c", "-f", "-"], &text);
        prop_assert!(ok, "nft -c rejected: {stderr}\n{text}");
        Ok(())
    });
}
