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
    // run_scenario directly (not run_suite): the report below is meant to
    // show failures and is printed once, with that said.
    kproxy_proto_tests::topo::preflight().unwrap_or_else(|e| panic!("{e}"));
    kproxy_proto_tests::topo::install_signal_cleanup();
    let s = kproxy_proto_tests::scenario::Scenario::load(&dir.join("seed-handmade.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let cfg = kproxy_proto_tests::runner::RunConfig {
        proto_bin: Path::new(env!("CARGO_BIN_EXE_kproxy-proto")).to_path_buf(),
        applier: Applier::Nft { script },
        timeout: std::time::Duration::from_millis(1000),
        sctp: false,
        mutate: false,
    };
    let report = kproxy_proto_tests::runner::run_scenario(&s, BackendName::Nftables, &cfg);
    let r = &report;
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
    // The tracer check ran on every probe and agrees with the kernel on the
    // hand-written rules too (right and wrong expectations alike: it
    // compares with the prediction, not with the expectation).
    for p in &r.probes {
        let t = p.tracer.as_deref().unwrap_or("not checked");
        assert!(t.contains("(agrees"), "{}: tracer check: {t}", p.probe);
    }
    // Failing probes (and the XPASS) fail the run.
    assert!(r.failed());
    assert!(r.render().contains("[FAIL]"));
}

/// The processes whose parent is `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Ctrl-C in the middle of a run leaves no namespace and no echo server
/// behind.
#[test]
fn interrupted_run_leaves_nothing() {
    kproxy_proto_tests::topo::preflight().unwrap_or_else(|e| panic!("{e}"));
    let kproxy = kproxy_proto_tests::kproxy_binary().unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kproxy-proto"))
        .args(["run", "--scenarios", "etp-local,source-ranges", "--kproxy"])
        .arg(&kproxy)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let prefix = format!("pt-{pid}-");
    let netns = || -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
            .map(String::from)
            .collect()
    };
    // Wait until the run has namespaces and echo servers.
    let start = std::time::Instant::now();
    while netns().len() < 5 || children_of(pid).len() < 3 {
        assert!(start.elapsed().as_secs() < 60, "the run never got going");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let servers = children_of(pid);
    let st = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        netns(),
        Vec::<String>::new(),
        "namespaces left after Ctrl-C"
    );
    let left: Vec<u32> = servers.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes left after Ctrl-C: {left:?}");
}
