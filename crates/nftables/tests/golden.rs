//! Golden files: every fixture rendered by the nftables generator, compared
//! with `tests/golden/<fixture>.nft` (`make golden` rewrites them), and
//! every rendering accepted by `nft -c -f` inside a network namespace.

use kproxy_graph::{Generator, ProxyMode, Render};
use kproxy_nftables::NftGenerator;
use kproxy_testkit::{NetNs, assert_golden, fixtures, load_fixture};

fn golden_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn render(name: &str) -> String {
    let graph = load_fixture(name, ProxyMode::Nftables);
    NftGenerator
        .generate(&graph)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .render()
}

#[test]
fn golden_files_match() {
    let names = fixtures();
    assert!(!names.is_empty(), "no fixtures found");
    for name in names {
        let text = render(&name);
        assert_golden(&golden_dir().join(format!("{name}.nft")), &text);
    }
}

#[test]
fn golden_outputs_pass_nft_check() {
    let ns = NetNs::new("nft");
    let mut failures = Vec::new();
    for name in fixtures() {
        let text = render(&name);
        let (ok, _, stderr) = ns.run_with_input(&["nft", "-c", "-f", "-"], &text);
        if !ok {
            failures.push(format!("{name}: {stderr}"));
        }
    }
    assert!(
        failures.is_empty(),
        "nft -c rejected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn generation_is_deterministic() {
    for name in fixtures() {
        assert_eq!(render(&name), render(&name), "{name}");
    }
}

/// The streaming renderer (what full syncs and golden files use) writes
/// the same statements as the IR path (`assemble` + `Transaction`), up to
/// the order of elements.
#[test]
fn streaming_render_matches_the_ir() {
    fn canonical(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("add element ") {
                Some(rest) => {
                    let (head, body) = rest.split_once(" { ").expect("element statement");
                    let body = body.strip_suffix(" }").expect("closing brace");
                    out.extend(body.split(", ").map(|e| format!("{head} {e}")));
                }
                None => out.push(line.to_string()),
            }
        }
        out.sort();
        out
    }
    for name in fixtures() {
        let graph = load_fixture(&name, ProxyMode::Nftables);
        let ruleset = NftGenerator.generate(&graph).expect("generate");
        let mut tx = kproxy_nftables::Transaction::new();
        for t in ruleset.tables() {
            tx.extend(kproxy_nftables::Transaction::replace_table(&t));
        }
        assert_eq!(
            canonical(&ruleset.render()),
            canonical(&tx.render()),
            "{name}"
        );
    }
}
