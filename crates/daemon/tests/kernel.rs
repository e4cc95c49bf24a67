//! The real `kproxy` binary programming real kernels, each test inside its
//! own network namespace: `run --once` on every backend, the long-running
//! daemon following file changes, failed transactions, drift repair,
//! invalid objects, and the HTTP endpoints.
//!
//! These need root, nft, iptables and iproute2 (`make test` installs them);
//! without them they fail, never skip.

#![allow(
    clippy::disallowed_methods,
    reason = "test code: starts the binary under test, `ip netns` and shells itself"
)]
// Test helpers panic on unexpected I/O errors: that is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kproxy_testkit::NetNs;

const SVC_IP: &str = "172.30.0.41";

fn holds(rules: &str, backend: &str, what: &str) -> bool {
    match backend {
        "nftables" => rules.contains(what),
        // iptables-save prints the ClusterIP as a /32 and endpoints as
        // DNAT targets; a plain substring check covers both.
        _ => rules.contains(what),
    }
}

fn config_arg() -> String {
    default_config().display().to_string()
}

#[test]
fn run_once_programs_every_backend() {
    let (_dir, f) = nodeports_source("once");
    for backend in BACKENDS {
        let ns = test_ns();
        let (ok, _out, err) = run_once(&ns, backend, f.to_str().unwrap());
        assert!(ok, "{backend}: run --once failed: {err}");
        assert!(err.contains("synced"), "{backend}: no sync log line: {err}");
        let rules = kernel_rules(&ns, backend);
        assert!(
            holds(&rules, backend, SVC_IP),
            "{backend}: ClusterIP missing:\n{rules}"
        );
        assert!(
            holds(&rules, backend, "10.180.0.1"),
            "{backend}: endpoint missing:\n{rules}"
        );
    }
}

/// kube-proxy installs no DROP for INVALID packets when the node sets
/// nf_conntrack_tcp_be_liberal (conntrack.tcpBeLiberal sets it); the
/// iptables backends read the namespace's value as kube-proxy does.
#[test]
fn tcp_be_liberal_leaves_out_the_invalid_drop() {
    // The drop carries kube-proxy's nfacct match between the two.
    let has_drop = |rules: &str| {
        rules.lines().any(|l| {
            l.starts_with("-A KUBE-FORWARD -m conntrack --ctstate INVALID")
                && l.ends_with("-j DROP")
        })
    };
    const SYSCTL: &str = "net.netfilter.nf_conntrack_tcp_be_liberal";
    let (_dir, f) = nodeports_source("liberal");
    for backend in ["iptables-legacy", "iptables-nft"] {
        let ns = test_ns();
        let once = || {
            let (ok, _out, err) = run_once_with(&ns, backend, &f, default_config(), &[], &[]);
            assert!(ok, "{backend}: run --once failed: {err}");
            kernel_rules(&ns, backend)
        };
        let rules = once();
        assert!(
            has_drop(&rules),
            "{backend}: default has the drop:\n{rules}"
        );
        ns.exec(&["sysctl", "-q", "-w", &format!("{SYSCTL}=1")]);
        let rules = once();
        assert!(rules.contains("-A KUBE-FORWARD"), "{backend}:\n{rules}");
        assert!(!has_drop(&rules), "{backend}: liberal, yet:\n{rules}");
    }
}

#[test]
fn dry_run_leaves_the_kernel_alone() {
    let (_dir, f) = nodeports_source("dry");
    let ns = test_ns();
    let (ok, out, err) = run_once_with(&ns, "nftables", &f, default_config(), &["--dry-run"], &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("table ip kproxy") && out.contains(SVC_IP),
        "{out}"
    );
    let rules = kernel_rules(&ns, "nftables");
    assert!(!rules.contains("kproxy"), "dry run wrote rules:\n{rules}");
}

