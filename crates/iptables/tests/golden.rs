//! Golden files: every fixture rendered (mode Iptables) to
//! `tests/golden/<fixture>.rules`, both families in one file under `#`
//! header lines. `make golden` rewrites them.

use std::path::Path;

use kproxy_graph::{ProxyMode, Render};
use kproxy_iptables::{GenOptions, generate};
use kproxy_testkit::{assert_golden, fixtures, load_fixture};

#[test]
fn golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let names = fixtures();
    assert!(!names.is_empty(), "no fixtures found");
    for name in names {
        let graph = load_fixture(&name, ProxyMode::Iptables);
        let text = generate(&graph, &GenOptions::default()).render();
        assert_golden(&dir.join(format!("{name}.rules")), &text);
    }
}
