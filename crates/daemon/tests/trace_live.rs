//! `kproxy trace --live` and `kproxy diff --source kube` through the built
//! binary, on nftables and both iptables flavours.
//!
//! Each test loads the seed article's cluster (`testdata/fixtures/seed.yaml`
//! for node-01) into its own network namespace with `kproxy run --once`,
//! then:
//! - traces connections against the kernel's rules with `trace --live`
//!   (the NodePort from outside reaches both pods 50%/50% masqueraded, a
//!   pod's ClusterIP connection keeps its source, a wrong port is rejected
//!   in nftables mode and not handled in iptables mode), in text and JSON;
//! - runs `diff --source kube --exit-code` against the API server emulator
//!   serving the same objects (no changes, exit 0), then after the
//!   EndpointSlice loses a pod (the exact removals, exit 1);
//! - applies that change with `run --once --source kube` and checks that
//!   `trace --live` follows the kernel (one pod, 100%) and the diff is
//!   empty again.
//!
//! The node address 192.168.49.2 is put on the namespace's loopback, so
//! `--live` finds it as a real node would (`ip -o addr`), with no
//! `--node-ip`. Needs root, nft and iptables: fails, never skips, without
//! them.

#![allow(
    clippy::disallowed_methods,
    reason = "test code: starts the binary under test, `ip netns` and shells itself"
)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kproxy_apiserver_emulator::Emulator;
use kproxy_testkit::NetNs;
use serde_json::Value;

const KPROXY: &str = env!("CARGO_BIN_EXE_kproxy");
const NODE_IP: &str = "192.168.49.2";
const POD_A: &str = "10.244.1.5:80";
const POD_B: &str = "10.244.2.4";
/// A client outside the cluster, and a pod of this node.
const OUTSIDE: &str = "203.0.113.2";
const LOCAL_POD: &str = "10.244.0.7";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn seed_config() -> String {
    repo()
        .join("testdata/configs/seed.yaml")
        .display()
        .to_string()
}