#[test]
fn run_once_fails_with_the_error_on_bad_input() {
    let ns = test_ns();
    let once = |source: &str, extra: &[&str]| {
        let mut args = vec!["run", "--backend", "nftables", "--source", source];
        args.extend_from_slice(&["--node-name", "n", "--once"]);
        args.extend_from_slice(extra);
        kproxy_in(&ns, &args, &[])
    };
    let (ok, _, err) = once("/nonexistent/kproxy", &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/kproxy"), "{err}");
    let (ok, _, err) = once("/", &["--sync-period", "soon"]);
    assert!(!ok);
    assert!(err.contains("--sync-period"), "{err}");
}

#[test]
fn daemon_follows_file_changes_and_serves_http() {
    let (dir, _) = nodeports_source("follow");
    let ns = test_ns();
    let config = config_arg();
    let src = dir.path().to_str().unwrap().to_string();
    let mut d = Daemon::start(&ns, &daemon_args("nftables", &src, &config), &[]);
    wait_synced(&ns, &d);
    assert!(kernel_rules(&ns, "nftables").contains("10.180.0.1"));

    // An endpoint moves: the kernel follows, with an incremental sync.
    move_endpoint(&dir);
    assert!(
        wait_for(Duration::from_secs(10), || {
            let r = kernel_rules(&ns, "nftables");
            r.contains("10.180.0.9") && !r.contains("10.180.0.1 ")
        }),
        "the change never reached the kernel:\n{}\n{}",
        kernel_rules(&ns, "nftables"),
        d.log()
    );

    // /healthz and /livez: kube-proxy's JSON.
    let (code, head, body) = http_get(&ns, 10256, "/healthz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(head.contains("application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["healthy"], true, "{body}");
    assert_eq!(v["nodeEligible"], true, "{body}");
    assert_eq!(v["status"]["IPv4"]["healthy"], true, "{body}");
    assert!(
        v["lastUpdated"].is_string() && v["currentTime"].is_string(),
        "{body}"
    );
    let (code, _, body) = http_get(&ns, 10256, "/livez").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v.get("nodeEligible").is_none(), "{body}");
    assert_eq!(http_get(&ns, 10256, "/nope").unwrap().0, 404);

    // /metrics: kube-proxy's names, and kproxy's.
    let (code, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
    assert_eq!(code, 200);
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"}",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total",
        "kubeproxy_sync_proxy_rules_service_changes_total",
        "kubeproxy_proxy_healthz_total{code=\"200\"}",
        "kproxy_sync_bytes_written_total",
        "kproxy_syncs_total{sync=\"full\"}",
    ] {
        assert!(metric(&m, name).is_some(), "{name} missing:\n{m}");
    }
    assert!(
        metric(&m, "kproxy_syncs_total{sync=\"partial\"}").unwrap() >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "kubeproxy_sync_proxy_rules_endpoint_changes_total").unwrap() >= 2.0,
        "{m}"
    );

    // /rules is the applied ruleset in nft syntax; /graph and /status.
    let (code, _, rules) = http_get(&ns, 10249, "/rules").unwrap();
    assert_eq!(code, 200);
    assert!(
        rules.contains("table ip kproxy") && rules.contains("10.180.0.9"),
        "{rules}"
    );
    let (code, _, graph) = http_get(&ns, 10249, "/graph").unwrap();
    assert_eq!(code, 200);
    assert!(graph.contains("ns1/svc1"), "{graph}");
    let (code, _, status) = http_get(&ns, 10249, "/status").unwrap();
    assert_eq!(code, 200);
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(st["backend"], "nftables", "{status}");
    assert_eq!(st["failures"], 0, "{status}");

    // SIGTERM: clean exit, rules stay.
    assert!(d.terminate(), "unclean exit:\n{}", d.log());
    assert!(kernel_rules(&ns, "nftables").contains("10.180.0.9"));
    assert!(d.log().contains("shutting down"), "{}", d.log());
}

/// A wrapper directory whose `nft` / `*-restore` fail while `FLAG` exists
/// and otherwise run the real program: a real loader refusing a real
/// transaction.
fn failing_loaders(dir: &TempDir, flag: &std::path::Path) -> String {
    for prog in [
        "nft",
        "iptables-legacy-restore",
        "ip6tables-legacy-restore",
        "iptables-nft-restore",
        "ip6tables-nft-restore",
    ] {
        let first = format!(
            "if [ -e {flag} ]; then\n\
               case \"$*\" in *-f*|*--noflush*|*--counters*) echo 'injected failure' >&2; exit 1;; esac\n\
               [ \"{prog}\" != nft ] && {{ echo 'injected failure' >&2; exit 1; }}\n\
             fi\n",
            flag = flag.display(),
        );
        write_wrapper(dir, prog, &first);
    }
    dir.path_first()
}

