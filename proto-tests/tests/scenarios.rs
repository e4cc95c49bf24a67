//! Every scenario in proto-tests/scenarios/ on every backend it applies to,
//! through `kproxy run --once` in the node namespace. Narrow with
//! PROTO_SCENARIOS=seed,udp and PROTO_BACKENDS=nftables; PROTO_JOBS sets
//! how many run at once (default 3). Needs root and the netfilter tools:
//! fails, never skips, without them.

use std::path::Path;

use kproxy_proto_tests::runner::Applier;

#[test]
fn scenarios() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let files = kproxy_proto_tests::scenario_files(&env("PROTO_SCENARIOS"))
        .unwrap_or_else(|e| panic!("{e}"));
    let backends =
        kproxy_proto_tests::backends(&env("PROTO_BACKENDS")).unwrap_or_else(|e| panic!("{e}"));
    let jobs = env("PROTO_JOBS").parse().unwrap_or(3);
    kproxy_proto_tests::topo::preflight().unwrap_or_else(|e| panic!("{e}"));
    let bin = kproxy_proto_tests::kproxy_binary().unwrap_or_else(|e| panic!("{e}"));
    let proto = Path::new(env!("CARGO_BIN_EXE_kproxy-proto"));
    // PROTO_APPLY=render loads `kproxy render` output instead of running the
    // daemon; =daemon drives one long-running daemon per scenario; by default
    // every scenario runs with `kproxy run --once` at each step, and the
    // scenarios with steps once more through a long-running daemon (its
    // incremental syncs).
    let mut reports = Vec::new();
    let mode = env("PROTO_APPLY");
    let passes: Vec<(Applier, Vec<std::path::PathBuf>)> = match mode.as_str() {
        "render" => vec![(Applier::Render { bin }, files)],
        "daemon" => vec![(Applier::Daemon { bin }, files)],
        "" | "run" => {
            let stepped: Vec<_> = files
                .iter()
                .filter(|f| {
                    kproxy_proto_tests::scenario::Scenario::load(f)
                        .map(|s| !s.steps.is_empty())
                        .unwrap_or(true)
                })
                .cloned()
                .collect();
            vec![
                (Applier::Kproxy { bin: bin.clone() }, files),
                (Applier::Daemon { bin }, stepped),
            ]
        }
        other => panic!("PROTO_APPLY={other:?}: want run, daemon or render"),
    };
    for (applier, files) in passes {
        if files.is_empty() {
            continue;
        }
        reports.extend(
            kproxy_proto_tests::run_suite(&files, &backends, proto, &applier, jobs)
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    assert!(!reports.is_empty(), "no scenario ran");
    let mut summary = String::new();
    let mut failed = Vec::new();
    for r in &reports {
        let (pass, fail, known, notrun) = r.counts();
        summary.push_str(&format!(
            "  {:<28} {:<25} {:>4} {:>4} {:>4} {:>4}  {}\n",
            r.scenario,
            r.backend,
            pass,
            fail,
            known,
            notrun,
            if r.failed() { "FAIL" } else { "ok" }
        ));
        if r.failed() {
            failed.push(r.render());
        }
    }
    println!(
        "proto-tests summary:\n  {:<28} {:<25} pass fail know skip\n{summary}",
        "scenario", "backend"
    );
    assert!(
        failed.is_empty(),
        "{} of {} scenario runs failed:\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n")
    );
    // The tracer check ran on every probe that ran: agreed, or exempt with
    // its reason (never silently left out).
    let mut traced = 0;
    for r in &reports {
        for p in &r.probes {
            if matches!(p.verdict, kproxy_proto_tests::runner::Verdict::NotRun(_)) {
                continue;
            }
            let t = p.tracer.as_deref().unwrap_or("not checked");
            assert!(
                t.contains("(agrees") || t.starts_with("exempt: "),
                "{} on {}: {}: tracer check: {t}",
                r.scenario,
                r.backend,
                p.probe
            );
            traced += usize::from(t.contains("(agrees"));
        }
    }
    println!("tracer check: {traced} probes agree with the kernel");
}

/// Every scenario file parses and names valid sources, targets and
/// backends (no root needed): a broken scenario is caught before any
/// namespace is made.
#[test]
fn every_scenario_loads() {
    let files = kproxy_proto_tests::scenario_files("").unwrap();
    assert!(files.len() >= 10, "scenarios missing: {files:?}");
    for f in files {
        let s = kproxy_proto_tests::scenario::Scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.all_probes().is_empty(), "{}: no probes", f.display());
        let spec = kproxy_proto_tests::runner::topology_spec(&s);
        assert!(!spec.node_ips.is_empty(), "{}: no node IPs", f.display());
    }
}

/// Every probe of every scenario can fail: judged against a deliberately
/// wrong expectation (masquerading flipped, an endpoint missing, reject
/// and drop swapped, no-match as reject, another HTTP status), each one
/// must fail against the real rules. One backend (nftables, or the first of
/// PROTO_BACKENDS) is enough: the probes are the same on every backend.
#[test]
fn every_probe_can_fail() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let files = kproxy_proto_tests::scenario_files(&env("PROTO_SCENARIOS"))
        .unwrap_or_else(|e| panic!("{e}"));
    let backends =
        kproxy_proto_tests::backends(&env("PROTO_BACKENDS")).unwrap_or_else(|e| panic!("{e}"));
    let backend = if backends.contains(&kproxy_proto_tests::scenario::BackendName::Nftables) {
        kproxy_proto_tests::scenario::BackendName::Nftables
    } else {
        backends[0]
    };
    kproxy_proto_tests::topo::preflight().unwrap_or_else(|e| panic!("{e}"));
    let bin = kproxy_proto_tests::kproxy_binary().unwrap_or_else(|e| panic!("{e}"));
    let reports = kproxy_proto_tests::run_suite_with(
        &files,
        &[backend],
        Path::new(env!("CARGO_BIN_EXE_kproxy-proto")),
        &Applier::Kproxy { bin },
        env("PROTO_JOBS").parse().unwrap_or(3),
        true,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut checked = 0;
    let mut survivors = Vec::new();
    for r in &reports {
        assert!(r.setup_error.is_none(), "{}", r.render());
        for p in &r.probes {
            match &p.verdict {
                kproxy_proto_tests::runner::Verdict::Fail(_) => checked += 1,
                kproxy_proto_tests::runner::Verdict::NotRun(_) => {}
                _ => survivors.push(format!(
                    "{} on {}: step {} {}: expect {}; saw {}",
                    r.scenario, r.backend, p.step, p.probe, p.expect, p.observed
                )),
            }
        }
    }
    println!("every_probe_can_fail: {checked} mutated probes failed as they must");
    // The whole suite has well over 50 probes; a narrowed run at least one.
    let least = if env("PROTO_SCENARIOS").is_empty() {
        50
    } else {
        1
    };
    assert!(checked >= least, "too few probes checked: {checked}");
    assert!(
        survivors.is_empty(),
        "wrong expectations that passed (the probe cannot tell right from wrong):\n{}",
        survivors.join("\n")
    );
}
