//! The live layer: new and long-lived connections through a ClusterIP and
//! a NodePort, from a pod and from an external client, while the daemon is
//! SIGKILLed and restarted, switches backend, takes over from kube-proxy's
//! rules and hands back, and while the API server is away for a minute
//! (`kproxy_proto_tests::live`). Every event must leave every new
//! connection answered and every long-lived one unbroken, and the outage's
//! changes must reach the kernel within the watch backoff cap and one
//! sync of the server's return; the control event (rules and conntrack flushed) must show
//! failures, so the counting is known to see them.
//!
//! Environment: PROTO_BACKENDS (comma-separated), PROTO_LIVE_EVENTS
//! (restarts,switch,takeover,outage,control), PROTO_LIVE_OUTAGE_SECS
//! (default 60), PROTO_LIVE_OUTAGE_BACKENDS (default: nftables, or the
//! first of PROTO_BACKENDS). Needs root and the netfilter tools: fails,
//! never skips, without them.

use std::path::Path;
use std::time::Duration;

use kproxy_proto_tests::live::{EventKind, LiveConfig, run_live};

#[test]
fn live_traffic_through_failures() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let backends =
        kproxy_proto_tests::backends(&env("PROTO_BACKENDS")).unwrap_or_else(|e| panic!("{e}"));
    let events = EventKind::list(&env("PROTO_LIVE_EVENTS")).unwrap_or_else(|e| panic!("{e}"));
    let outage_backends = match env("PROTO_LIVE_OUTAGE_BACKENDS").as_str() {
        "" => {
            let nft = kproxy_proto_tests::scenario::BackendName::Nftables;
            vec![if backends.contains(&nft) {
                nft
            } else {
                backends[0]
            }]
        }
        list => kproxy_proto_tests::backends(list).unwrap_or_else(|e| panic!("{e}")),
    };
    let outage_secs: u64 = match env("PROTO_LIVE_OUTAGE_SECS").as_str() {
        "" => 60,
        s => s
            .parse()
            .unwrap_or_else(|e| panic!("PROTO_LIVE_OUTAGE_SECS={s:?}: {e}")),
    };
    kproxy_proto_tests::topo::preflight().unwrap_or_else(|e| panic!("{e}"));
    let kproxy = kproxy_proto_tests::kproxy_binary().unwrap_or_else(|e| panic!("{e}"));
    // Commands run from other directories (`ip netns exec`, `env`).
    let kproxy = std::fs::canonicalize(&kproxy)
        .unwrap_or_else(|e| panic!("kproxy binary {}: {e}", kproxy.display()));
    let cfg = LiveConfig {
        proto_bin: Path::new(env!("CARGO_BIN_EXE_kproxy-proto")).to_path_buf(),
        kproxy,
        backends,
        events,
        restarts: 5,
        outage: Duration::from_secs(outage_secs),
        outage_backends,
        sync_period: Duration::from_secs(30),
    };
    let reports = run_live(&cfg).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        reports.iter().any(|r| r.not_run.is_none()),
        "no live event ran"
    );
    let mut table = String::new();
    for r in &reports {
        table.push_str(&format!(
            "  {:<58} {:<48} {:>6} {:>6} {:>4} {:>6} {:>6}  {}\n",
            r.event,
            r.backend,
            r.attempted,
            r.failed,
            r.held,
            r.broken,
            r.catch_up
                .map(|c| format!("{:.1}s", c.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            if r.not_run.is_some() {
                "NOT RUN"
            } else if r.ok() {
                "ok"
            } else {
                "FAIL"
            }
        ));
    }
    println!(
        "live summary:\n  {:<58} {:<48} {:>6} {:>6} {:>4} {:>6} {:>6}\n{table}",
        "event", "backend", "new", "failed", "held", "broken", "catch-up"
    );
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.render())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} live events failed:\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n")
    );
}