/// With the netlink transport (the default) the nftables backend needs no
/// `nft` at all: a daemon whose PATH holds no programs programs the node,
/// follows a change, and logs no failure.
#[test]
fn nftables_runs_without_nft_installed() {
    let empty = TempDir::new("nopath");
    let (data, _) = nodeports_source("nonft");
    let ns = test_ns();
    let config = config_arg();
    let src = data.path().to_str().unwrap().to_string();
    let path = empty.path().to_str().unwrap().to_string();
    let (ok, _, err) = run_once_with(&ns, "nftables", &src, &config, &[], &[("PATH", &path)]);
    assert!(ok, "run --once without nft failed: {err}");
    assert!(kernel_rules(&ns, "nftables").contains(SVC_IP), "{err}");

    let d = Daemon::start(
        &ns,
        &daemon_args("nftables", &src, &config),
        &[("PATH", &path)],
    );
    wait_synced(&ns, &d);
    move_endpoint_and_wait(
        &ns,
        &data,
        "nftables",
        &d,
        "the change never reached the kernel",
    );
    let (_, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
    assert_eq!(
        metric(
            &m,
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "{m}"
    );
    assert!(!d.log().contains("cannot run nft"), "{}", d.log());
}

#[test]
fn failed_transaction_keeps_rules_and_next_sync_is_full() {
    for backend in ["nftables", "iptables-nft"] {
        let dir = TempDir::new("fail");
        let (data, _) = nodeports_source("faildata");
        let flag = dir.path().join("fail");
        let path = failing_loaders(&dir, &flag);
        let ns = test_ns();
        let config = config_arg();
        let src = data.path().to_str().unwrap().to_string();
        // The injected failure is a loader's: nftables through `nft -f`.
        let d = Daemon::start(
            &ns,
            &daemon_args(backend, &src, &config),
            &[("PATH", &path), ("KPROXY_NFTABLES_TRANSPORT", "exec")],
        );
        wait_synced(&ns, &d);

        std::fs::write(&flag, "").unwrap();
        move_endpoint(&data);
        let failure_metric = if backend == "nftables" {
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"}"
        } else {
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"}"
        };
        assert!(
            metric_reaches(&ns, failure_metric, 1.0, Duration::from_secs(10)),
            "{backend}: no failure counted:\n{}",
            d.log()
        );
        let rules = kernel_rules(&ns, backend);
        assert!(
            rules.contains("10.180.0.1") && !rules.contains("10.180.0.9"),
            "{backend}: the previous rules must stay:\n{rules}"
        );
        // While the loader keeps failing, each retry (one per syncPeriod)
        // is a failed sync; none is drift.
        assert!(
            metric_reaches(&ns, failure_metric, 3.0, Duration::from_secs(10)),
            "{backend}: failures not retried:\n{}",
            d.log()
        );
        let (_, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
        assert_eq!(
            metric(&m, "kproxy_drift_repairs_total"),
            Some(0.0),
            "{backend}: a failing loader is not drift:\n{m}"
        );
        let (_, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
        let full_before = metric(&m, "kproxy_syncs_total{sync=\"full\"}").unwrap_or(0.0);
        if backend == "iptables-nft" {
            assert!(
                metric(
                    &m,
                    "kubeproxy_sync_proxy_rules_iptables_total{ip_family=\"IPv4\",table=\"nat\"}"
                )
                .is_some_and(|v| v > 0.0),
                "{m}"
            );
        }

        std::fs::remove_file(&flag).unwrap();
        wait_for_rules(
            &ns,
            backend,
            "10.180.0.9",
            &d,
            &format!("{backend}: never recovered"),
        );
        assert!(
            wait_for(Duration::from_secs(5), || http_get(&ns, 10249, "/metrics")
                .and_then(|(_, _, m)| metric(&m, "kproxy_syncs_total{sync=\"full\"}"))
                .is_some_and(|v| v > full_before)),
            "{backend}: the sync after a failure must be full:\n{}",
            d.log()
        );
        assert!(d.log().contains("the next sync is full"), "{}", d.log());
    }
}

#[test]
fn deleted_rules_are_repaired_within_a_sync_period() {
    for backend in BACKENDS {
        let (data, _) = nodeports_source("drift");
        let ns = test_ns();
        let config = config_arg();
        let src = data.path().to_str().unwrap().to_string();
        let d = Daemon::start(&ns, &daemon_args(backend, &src, &config), &[]);
        wait_synced(&ns, &d);
        assert!(kernel_rules(&ns, backend).contains(SVC_IP));

        // Someone flushes our rules (firewalld reload, `nft flush ruleset`,
        // `iptables -F`).
        match backend {
            "nftables" => {
                ns.exec(&["nft", "delete", "table", "ip", "kproxy"]);
            }
            flavour => {
                let ipt = format!("iptables-{}", flavour.trim_start_matches("iptables-"));
                for table in ["nat", "filter", "mangle"] {
                    ns.exec_locked(&[&ipt, "-t", table, "-F"]);
                    ns.exec_locked(&[&ipt, "-t", table, "-X"]);
                }
            }
        }
        assert!(!kernel_rules(&ns, backend).contains(SVC_IP));
        // syncPeriod is 1s: repaired within it (plus the sync itself).
        assert!(
            wait_for(Duration::from_secs(4), || kernel_rules(&ns, backend)
                .contains(SVC_IP)),
            "{backend}: not repaired:\n{}",
            d.log()
        );
        let (repairs, m) = scraped(&ns, "kproxy_drift_repairs_total");
        assert!(repairs >= 1.0, "{backend}: {m}");

        // Partial damage: one element of service-ips (nftables), the
        // PREROUTING jump (iptables); repaired within a period as well.
        let (damage, repaired): (Vec<String>, Box<dyn Fn() -> bool>) = match backend {
            "nftables" => (
                "nft delete element ip kproxy service-ips { 172.30.0.41 . tcp . 80 }"
                    .split(' ')
                    .map(String::from)
                    .collect(),
                Box::new(|| {
                    ns.exec(&["nft", "list", "map", "ip", "kproxy", "service-ips"])
                        .contains(SVC_IP)
                }),
            ),
            flavour => {
                let ipt = format!("iptables-{}", flavour.trim_start_matches("iptables-"));
                let ns = &ns;
                (
                    vec![
                        ipt.clone(),
                        "-t".into(),
                        "nat".into(),
                        "-D".into(),
                        "PREROUTING".into(),
                        "-m".into(),
                        "comment".into(),
                        "--comment".into(),
                        "kubernetes service portals".into(),
                        "-j".into(),
                        "KUBE-SERVICES".into(),
                    ],
                    Box::new(move || {
                        ns.exec_locked(&[&ipt, "-t", "nat", "-S", "PREROUTING"])
                            .contains("KUBE-SERVICES")
                    }),
                )
            }
        };
        let argv: Vec<&str> = damage.iter().map(String::as_str).collect();
        ns.exec_locked(&argv);
        assert!(!repaired(), "{backend}: damaged");
        assert!(
            wait_for(Duration::from_secs(4), &*repaired),
            "{backend}: partial damage not repaired:\n{}",
            d.log()
        );
        let (repairs, m) = scraped(&ns, "kproxy_drift_repairs_total");
        assert!(repairs >= 2.0, "{backend}: {m}");
    }
}

#[test]
fn invalid_objects_are_skipped_logged_and_counted() {
    let (data, _) = nodeports_source("invalid");
    data.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: ns1}\nspec:\n  clusterIP: 172.30.0.999\n  ports: [{port: 80, protocol: TCP}]\n",
    );
    let ns = test_ns();
    let config = config_arg();
    let src = data.path().to_str().unwrap().to_string();
    let d = Daemon::start(&ns, &daemon_args("nftables", &src, &config), &[]);
    wait_synced(&ns, &d);
    assert!(
        kernel_rules(&ns, "nftables").contains(SVC_IP),
        "others unaffected"
    );
    let (_, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
    assert!(
        metric(&m, "kproxy_invalid_objects").unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    let log = d.log();
    assert!(
        log.contains("skipped invalid input") && log.contains("ns1/broken"),
        "{log}"
    );
    let (_, _, status) = http_get(&ns, 10249, "/status").unwrap();
    assert!(status.contains("ns1/broken"), "{status}");
}

#[test]
fn health_check_node_port_reports_local_endpoints() {
    // iptables mode listens on every address (NodePorts on all local
    // addresses); nftables mode only on the primary node IP, as kube-proxy.
    for (backend, at, not_at) in [
        ("iptables-nft", "127.0.0.1", None),
        ("nftables", "192.168.0.2", Some("127.0.0.1")),
    ] {
        let data = TempDir::new("hcnp");
        data.write("cluster.yaml", &fixture("etp-local"));
        let ns = test_ns();
        ns.exec(&["ip", "addr", "add", "192.168.0.2/32", "dev", "lo"]);
        let config = config_arg();
        let src = data.path().to_str().unwrap().to_string();
        let d = Daemon::start(&ns, &daemon_args(backend, &src, &config), &[]);
        wait_synced(&ns, &d);
        let get = || http_get_at(&ns, at, 30000, "/");
        let mut r = None;
        assert!(
            wait_for(Duration::from_secs(5), || {
                r = get();
                r.is_some()
            }),
            "{backend}: health-check node port {at}:30000 not open:\n{}",
            d.log()
        );
        if let Some(other) = not_at {
            assert!(
                http_get_at(&ns, other, 30000, "/").is_none(),
                "{backend}: must not listen on {other}"
            );
        }
        let (code, head, body) = r.unwrap();
        // Header names are case-insensitive; hyper sends them in lower case.
        let head = head.to_ascii_lowercase();
        assert_eq!(code, 200, "{body}");
        assert!(
            head.contains("x-load-balancing-endpoint-weight: 1"),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["localEndpoints"], 1);
        assert_eq!(v["service"]["namespace"], "ns1");
        assert_eq!(v["service"]["name"], "svc1");
        assert_eq!(v["serviceProxyHealthy"], true);

        // The local endpoint moves to another node: 503, count 0.
        data.write(
            "cluster.yaml",
            &fixture("etp-local").replace("nodeName: test-node", "nodeName: other-node"),
        );
        assert!(
            wait_for(Duration::from_secs(10), || get().is_some_and(
                |(c, h, _)| c == 503
                    && h.to_ascii_lowercase()
                        .contains("x-load-balancing-endpoint-weight: 0")
            )),
            "{backend}: {}",
            d.log()
        );

        // The Service goes: the port closes.
        data.write("cluster.yaml", "");
        assert!(
            wait_for(Duration::from_secs(10), || get().is_none()),
            "{backend}: {}",
            d.log()
        );
    }
}

const UDP_CLUSTER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: dns, namespace: ns1}
spec:
  clusterIP: 172.30.0.50
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 5353}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dns-1, namespace: ns1, labels: {kubernetes.io/service-name: dns}}
addressType: IPv4
ports: [{name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.180.0.1]
  conditions: {ready: true}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ns1}
spec:
  clusterIP: 172.30.0.51
  ports: [{name: dns, port: 53, protocol: UDP}]
"#;

fn conntrack_insert(ns: &NetNs, sport: &str, dst: &str, reply_src: &str, reply_sport: &str) {
    ns.exec(&[
        "conntrack",
        "-I",
        "-p",
        "udp",
        "-s",
        "10.0.0.2",
        "-d",
        dst,
        "--sport",
        sport,
        "--dport",
        "53",
        "-r",
        reply_src,
        "-q",
        "10.0.0.2",
        "--reply-port-src",
        reply_sport,
        "--reply-port-dst",
        sport,
        "-t",
        "300",
    ]);
}

#[test]
fn stale_udp_conntrack_entries_are_deleted() {
    let data = TempDir::new("ct");
    let f = data.write("cluster.yaml", UDP_CLUSTER);
    let ns = test_ns();
    // To a gone endpoint, to the serving one, to a service with no
    // endpoints (scale to zero), never DNATed, and unrelated.
    conntrack_insert(&ns, "40000", "172.30.0.50", "10.180.0.9", "5353");
    conntrack_insert(&ns, "40006", "172.30.0.50", "10.180.0.9", "5353");
    conntrack_insert(&ns, "40001", "172.30.0.50", "10.180.0.1", "5353");
    conntrack_insert(&ns, "40002", "172.30.0.51", "10.180.0.7", "53");
    conntrack_insert(&ns, "40003", "172.30.0.50", "172.30.0.50", "53");
    conntrack_insert(&ns, "40004", "8.8.8.8", "8.8.8.8", "53");
    let (ok, _, err) = run_once(&ns, "nftables", f.to_str().unwrap());
    assert!(ok, "{err}");
    let flows = ns.exec(&["conntrack", "-L", "-p", "udp"]);
    let has = |sport: &str| flows.contains(&format!("sport={sport} "));
    assert!(!has("40000"), "flow to a gone endpoint kept:\n{flows}");
    assert!(
        !has("40006"),
        "second flow to a gone endpoint kept:\n{flows}"
    );
    assert!(
        has("40001"),
        "flow to the serving endpoint deleted:\n{flows}"
    );
    assert!(
        !has("40002"),
        "flow to a scaled-to-zero service kept:\n{flows}"
    );
    assert!(!has("40003"), "never-DNATed flow kept:\n{flows}");
    assert!(has("40004"), "unrelated flow deleted:\n{flows}");
    assert!(
        err.contains("deleted stale UDP conntrack entries") && err.contains("deleted=4"),
        "{err}"
    );
}

/// The iptables backends create kube-proxy's nfacct counters before their
/// first restore and match them as kube-proxy does; localhost NodePort
/// packets count.
#[test]
fn iptables_backends_create_and_match_the_nfacct_counters() {
    use kproxy_netlink::{NfSocket, acct};
    let (_dir, f) = nodeports_source("nfacct");
    for backend in ["iptables-legacy", "iptables-nft"] {
        let ns = test_ns();
        let (ok, _out, err) = run_once_with(&ns, backend, &f, default_config(), &[], &[]);
        assert!(ok, "{backend}: run --once failed: {err}");
        // iptables-save prints two spaces after `--nfacct-name`.
        let rules = kernel_rules(&ns, backend).replace("--nfacct-name  ", "--nfacct-name ");
        assert!(
            rules.lines().any(|l| l
                == "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP"),
            "{backend}:\n{rules}"
        );
        assert!(
            rules.lines().any(|l| l.starts_with("-A KUBE-NODEPORTS -d 127.0.0.0/8 -p tcp")
                && l.contains("--dport 3001 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-")),
            "{backend}:\n{rules}"
        );
        let mut sock = NfSocket::open_in_netns(ns.name()).unwrap();
        assert_eq!(
            acct::get(&mut sock, "ct_state_invalid_dropped_pkts")
                .unwrap()
                .packets,
            0
        );
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // A connection attempt to the localhost NodePort: its SYN is
        // counted in nat OUTPUT whatever becomes of it.
        let _ = ns
            .command("timeout")
            .args(["1", "bash", "-c", "echo > /dev/tcp/127.0.0.1/3001"])
            .output();
        let c = acct::get(&mut sock, "localhost_nps_accepted_pkts").unwrap();
        assert!(c.packets >= 1, "{backend}: {c:?}");
    }
}

/// Thousands of matching flows: every stale one goes, in one sync, and
/// nothing else does. The flows are created over ctnetlink (thousands of
/// `conntrack -I` processes would take longer than the test).
#[test]
fn thousands_of_stale_udp_flows_are_deleted() {
    use kproxy_netlink::conntrack::{self, Flow, IPPROTO_TCP, IPPROTO_UDP, Tuple};
    use std::net::{IpAddr, Ipv4Addr};

    let data = TempDir::new("ctk");
    let f = data.write("cluster.yaml", UDP_CLUSTER);
    let ns = test_ns();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let flow = |proto: u8, i: u32, dst: &str, reply_src: &str, reply_sport: u16| {
        let client = IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i));
        Flow {
            proto,
            orig: Tuple {
                src: client,
                dst: ip(dst),
                sport: 20000 + i as u16,
                dport: 53,
            },
            reply: Tuple {
                src: ip(reply_src),
                dst: client,
                sport: reply_sport,
                dport: 20000 + i as u16,
            },
            zone: 0,
            id: None,
        }
    };
    let mut flows = Vec::new();
    // Stale: to a gone endpoint (3000), to a service scaled to zero (1000).
    flows.extend((0..3000).map(|i| flow(IPPROTO_UDP, i, "172.30.0.50", "10.180.0.9", 5353)));
    flows.extend((3000..4000).map(|i| flow(IPPROTO_UDP, i, "172.30.0.51", "10.180.0.7", 53)));
    // Kept: to the serving endpoint, unrelated UDP, TCP to the service.
    flows.extend((4000..6000).map(|i| flow(IPPROTO_UDP, i, "172.30.0.50", "10.180.0.1", 5353)));
    flows.extend((6000..7000).map(|i| flow(IPPROTO_UDP, i, "8.8.8.8", "8.8.8.8", 53)));
    flows.extend((7000..8000).map(|i| flow(IPPROTO_TCP, i, "172.30.0.50", "10.180.0.9", 5353)));
    let mut sock = kproxy_netlink::NfSocket::open_in_netns(ns.name()).unwrap();
    assert_eq!(
        conntrack::create(&mut sock, kproxy_netlink::Family::Ip, &flows, 300).unwrap(),
        8000
    );
    let (ok, _, err) = run_once_with(&ns, "nftables", &f, default_config(), &[], &[]);
    assert!(ok, "{err}");
    let udp = ns.exec(&["conntrack", "-L", "-p", "udp"]);
    let count = |pat: &str| udp.lines().filter(|l| l.contains(pat)).count();
    assert_eq!(count("dst=172.30.0.50 "), 2000, "flows to the service left");
    assert_eq!(
        count("src=10.180.0.1 "),
        2000,
        "flows to the serving endpoint"
    );
    assert_eq!(count("src=10.180.0.9 "), 0, "flows to the gone endpoint");
    assert_eq!(count("dst=172.30.0.51 "), 0, "flows to the empty service");
    assert_eq!(count("dst=8.8.8.8 "), 1000, "unrelated flows");
    let tcp = ns.exec(&["conntrack", "-L", "-p", "tcp"]);
    assert_eq!(tcp.lines().filter(|l| l.starts_with("tcp")).count(), 1000);
    assert!(
        err.contains("deleted stale UDP conntrack entries") && err.contains("deleted=4000"),
        "{err}"
    );
}