/// The seed fixture's objects (a `kind: List`), as JSON values.
fn seed_objects() -> Vec<Value> {
    let path = repo().join("testdata/fixtures/seed.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let list: Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    list["items"]
        .as_array()
        .expect("seed.yaml is a List")
        .clone()
}

/// The seed with pod 10.244.2.4 gone from the Service's EndpointSlice.
fn seed_scaled_down() -> Vec<Value> {
    let mut objects = seed_objects();
    let slice = objects
        .iter_mut()
        .find(|o| o["kind"] == "EndpointSlice")
        .expect("the seed has an EndpointSlice");
    let eps = slice["endpoints"].as_array_mut().expect("endpoints");
    let before = eps.len();
    eps.retain(|e| e["addresses"][0] != POD_B);
    assert_eq!(eps.len(), before - 1, "pod {POD_B} is in the seed's slice");
    objects
}

/// The test's namespace (`kp-kpt-<pid>-<n>`, with an xtables lock file of
/// its own) with the node's address on its loopback.
fn test_ns() -> NetNs {
    let ns = NetNs::new("kpt");
    ns.exec(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
    ns
}

/// What a `kproxy` run printed, and its exit code.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `kproxy ARGS` inside the namespace, to completion (async: the emulator
/// serves from this test's runtime meanwhile).
async fn kproxy(ns: &NetNs, args: &[&str]) -> Out {
    let mut c = tokio::process::Command::new("ip");
    c.args(["netns", "exec", ns.name(), "env"])
        .arg(format!("XTABLES_LOCKFILE={}", ns.xtables_lock()))
        .arg(KPROXY)
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KPROXY_NODE_NAME")
        .env_remove("KPROXY_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), c.output())
        .await
        .unwrap_or_else(|_| panic!("kproxy {args:?} did not finish within 60 s"))
        .unwrap_or_else(|e| panic!("kproxy {args:?}: {e}"));
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kproxy run --once --backend BACKEND SOURCE... --config CONFIG`.
async fn run_once(ns: &NetNs, backend: &str, source: &[&str], config: &str) -> Out {
    let mut args = vec!["run", "--once", "--backend", backend];
    args.extend_from_slice(source);
    args.extend_from_slice(&["--config", config]);
    kproxy(ns, &args).await
}

/// `kproxy trace --live --backend BACKEND --from FROM --to TO EXTRA...`.
async fn trace_live(ns: &NetNs, backend: &str, from: &str, to: &str, extra: &[&str]) -> Out {
    let mut args = vec![
        "trace",
        "--live",
        "--backend",
        backend,
        "--from",
        from,
        "--to",
        to,
    ];
    args.extend_from_slice(extra);
    kproxy(ns, &args).await
}

/// `kproxy trace --live` of one connection: its `Path:` and `Outcome:` lines.
async fn trace(ns: &NetNs, backend: &str, from: &str, to: &str) -> (String, String) {
    let out = trace_live(ns, backend, from, to, &[]).await;
    assert_eq!(out.code, Some(0), "{backend}: trace {from} -> {to}: {out}");
    let line = |prefix: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| panic!("{backend}: no `{prefix}` line in:\n{out}"))
    };
    (line("Path:"), line("Outcome:"))
}

/// The outcome of `trace --live --format json` as (endpoint, probability,
/// masqueraded), sorted by endpoint.
async fn trace_json(ns: &NetNs, backend: &str, from: &str, to: &str) -> Vec<(String, f64, bool)> {
    let out = trace_live(ns, backend, from, to, &["--format", "json"]).await;
    assert_eq!(out.code, Some(0), "{backend}: trace --format json: {out}");
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{backend}: trace JSON does not parse ({e}):\n{out}"));
    let parts = v["outcome"]["parts"]
        .as_array()
        .unwrap_or_else(|| panic!("{backend}: no outcome.parts in:\n{out}"));
    let mut got: Vec<(String, f64, bool)> = parts
        .iter()
        .map(|p| {
            assert_eq!(p["verdict"], "ACCEPT", "{backend}: {p}");
            (
                p["dnat"].as_str().unwrap_or("(none)").to_string(),
                p["probability"].as_f64().unwrap_or(f64::NAN),
                p["masquerade"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    got
}

/// What differs per backend.
struct Expect {
    backend: &'static str,
    /// Path of the NodePort connection from outside.
    nodeport_path: &'static str,
    /// Path of a pod's connection to the ClusterIP.
    clusterip_path: &'static str,
    /// Outcome of a pod's connection to the ClusterIP on a wrong port.
    wrong_port: &'static str,
    /// Lines `diff --source kube` must print once pod 10.244.2.4 is gone.
    scaled_down_diff: &'static [&'static str],
}

const NFTABLES: Expect = Expect {
    backend: "nftables",
    nodeport_path: "nat-prerouting -> services -> mark-nodeport-cluster-tcp-2 -> nodeport-cluster-tcp-2 -> DNAT to 10.244.1.5:80 (50%) / DNAT to 10.244.2.4:80 (50%)",
    clusterip_path: "nat-prerouting -> services -> cluster-tcp-2 -> DNAT to 10.244.1.5:80 (50%) / DNAT to 10.244.2.4:80 (50%)",
    wrong_port: "REJECT",
    scaled_down_diff: &[
        "-   10.107.33.105 . tcp . 80 . 1 : 10.244.2.4 . 80",
        "-   tcp . 30007 . 1 : 10.244.2.4 . 80",
        "+   10.107.33.105 . tcp . 80 comment \"web/web-service\" : goto cluster-tcp-1",
    ],
};

/// Both iptables flavours write, and print back, the same rules.
const fn iptables(backend: &'static str) -> Expect {
    Expect {
        backend,
        nodeport_path: "PREROUTING -> KUBE-SERVICES -> KUBE-NODEPORTS -> KUBE-EXT-6NP7QLHXVWVVFBVL -> KUBE-SVC-6NP7QLHXVWVVFBVL -> KUBE-SEP-GPPLZ26R2KHJ2RMU (50%) / KUBE-SEP-QQH73SDDDTZQH4BO (50%)",
        clusterip_path: "PREROUTING -> KUBE-SERVICES -> KUBE-SVC-6NP7QLHXVWVVFBVL -> KUBE-SEP-GPPLZ26R2KHJ2RMU (50%) / KUBE-SEP-QQH73SDDDTZQH4BO (50%)",
        // kube-proxy's iptables mode has no rule for a ClusterIP's unused
        // ports (docs/backends/nftables.md, "Differences"); nftables mode
        // rejects them.
        wrong_port: "not handled (accepted without DNAT)",
        scaled_down_diff: &[
            "- chain IPv4 nat KUBE-SEP-QQH73SDDDTZQH4BO",
            "+   -A KUBE-SVC-6NP7QLHXVWVVFBVL -m comment --comment \"web/web-service -> 10.244.1.5:80\" -j KUBE-SEP-GPPLZ26R2KHJ2RMU",
        ],
    }
}

async fn trace_and_diff(x: Expect) {
    let started = Instant::now();
    let b = x.backend;
    let ns = test_ns();
    let nodeport = format!("{NODE_IP}:30007/tcp");
    let clusterip = "10.107.33.105:80/tcp";

    // Load the seed's rules with the binary.
    let seed = repo().join("testdata/fixtures/seed.yaml");
    let seed = seed.display().to_string();
    let out = run_once(&ns, b, &["--source", &seed], &seed_config()).await;
    assert_eq!(out.code, Some(0), "{b}: run --once: {out}");

    // The article's walk: NodePort from outside, both pods, masqueraded.
    let (path, outcome) = trace(&ns, b, OUTSIDE, &nodeport).await;
    assert_eq!(path, x.nodeport_path, "{b}: NodePort path");
    assert_eq!(
        outcome,
        format!("DNAT to {POD_A} (50%) or {POD_B}:80 (50%), masqueraded"),
        "{b}: NodePort outcome"
    );
    assert_eq!(
        trace_json(&ns, b, OUTSIDE, &nodeport).await,
        vec![
            (POD_A.to_string(), 0.5, true),
            (format!("{POD_B}:80"), 0.5, true)
        ],
        "{b}: NodePort outcome as JSON"
    );
    // A pod of this node (in clusterCIDR) keeps its source address.
    let (path, outcome) = trace(&ns, b, LOCAL_POD, clusterip).await;
    assert_eq!(path, x.clusterip_path, "{b}: ClusterIP path");
    assert_eq!(
        outcome,
        format!("DNAT to {POD_A} (50%) or {POD_B}:80 (50%), source preserved (not masqueraded)"),
        "{b}: ClusterIP outcome"
    );
    // The node itself (its address is local) is masqueraded.
    let (_, outcome) = trace(&ns, b, NODE_IP, clusterip).await;
    assert_eq!(
        outcome,
        format!("DNAT to {POD_A} (50%) or {POD_B}:80 (50%), masqueraded"),
        "{b}: ClusterIP from the node"
    );
    let (_, outcome) = trace(&ns, b, LOCAL_POD, "10.107.33.105:8080/tcp").await;
    assert_eq!(outcome, x.wrong_port, "{b}: ClusterIP, wrong port");

    // The API server holds the same objects: nothing to change.
    let (emu, _) = Emulator::start_with(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        common::bind_in(ns.name()),
    )
    .await
    .expect("emulator starts inside the namespace");
    let kubeconfig = std::env::temp_dir().join(format!("{}.kubeconfig", ns.name()));
    let _kubeconfig_guard = RemoveOnDrop(kubeconfig.clone());
    emu.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    emu.replace_all(&seed_objects()).expect("seed objects");
    let kc = kubeconfig.display().to_string();
    let config = seed_config();
    let diff_args = [
        "diff",
        "--backend",
        b,
        "--source",
        "kube",
        "--kubeconfig",
        &kc,
        "--config",
        &config,
        "--exit-code",
    ];
    assert_unchanged(b, &kproxy(&ns, &diff_args).await, "the seed");

    // Pod 10.244.2.4 goes away in the API: the diff names what would go.
    emu.replace_all(&seed_scaled_down())
        .expect("scaled-down objects");
    let out = kproxy(&ns, &diff_args).await;
    assert_eq!(
        out.code,
        Some(1),
        "{b}: diff after a change, --exit-code: {out}"
    );
    for line in x.scaled_down_diff {
        assert!(
            out.stdout.lines().any(|l| l == *line),
            "{b}: the diff lacks `{line}`:\n{out}"
        );
    }
    assert!(
        !out.stdout
            .lines()
            .any(|l| l.starts_with('+') && l.contains(POD_B)),
        "{b}: the diff adds something for the removed pod:\n{out}"
    );
    assert!(
        out.stdout.lines().any(|l| l.starts_with("summary: ")),
        "{b}: no summary line:\n{out}"
    );

    // Apply it from the API server; the live trace follows the kernel, and
    // nothing is left to change.
    let out = run_once(&ns, b, &["--source", "kube", "--kubeconfig", &kc], &config).await;
    assert_eq!(out.code, Some(0), "{b}: run --once --source kube: {out}");
    assert_eq!(
        trace_json(&ns, b, OUTSIDE, &nodeport).await,
        vec![(POD_A.to_string(), 1.0, true)],
        "{b}: NodePort after the change"
    );
    let (_, outcome) = trace(&ns, b, LOCAL_POD, clusterip).await;
    assert!(
        outcome.starts_with(&format!("DNAT to {POD_A}")) && !outcome.contains(POD_B),
        "{b}: ClusterIP after the change: {outcome}"
    );
    assert_unchanged(b, &kproxy(&ns, &diff_args).await, "the applied change");
    eprintln!("{b}: {:?}", started.elapsed());
}

/// `diff --source kube --exit-code` of a cluster the kernel already holds:
/// `no changes`, exit 0 (on nftables too: the `sync-generation` canary and
/// the affinity clients are state, not differences).
fn assert_unchanged(b: &str, out: &Out, what: &str) {
    assert_eq!(out.code, Some(0), "{b}: diff of {what}, unchanged: {out}");
    assert_eq!(
        out.stdout.trim(),
        "no changes",
        "{b}: diff of {what}: {out}"
    );
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_trace_live_and_diff_kube() {
    trace_and_diff(NFTABLES).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_legacy_trace_live_and_diff_kube() {
    trace_and_diff(iptables("iptables-legacy")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_nft_trace_live_and_diff_kube() {
    trace_and_diff(iptables("iptables-nft")).await;
}
