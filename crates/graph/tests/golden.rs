//! Every fixture's service graph, as `kproxy graph` prints it, compared with
//! the checked-in golden files (`make golden` regenerates them).

use kproxy_graph::ProxyMode;
use kproxy_testkit::{assert_golden, fixtures, load_fixture, repo_root};

#[test]
fn graphs_match_golden_files() {
    let names = fixtures();
    assert!(names.len() >= 10, "fixtures missing: {names:?}");
    for name in names {
        let g = load_fixture(&name, ProxyMode::Iptables);
        let path = repo_root()
            .join("crates/graph/tests/golden")
            .join(format!("{name}.txt"));
        assert_golden(&path, &kproxy_graph::display::graph(&g));
    }
}