/// kube-proxy's leftovers in every mode, plus rules that belong to someone
/// else.
fn plant_leftovers(ns: &NetNs) {
    ns.exec(&["nft", "add", "table", "ip", "kube-proxy"]);
    ns.exec(&["nft", "add", "chain", "ip", "kube-proxy", "services"]);
    ns.exec(&["nft", "add", "table", "ip", "someone-else"]);
    for ipt in ["iptables-legacy", "iptables-nft"] {
        // Already there when a kproxy iptables backend ran first.
        let _ = ns
            .command("env")
            .arg(format!("XTABLES_LOCKFILE={}", ns.xtables_lock()))
            .args([ipt, "-t", "nat", "-N", "KUBE-SERVICES"])
            .output();
        ns.exec_locked(&[
            ipt,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-m",
            "comment",
            "--comment",
            "kubernetes service portals",
            "-j",
            "KUBE-SERVICES",
        ]);
        ns.exec_locked(&[
            ipt, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
        ]);
    }
}

fn assert_foreign_rules_intact(ns: &NetNs) {
    assert!(kernel_rules(ns, "nftables").contains("table ip someone-else"));
    for b in ["iptables-legacy", "iptables-nft"] {
        let r = kernel_rules(ns, b);
        assert!(
            r.contains("--dport 22 -j ACCEPT"),
            "{b}: foreign rule removed:\n{r}"
        );
    }
}

