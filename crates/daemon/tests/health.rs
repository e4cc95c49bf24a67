//! The daemon's HTTP listeners cannot be starved: `/livez` answers while
//! clients that never read hold `/rules` and `/graph` and a sync is in
//! progress; connections beyond the cap wait without costing descriptors
//! while syncs go on; the open-file soft limit is raised at start; a
//! Service name holding control characters logs one escaped line.
//!
//! The real `kproxy` binary in a network namespace; needs root and nft
//! (fails, never skips, without them). The timeouts here only detect a
//! hang; they are not performance checks.

#![allow(
    clippy::disallowed_methods,
    reason = "test code: starts the binary under test, `ip netns` and shells itself"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use kproxy_testkit::NetNs;

fn nft_args<'a>(src: &'a str, config: &'a str) -> Vec<&'a str> {
    daemon_args("nftables", src, config)
}

/// `n` connections to `port` inside `ns`, each having sent `request` (if
/// any) and reading nothing.
fn open_connections(ns: &NetNs, port: u16, n: usize, request: Option<&str>) -> Vec<TcpStream> {
    let request = request.map(str::to_string);
    in_netns(ns, move || {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                if let Some(r) = &request {
                    s.write_all(r.as_bytes()).unwrap();
                }
                s
            })
            .collect()
    })
    .join()
    .unwrap()
}

/// GET `path` with a hang-detection timeout: the status and how long it
/// took, or `None` when no answer came within `timeout`.
fn timed_get(ns: &NetNs, port: u16, path: &str, timeout: Duration) -> Option<(u16, Duration)> {
    let path = path.to_string();
    in_netns(ns, move || {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(timeout)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        let text = String::from_utf8_lossy(&out);
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, t.elapsed()))
    })
    .join()
    .unwrap()
}

/// A wrapper directory whose `nft` holds every load (`-f`) while `hold`
/// exists, after touching `hold.entered`: a sync that stays in progress
/// for as long as the test wants.
fn holding_nft(dir: &TempDir, hold: &Path) -> String {
    let hold = hold.display();
    write_wrapper(
        dir,
        "nft",
        &format!(
            "case \" $* \" in *\" -f \"*)\n\
               if [ -e {hold} ]; then touch {hold}.entered; fi\n\
               while [ -e {hold} ]; do sleep 0.1; done;;\n\
             esac\n"
        ),
    );
    dir.path_first()
}

#[test]
fn livez_answers_while_rules_clients_never_read_during_a_sync() {
    let dir = TempDir::new("starve");
    let (data, _) = nodeports_source("starvedata");
    let hold = dir.path().join("hold");
    let path = holding_nft(&dir, &hold);
    let ns = test_ns();
    let config = default_config().display().to_string();
    let src = data.path().to_str().unwrap().to_string();
    // The held load is `nft -f`'s: the exec transport.
    let d = Daemon::start(
        &ns,
        &nft_args(&src, &config),
        &[("PATH", &path), ("KPROXY_NFTABLES_TRANSPORT", "exec")],
    );
    wait_synced(&ns, &d);

    // A sync that stays in progress (its load waits), ...
    std::fs::write(&hold, "").unwrap();
    move_endpoint(&data);
    let entered = hold.with_extension("entered");
    assert!(
        wait_for(Duration::from_secs(10), || entered.exists()),
        "no sync started:\n{}",
        d.log()
    );
    // ... clients that ask for /rules and /graph and never read, ...
    let mut sinks = open_connections(&ns, 10249, 16, Some("GET /rules HTTP/1.1\r\n\r\n"));
    sinks.extend(open_connections(
        &ns,
        10249,
        4,
        Some("GET /graph HTTP/1.1\r\n\r\n"),
    ));
    std::thread::sleep(Duration::from_millis(500));
    // ... and /livez, /healthz and /metrics still answer.
    for path in ["/livez", "/healthz", "/livez", "/livez", "/livez"] {
        let r = timed_get(&ns, 10256, path, Duration::from_secs(10));
        assert!(
            r.is_some(),
            "{path} hung during a sync with /rules clients:\n{}",
            d.log()
        );
    }
    let r = timed_get(&ns, 10249, "/metrics", Duration::from_secs(10));
    assert_eq!(r.map(|r| r.0), Some(200), "/metrics hung");

    // The sync finishes, and /rules shows it.
    std::fs::remove_file(&hold).unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || http_get(&ns, 10249, "/rules")
            .is_some_and(|r| r.0 == 200 && r.2.contains("10.180.0.9"))),
        "the held sync never finished:\n{}",
        d.log()
    );
    drop(sinks);
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft and hard open-file limits of process `pid`.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    (v[3].to_string(), v[4].to_string())
}

