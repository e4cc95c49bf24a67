//! The runner itself: against a hand-written ruleset on the seed topology,
//! right expectations pass and every kind of wrong one fails (wrong
//! endpoint, masquerade flipped, reject versus drop, no-match versus
//! endpoints, sticky), known failures are reported, not failed, and a known
//! failure that passes is an error. Needs root: fails (never skips) without.

use std::path::Path;

use kproxy_proto_tests::runner::{Applier, Verdict};
use kproxy_proto_tests::scenario::BackendName;

#[test]
fn wrong_expectations_fail_and_right_ones_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/selftest");
    let script = std::fs::read_to_string(dir.join("seed-handmade.nft")).unwrap();
    let reports = kproxy_proto_tests::run_suite(
        &[dir.join("seed-handmade.yaml")],
        &[BackendName::Nftables],
        Path::new(env!("CARGO_BIN_EXE_kproxy-proto")),
        &Applier::Nft { script },
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    println!("(this report is meant to show failures: it checks that wrong expectations fail)");
    println!("{}", r.render());
    assert!(r.setup_error.is_none(), "{:?}", r.setup_error);
    assert_eq!(r.probes.len(), 24, "every probe reported");
    let mut wrong = 0;
    for p in &r.probes {
        let note = p
            .probe
            .rsplit('[')
            .next()
            .unwrap_or("")
            .trim_end_matches(']');
        match note {
            "right" => assert_eq!(p.verdict, Verdict::Pass, "{}: {}", p.probe, p.observed),
            "known" => assert!(matches!(p.verdict, Verdict::KnownFailure(..)), "{p:?}"),
            "xpass" => assert!(matches!(p.verdict, Verdict::UnexpectedPass(..)), "{p:?}"),
            n if n.starts_with("wrong") => {
                wrong += 1;
                assert!(
                    matches!(p.verdict, Verdict::Fail(_)),
                    "a wrong expectation passed: {}: saw {}",
                    p.probe,
                    p.observed
                );
            }
            n => panic!("unexpected note {n:?}"),
        }
    }
    assert_eq!(wrong, 12);
    // Failing probes (and the XPASS) fail the run.
    assert!(r.failed());
    assert!(r.render().contains("[FAIL]"));
}