#[test]
fn other_modes_leftovers_are_removed_after_the_first_sync() {
    let (_data, f) = nodeports_source("leftovers");
    let ns = test_ns();
    plant_leftovers(&ns);
    let (ok, _, err) = run_once(&ns, "nftables", f.to_str().unwrap());
    assert!(ok, "{err}");
    let nft = kernel_rules(&ns, "nftables");
    assert!(
        nft.contains("table ip kproxy") && nft.contains(SVC_IP),
        "{nft}"
    );
    assert!(!nft.contains("table ip kube-proxy"), "{nft}");
    for b in ["iptables-legacy", "iptables-nft"] {
        let r = kernel_rules(&ns, b);
        assert!(
            !r.contains("KUBE-SERVICES"),
            "{b}: kube-proxy's chains left:\n{r}"
        );
    }
    assert_foreign_rules_intact(&ns);
}

#[test]
fn cleanup_removes_kproxy_and_kube_proxy_rules_only() {
    for backend in BACKENDS {
        let (_data, f) = nodeports_source("cleanup");
        let ns = test_ns();
        let (ok, _, err) = run_once(&ns, backend, f.to_str().unwrap());
        assert!(ok, "{backend}: {err}");
        plant_leftovers(&ns);
        let (ok, _, err) = kproxy_in(&ns, &["cleanup", "--backend", "all"], &[]);
        assert!(ok, "{backend}: cleanup failed: {err}");
        let nft = kernel_rules(&ns, "nftables");
        assert!(
            !nft.contains("table ip kproxy") && !nft.contains("table ip kube-proxy"),
            "{backend}:\n{nft}"
        );
        for b in ["iptables-legacy", "iptables-nft"] {
            let r = kernel_rules(&ns, b);
            // KUBE-FIREWALL (the localnet guard) is shared with kubelet,
            // which creates it too; like kube-proxy's cleanup, it stays.
            let left: Vec<&str> = r
                .lines()
                .filter(|l| l.contains("KUBE-") && !l.contains("KUBE-FIREWALL"))
                .collect();
            assert!(left.is_empty(), "{backend}/{b}: left: {left:#?}");
        }
        assert_foreign_rules_intact(&ns);
    }
}