#[test]
fn connections_beyond_the_cap_cost_no_descriptors_and_syncs_go_on() {
    let (data, _) = nodeports_source("fdcap");
    let ns = test_ns();
    let config = default_config().display().to_string();
    let src = data.path().to_str().unwrap().to_string();
    // Started with a low soft limit, as a container runtime may leave it.
    let mut d = Daemon::start_wrapped(
        &ns,
        &["prlimit", "--nofile=256:"],
        &nft_args(&src, &config),
        &[],
    );
    wait_synced(&ns, &d);
    let pid = d.child.id();
    let (soft, hard) = nofile(pid);
    assert_eq!(soft, hard, "the open-file soft limit was not raised");
    let baseline = fds(pid);

    // Far more idle connections than the healthz listener's cap, and
    // more than the soft limit kproxy started with.
    let idle = open_connections(&ns, 10256, 400, None);
    std::thread::sleep(Duration::from_millis(500));
    let held = fds(pid);
    assert!(
        held < baseline + 200,
        "{held} descriptors open with 400 idle clients (baseline {baseline})"
    );
    // Syncs go on, and the other listener serves.
    move_endpoint_and_wait(
        &ns,
        &data,
        "nftables",
        &d,
        "no sync with idle clients holding connections",
    );
    let (_, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
    assert_eq!(
        metric(&m, "kproxy_sync_failures_total{sync=\"partial\"}").unwrap_or(0.0)
            + metric(&m, "kproxy_sync_failures_total{sync=\"full\"}").unwrap_or(0.0),
        0.0,
        "{m}"
    );
    // The idle clients still hold their sockets; the header timeout frees
    // the slots, so a probe is answered after a while.
    let r = timed_get(&ns, 10256, "/livez", Duration::from_secs(60));
    assert_eq!(
        r.map(|r| r.0),
        Some(200),
        "/livez never answered past idle clients:\n{}",
        d.log()
    );
    drop(idle);
    assert!(d.log().contains("connection limit reached"), "{}", d.log());
    assert!(d.terminate(), "{}", d.log());
}

#[test]
fn control_characters_in_names_are_escaped_in_the_log() {
    let data = TempDir::new("ctrl");
    // An invalid ClusterIP, so that the Service is logged by name.
    data.write(
        "cluster.yaml",
        &format!(
            "{}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: \"evil\\nINFO forged line\\e[31m\", namespace: ns1}}\nspec:\n  clusterIP: 10.0.0.999\n  ports: [{{port: 80, protocol: TCP}}]\n",
            fixture("nodeports")
        ),
    );
    let ns = test_ns();
    let config = default_config().display().to_string();
    let (ok, _, err) = kproxy_in(
        &ns,
        &[
            "run",
            "--backend",
            "nftables",
            "--source",
            data.path().to_str().unwrap(),
            "--config",
            &config,
            "--once",
            "--log-format",
            "text",
        ],
        &[],
    );
    assert!(ok, "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("skipped invalid input"))
        .collect();
    assert!(!lines.is_empty(), "{err}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(r"evil\nINFO forged line\u{1b}[31m")),
        "{lines:#?}"
    );
    assert!(!err.contains('\x1b'), "{err:?}");
    assert!(
        !err.lines().any(|l| l.starts_with("INFO forged")),
        "a forged line:\n{err}"
    );
}
