//! Foreign iptables rules that iptables-save prints in awkward ways (a
//! comment holding newlines, quotes and backslashes, a comment that looks
//! like `-A KUBE-SERVICES ...`/`COMMIT`, chain names holding or starting
//! with `"`, matches kproxy does not know) in every table: kproxy's syncs
//! (full and partial), `diff`, `trace --live` and `cleanup` all work and
//! leave them as they were. Both iptables flavours, in a network
//! namespace; needs root and iptables (fails, never skips, without them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kproxy_testkit::NetNs;

const SVC_IP: &str = "172.30.0.41";

/// Plant the hostile rules in filter, nat, mangle and raw.
fn plant_hostile_rules(ns: &NetNs, ipt: &str) {
    let comment = "evil\n-A KUBE-SERVICES -j DROP\nCOMMIT\n*nat";
    let quotes = "q\"uote \\ back\\\" tick' \x1b[31m";
    for table in ["filter", "nat", "mangle", "raw"] {
        let run = |args: &[&str]| {
            let mut argv = vec![ipt, "-t", table];
            argv.extend_from_slice(args);
            ns.exec_locked(&argv);
        };
        run(&["-N", "FOO\"BAR"]);
        run(&["-N", "\"LEAD"]);
        for (text, target) in [(comment, "ACCEPT"), (quotes, "FOO\"BAR")] {
            run(&[
                "-A",
                "OUTPUT",
                "-m",
                "comment",
                "--comment",
                text,
                "-j",
                target,
            ]);
        }
        run(&["-A", "OUTPUT", "-j", "\"LEAD"]);
        run(&[
            "-A",
            "FOO\"BAR",
            "-m",
            "owner",
            "--uid-owner",
            "0",
            "-m",
            "comment",
            "--comment",
            "a\nb",
            "-j",
            "RETURN",
        ]);
        run(&[
            "-A",
            "\"LEAD",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "1,2,3",
            "-m",
            "comment",
            "--comment",
            "\"",
            "-j",
            "RETURN",
        ]);
    }
}

/// The rule lines of an iptables-save (declarations and rules, without
/// counters), as a sorted list.
fn rule_lines(save: &str) -> Vec<String> {
    let mut v: Vec<String> = save
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            // `:CHAIN POLICY [p:b]`: counters change.
            Some(d) => format!(":{}", d.rsplit_once(' ').map_or(d, |x| x.0)),
            None => l.to_string(),
        })
        .collect();
    v.sort();
    v
}

/// Every line of `before` is still in `now` (kproxy may add its own).
fn assert_kept(before: &[String], now: &str, what: &str) {
    let now = rule_lines(now);
    let missing: Vec<&String> = before.iter().filter(|l| !now.contains(l)).collect();
    assert!(
        missing.is_empty(),
        "{what}: foreign rules changed; missing: {missing:#?}\nnow:\n{}",
        now.join("\n")
    );
}

#[test]
fn hostile_foreign_rules_never_break_kproxy() {
    for backend in ["iptables-legacy", "iptables-nft"] {
        let (data, file) = nodeports_source("hostile");
        let ns = test_ns();
        plant_hostile_rules(&ns, backend);
        let foreign = rule_lines(&kernel_rules(&ns, backend));
        assert!(
            foreign.iter().any(|l| l.contains("\"evil")),
            "{backend}: nothing planted: {foreign:#?}"
        );
        let config = default_config().display().to_string();
        let src = data.path().to_str().unwrap().to_string();

        // A full sync, then a partial one.
        let mut d = Daemon::start(&ns, &daemon_args(backend, &src, &config), &[]);
        assert!(
            wait_for(Duration::from_secs(20), || http_get(&ns, 10249, "/rules")
                .is_some_and(|r| r.0 == 200)),
            "{backend}: the first sync never succeeded:\n{}",
            d.log()
        );
        assert!(kernel_rules(&ns, backend).contains(SVC_IP));
        move_endpoint_and_wait(
            &ns,
            &data,
            backend,
            &d,
            &format!("{backend}: the change never reached the kernel"),
        );
        let (_, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
        assert!(
            metric(&m, "kproxy_syncs_total{sync=\"partial\"}").unwrap_or(0.0) >= 1.0,
            "{backend}: no partial sync:\n{m}"
        );
        // Drift checks run every second: a few of them.
        std::thread::sleep(Duration::from_secs(3));
        let (_, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
        // One series per family, created by the first failure: none may
        // count one.
        let failures: Vec<&str> = m
            .lines()
            .filter(|l| {
                l.starts_with("kubeproxy_sync_proxy_rules_iptables_restore_failures_total{")
            })
            .filter(|l| !l.ends_with(" 0"))
            .collect();
        assert!(
            failures.is_empty(),
            "{backend}: restores failed: {failures:?}\n{m}"
        );
        assert_eq!(
            metric(&m, "kproxy_drift_repairs_total"),
            Some(0.0),
            "{backend}: the foreign rules were taken for drift:\n{}",
            d.log()
        );
        assert!(d.terminate(), "{backend}:\n{}", d.log());
        assert_kept(&foreign, &kernel_rules(&ns, backend), backend);

        // diff: nothing to change, and no error.
        let (ok, out, err) = kproxy_in(
            &ns,
            &[
                "diff",
                "--backend",
                backend,
                "--source",
                file.to_str().unwrap(),
                "--config",
                &config,
                "--exit-code",
            ],
            &[],
        );
        assert!(ok, "{backend}: diff failed or found changes:\n{out}\n{err}");

        // trace --live: a pod's connection to the ClusterIP.
        let (ok, out, err) = kproxy_in(
            &ns,
            &[
                "trace",
                "--live",
                "--backend",
                backend,
                "--from",
                "10.180.5.5",
                "--to",
                &format!("{SVC_IP}:80/tcp"),
            ],
            &[],
        );
        assert!(ok, "{backend}: trace --live failed:\n{out}\n{err}");
        assert!(out.contains("10.180.0.9"), "{backend}:\n{out}");
        assert_kept(&foreign, &kernel_rules(&ns, backend), backend);

        // cleanup: kproxy's rules go, the foreign ones stay.
        let (ok, out, err) = kproxy_in(&ns, &["cleanup", "--backend", backend], &[]);
        assert!(ok, "{backend}: cleanup failed:\n{out}\n{err}");
        let after = kernel_rules(&ns, backend);
        assert!(
            !after.contains(":KUBE-SERVICES") && !after.contains(SVC_IP),
            "{backend}: kproxy's rules left:\n{after}"
        );
        assert_kept(&foreign, &after, backend);
    }
}