/// What an observer saw while one daemon replaced another: more than `min`
/// `what` (checks of the rules, connections) and not one failed.
#[track_caller]
fn assert_unbroken(
    backend: &str,
    what: &str,
    min: usize,
    seen: usize,
    failed: &[String],
    log: &str,
) {
    assert!(seen > min, "{backend}: too few {what} ({seen})");
    assert!(
        failed.is_empty(),
        "{backend}: {} of {seen} {what} failed, the first {:?}:\n{log}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

#[test]
fn restart_never_leaves_the_kernel_without_rules() {
    for backend in ["nftables", "iptables-nft"] {
        let (data, _) = nodeports_source("restart");
        let ns = test_ns();
        let config = config_arg();
        let src = data.path().to_str().unwrap().to_string();
        let mut d = Daemon::start(&ns, &daemon_args(backend, &src, &config), &[]);
        wait_synced(&ns, &d);

        // Watch the kernel continuously while the daemon is killed (no
        // cleanup at all) and a new one takes over.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            let name = ns.name().to_string();
            let backend = backend.to_string();
            std::thread::spawn(move || {
                let mut checks = 0usize;
                let mut gaps = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let argv: &[&str] = if backend == "nftables" {
                        &["nft", "list", "table", "ip", "kproxy"]
                    } else {
                        &["iptables-nft-save", "-t", "nat"]
                    };
                    let out = std::process::Command::new("ip")
                        .args(["netns", "exec", &name])
                        .args(argv)
                        .output()
                        .unwrap();
                    // A missing table is a gap; a listing that fails for
                    // another reason (the ruleset changed under the dump)
                    // says nothing about the rules and is not counted.
                    let err = String::from_utf8_lossy(&out.stderr);
                    if !out.status.success() && !err.contains("No such file or directory") {
                        continue;
                    }
                    let text = String::from_utf8_lossy(&out.stdout);
                    if !text.contains(SVC_IP) || !text.contains("10.180.0.1") {
                        gaps.push(text.into_owned());
                    }
                    checks += 1;
                }
                (checks, gaps)
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        let d2 = Daemon::start(&ns, &daemon_args(backend, &src, &config), &[]);
        wait_synced(&ns, &d2);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (checks, gaps) = watcher.join().unwrap();
        assert_unbroken(backend, "checks", 10, checks, &gaps, &d2.log());
    }
}

#[test]
fn conntrack_settings_from_the_configuration_are_applied() {
    let (data, f) = nodeports_source("sysctl");
    let config = write_config(
        &data,
        "conntrack:\n  tcpEstablishedTimeout: 2h\n  tcpCloseWaitTimeout: 90s\n",
    );
    let ns = test_ns();
    let (ok, _, err) = run_once_with(&ns, "nftables", &f, &config, &[], &[]);
    assert!(ok, "{err}");
    // Per network namespace: the host's values are untouched.
    let est = ns.exec(&[
        "cat",
        "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    ]);
    let cw = ns.exec(&[
        "cat",
        "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    ]);
    assert_eq!(est.trim(), "7200", "{err}");
    assert_eq!(cw.trim(), "90", "{err}");
}

#[test]
fn restart_under_traffic_fails_no_connection() {
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    for backend in BACKENDS {
        let (data, _) = nodeports_source("traffic");
        let ns = test_ns();
        // Both endpoints live on this namespace's loopback, and the service
        // range routes there, so the namespace is client, node and pods:
        // a connection to the ClusterIP only works through kproxy's DNAT.
        for ip in ["10.180.0.1/32", "10.180.2.1/32"] {
            ns.exec(&["ip", "addr", "add", ip, "dev", "lo"]);
        }
        ns.exec(&["ip", "route", "add", "172.30.0.0/16", "dev", "lo"]);
        let listener = in_netns(&ns, || std::net::TcpListener::bind("0.0.0.0:80").unwrap())
            .join()
            .unwrap();
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let _ = c.write_all(b"ok\n");
            }
        });

        let config = config_arg();
        let src = data.path().to_str().unwrap().to_string();
        let mut d = Daemon::start(&ns, &daemon_args(backend, &src, &config), &[]);
        wait_synced(&ns, &d);

        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let stop = stop.clone();
            in_netns(&ns, move || {
                let (mut ok, mut failed) = (0usize, Vec::new());
                let addr = (std::net::Ipv4Addr::new(172, 30, 0, 41), 80).into();
                while !stop.load(Ordering::SeqCst) {
                    let r = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(1)))?;
                            let mut buf = String::new();
                            s.read_to_string(&mut buf)?;
                            Ok(buf)
                        });
                    match r {
                        Ok(b) if b == "ok\n" => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                (ok, failed)
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        // Killed without warning, then a new daemon takes over.
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let d2 = Daemon::start(&ns, &daemon_args(backend, &src, &config), &[]);
        wait_synced(&ns, &d2);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let (ok, failed) = client.join().unwrap();
        let tries = ok + failed.len();
        assert_unbroken(backend, "connections", 20, tries, &failed, &d2.log());
    }
}

#[test]
fn auto_picks_nftables_and_falls_back_to_iptables() {
    let (_data, f) = nodeports_source("auto");
    let auto = |ns: &NetNs, env: &[(&str, &str)]| {
        run_once_with(ns, "auto", &f, default_config(), &[], env)
    };
    let ns = test_ns();
    let (ok, _, err) = auto(&ns, &[]);
    assert!(ok, "{err}");
    assert!(err.contains("backend=nftables"), "{err}");
    assert!(kernel_rules(&ns, "nftables").contains(SVC_IP));

    // A host whose nft does not work and the exec transport: the
    // iptables flavour in use (none here, so nft's, as iptables-wrappers
    // decides on a tie).
    let bin = TempDir::new("nonft");
    bin.write_program("nft", "#!/bin/sh\necho 'nft: broken' >&2\nexit 1\n");
    let path = bin.path_first();
    // Over netlink (the default) nftables needs no working nft.
    let ns = test_ns();
    let (ok, _, err) = auto(&ns, &[("PATH", &path)]);
    assert!(ok, "{err}");
    assert!(err.contains("backend=nftables"), "{err}");
    // Through `nft -f` it does: auto falls back.
    let ns = test_ns();
    let (ok, _, err) = auto(
        &ns,
        &[("PATH", &path), ("KPROXY_NFTABLES_TRANSPORT", "exec")],
    );
    assert!(ok, "{err}");
    assert!(err.contains("backend=iptables-nft"), "{err}");
    assert!(kernel_rules(&ns, "iptables-nft").contains(SVC_IP));
}

#[test]
fn a_busy_listener_port_is_not_fatal_unless_asked() {
    let (data, _) = nodeports_source("busy");
    let ns = test_ns();
    let _busy = in_netns(&ns, || {
        std::net::TcpListener::bind("127.0.0.1:10256").unwrap()
    })
    .join()
    .unwrap();
    let config = config_arg();
    let src = data.path().to_str().unwrap().to_string();
    let d = Daemon::start(&ns, &daemon_args("nftables", &src, &config), &[]);
    wait_synced(&ns, &d);
    assert!(
        d.log().contains("continuing without this listener"),
        "{}",
        d.log()
    );

    let mut args = daemon_args("nftables", &src, &config);
    args.push("--bind-address-hard-fail");
    let mut d = Daemon::start(&ns, &args, &[]);
    let status = d.child.wait().unwrap();
    assert!(!status.success());
    assert!(d.log().contains("127.0.0.1:10256"), "{}", d.log());
}

#[test]
fn a_changed_configuration_file_restarts_the_daemon() {
    let (data, _) = nodeports_source("cfgchange");
    let cfgdir = TempDir::new("cfg");
    let base = std::fs::read_to_string(default_config()).unwrap();
    let config = cfgdir.write("config.yaml", &base);
    let ns = test_ns();
    let src = data.path().to_str().unwrap().to_string();
    let mut d = Daemon::start(
        &ns,
        &daemon_args("nftables", &src, config.to_str().unwrap()),
        &[],
    );
    wait_synced(&ns, &d);
    cfgdir.write(
        "config.yaml",
        &format!("{base}iptables:\n  masqueradeAll: true\n"),
    );
    assert!(
        wait_for(Duration::from_secs(10), || d
            .child
            .try_wait()
            .unwrap()
            .is_some()),
        "still running:\n{}",
        d.log()
    );
    assert!(d.log().contains("changed; exiting"), "{}", d.log());
    assert!(
        kernel_rules(&ns, "nftables").contains(SVC_IP),
        "the rules stay"
    );
}

#[test]
fn nodeport_address_cidrs_match_the_hosts_interface_addresses() {
    // 192.168.7.7 is on an interface but not in the Node object: like
    // kube-proxy, a nodePortAddresses CIDR selects it.
    let (data, f) = nodeports_source("hostaddr");
    let cfg = write_config(&data, "nodePortAddresses: [192.168.7.0/24]\n");
    let ns = test_ns();
    ns.exec(&["ip", "addr", "add", "192.168.7.7/32", "dev", "lo"]);
    let (ok, _, err) = run_once_with(&ns, "nftables", &f, &cfg, &[], &[]);
    assert!(ok, "{err}");
    let rules = kernel_rules(&ns, "nftables");
    assert!(rules.contains("192.168.7.7"), "{rules}");
    assert!(
        !rules.contains("192.168.0.2 "),
        "not selected by the CIDR:\n{rules}"
    );
}
