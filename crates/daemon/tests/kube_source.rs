//! `kproxy run --source kube` end to end: the real binary, in a network
//! namespace, against the API server emulator serving inside that
//! namespace; the kernel's rules must follow the API's EndpointSlices,
//! and survive the API server going away.
//!
//! Needs root (network namespaces, nft); fails, never skips, without it.

#![allow(
    clippy::disallowed_methods,
    reason = "test code: starts the binary under test, `ip netns` and shells itself"
)]

mod common;

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kproxy_apiserver_emulator::Emulator;
use kproxy_testkit::{NetNs, TempDir, echo_server, in_netns};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const NODE: &str = "test-node";

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
           "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24"]},
           "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.2"}]}})
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "web", "namespace": "default"},
           "spec": {"type": "ClusterIP", "clusterIP": "172.30.0.10", "clusterIPs": ["172.30.0.10"],
                    "ipFamilies": ["IPv4"],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

fn slice(ips: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-abc", "namespace": "default",
                        "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4",
           "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true},
                                                   "nodeName": "other-node"})).collect::<Vec<_>>(),
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

/// An emulator serving inside namespace `ns` on loopback, its kubeconfig
/// written to `kubeconfig`, with this node, the Service and its
/// EndpointSlice of `ips`.
async fn emulator_in(ns: &str, kubeconfig: &Path, ips: &[&str]) -> Emulator {
    let (emu, _) = Emulator::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), common::bind_in(ns))
        .await
        .expect("emulator starts inside the namespace");
    emu.write_kubeconfig(kubeconfig).expect("kubeconfig");
    emu.apply(&node()).expect("node");
    emu.apply(&service()).expect("service");
    emu.apply(&slice(ips)).expect("slice");
    emu
}

/// A test namespace, with [`emulator_in`] it serving the endpoint
/// 10.0.1.1, and a scratch directory `dir_name` that holds its kubeconfig.
struct Emulated {
    ns: NetNs,
    dir: TempDir,
    kubeconfig: PathBuf,
    emu: Emulator,
}

async fn emulated(dir_name: &str) -> Emulated {
    let ns = common::test_ns();
    let dir = TempDir::new(dir_name);
    let kubeconfig = dir.path().join("kubeconfig");
    let emu = emulator_in(ns.name(), &kubeconfig, &["10.0.1.1"]).await;
    Emulated {
        ns,
        dir,
        kubeconfig,
        emu,
    }
}

/// `kproxy run --source kube --backend nftables` in `ns` on this node,
/// with the API server of `kubeconfig` and the `extra` arguments.
fn nftables_daemon(ns: &NetNs, kubeconfig: &Path, extra: &[&str]) -> common::Daemon {
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");
    let args = [
        "--source",
        "kube",
        "--backend",
        "nftables",
        "--node-name",
        NODE,
        "--kubeconfig",
        kubeconfig,
    ];
    common::Daemon::start(ns, &[&args[..], extra].concat(), &[])
}

/// The backend's rules inside the namespace: `nft list table ip kproxy`,
/// or the iptables flavour's `*-save` output ("" when there are none).
async fn rules(ns: &NetNs, backend: &str) -> String {
    let argv: &[&str] = match backend {
        "nftables" => &["nft", "list", "table", "ip", "kproxy"],
        "iptables-nft" => &["iptables-nft-save"],
        "iptables-legacy" => &["iptables-legacy-save"],
        other => panic!("unknown backend {other}"),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(argv)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("run {argv:?} (kernel tests need nftables, iptables and root): {e}")
        });
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the rules satisfy `ok`; panics with them and the daemon's log otherwise.
async fn wait_rules(
    ns: &NetNs,
    backend: &str,
    what: &str,
    timeout: Duration,
    log: &Path,
    ok: impl Fn(&str) -> bool,
) -> String {
    let start = tokio::time::Instant::now();
    let end = start + timeout;
    loop {
        let r = rules(ns, backend).await;
        if ok(&r) {
            eprintln!("{what}: {:?}", start.elapsed());
            return r;
        }
        if tokio::time::Instant::now() >= end {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "timed out after {timeout:?} waiting for {what}; rules:\n{r}\ndaemon log:\n{log}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(ns: &NetNs, backend: &str, kubeconfig: &Path, log: &Path) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("daemon log file");
        let err = log.try_clone().expect("log handle");
        // `ip netns exec` execs the program, so the child is kproxy itself.
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                env!("CARGO_BIN_EXE_kproxy"),
                "run",
            ])
            .args([
                "--source",
                "kube",
                "--backend",
                backend,
                "--node-name",
                NODE,
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--cluster-cidr",
                "10.0.0.0/16",
                "--min-sync-period",
                "200ms",
            ])
            .env("KPROXY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("start kproxy");
        Daemon { child }
    }

    fn assert_running(&mut self, log: &Path) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!(
                "kproxy exited ({status}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("daemon pid");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits"));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("kproxy exits within 20 s of SIGTERM")
            .expect("wait");
        status.success()
    }
}

/// The whole story on one backend, against an API server that serves
/// streaming lists or (`watch_list` false: its WatchList gate off)
/// refuses them.
async fn follows_the_api_and_survives_its_absence(backend: &str, watch_list: bool) {
    let ns = NetNs::new("kub");
    let dir = TempDir::new(&format!("kube-run-{backend}"));
    let kubeconfig = dir.join("kubeconfig");
    let log = dir.join("kproxy.log");

    let mut emu = emulator_in(ns.name(), &kubeconfig, &["10.0.1.1"]).await;
    emu.set_watch_list(watch_list);
    let wait = |what: &'static str, secs: u64, ok: fn(&str) -> bool| {
        let (ns, log) = (&ns, &log);
        async move { wait_rules(ns, backend, what, Duration::from_secs(secs), log, ok).await }
    };

    let mut daemon = Daemon::start(&ns, backend, &kubeconfig, &log);
    let first = wait("the first sync", 60, |r| {
        r.contains("172.30.0.10") && r.contains("10.0.1.1")
    })
    .await;
    assert!(!first.contains("10.0.1.2"), "{first}");
    // Streaming lists where served; paged lists (after one refused
    // streaming list, said once in the log) where not. The source learns
    // of a refusal once for all its watchers, so where streaming is
    // refused only the first watcher to start asks for it, whichever
    // kind that is.
    let requests = emu.requests();
    let listed = |r: &&String| r.contains("/endpointslices?") && !r.contains("watch=true");
    let streamed = |r: &&String| r.contains("sendInitialEvents=true");
    let slices_streamed =
        |r: &&String| r.contains("/endpointslices?") && r.contains("sendInitialEvents=true");
    assert_eq!(
        (
            requests.iter().any(|r| listed(&r)),
            requests.iter().any(|r| streamed(&r)),
            requests.iter().any(|r| slices_streamed(&r)) || !watch_list,
        ),
        (!watch_list, true, true),
        "{requests:#?}"
    );
    let told = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        told.matches("refuses streaming lists").count(),
        usize::from(!watch_list),
        "{told}"
    );

    // Endpoints change in the API: the kernel follows.
    emu.apply(&slice(&["10.0.1.2", "10.0.1.3"])).expect("slice");
    wait("the new endpoints", 30, |r| {
        r.contains("10.0.1.2") && r.contains("10.0.1.3") && !r.contains("10.0.1.1")
    })
    .await;

    // The API server goes away; the rules stay while it is gone.
    emu.stop().await;
    emu.apply(&slice(&["10.0.1.4"]))
        .expect("slice while the server is down");
    tokio::time::sleep(Duration::from_secs(4)).await;
    daemon.assert_running(&log);
    let during = rules(&ns, backend).await;
    assert!(
        during.contains("10.0.1.2") && during.contains("10.0.1.3") && !during.contains("10.0.1.4"),
        "{backend}: rules changed while the API server was away:\n{during}"
    );

    // It comes back: the daemon reconnects and catches up.
    emu.restart()
        .await
        .expect("emulator restarts on the same port");
    wait("catching up after the restart", 90, |r| {
        r.contains("10.0.1.4") && !r.contains("10.0.1.2")
    })
    .await;

    // Scale to zero and back.
    emu.apply(&slice(&[])).expect("slice");
    wait("no endpoints", 30, |r| {
        r.contains("172.30.0.10") && !r.contains("10.0.1.4")
    })
    .await;
    emu.apply(&slice(&["10.0.1.5"])).expect("slice");
    wait("endpoints again", 30, |r| r.contains("10.0.1.5")).await;

    daemon.assert_running(&log);
    assert!(
        daemon.terminate().await,
        "kproxy did not exit cleanly on SIGTERM"
    );
    let after = rules(&ns, backend).await;
    assert!(
        after.contains("10.0.1.5"),
        "{backend}: SIGTERM must leave the rules in place:\n{after}"
    );

    // A daemon restarted while the API server fails keeps the old rules
    // (nothing is flushed before the first full sync), then catches up.
    emu.fail_for(Duration::from_secs(600));
    emu.apply(&slice(&["10.0.1.6"])).expect("slice");
    let mut daemon = Daemon::start(&ns, backend, &kubeconfig, &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.assert_running(&log);
    let waiting = rules(&ns, backend).await;
    assert!(
        waiting.contains("10.0.1.5") && !waiting.contains("10.0.1.6"),
        "{backend}: a daemon waiting for the API server changed the rules:\n{waiting}"
    );
    emu.recover();
    wait("the restarted daemon's first sync", 90, |r| {
        r.contains("10.0.1.6") && !r.contains("10.0.1.5")
    })
    .await;
    assert!(
        daemon.terminate().await,
        "kproxy did not exit cleanly on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_follows_the_api_and_survives_its_absence() {
    follows_the_api_and_survives_its_absence("nftables", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_nft_follows_the_api_and_survives_its_absence() {
    follows_the_api_and_survives_its_absence("iptables-nft", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_legacy_follows_the_api_and_survives_its_absence() {
    // With paged lists: an API server whose WatchList gate is off.
    follows_the_api_and_survives_its_absence("iptables-legacy", false).await;
}

// Traffic: a client on the node loops on the ClusterIP while the
// endpoints change in the API and while the API server is away.

/// Set on drop: tells a helper thread to finish.
struct StopFlag(Arc<AtomicBool>);

impl Drop for StopFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One connection attempt's outcome: the endpoint that answered, or the error.
type Outcome = Result<String, String>;

/// A client in `ns` connecting to `target` in a loop (every 20 ms) until
/// stopped; every outcome is recorded.
struct Client {
    outcomes: Arc<Mutex<Vec<(std::time::Instant, Outcome)>>>,
    _stop: StopFlag,
}

impl Client {
    fn start(ns: &str, target: SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let (flag, out) = (stop.clone(), outcomes.clone());
        in_netns(ns, move || {
            while !flag.load(Ordering::SeqCst) {
                let r = (|| {
                    let mut s =
                        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))
                            .map_err(|e| format!("connect: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))
                        .map_err(|e| e.to_string())?;
                    let mut reply = String::new();
                    s.read_to_string(&mut reply)
                        .map_err(|e| format!("read: {e}"))?;
                    Ok(reply)
                })();
                out.lock()
                    .expect("outcomes")
                    .push((std::time::Instant::now(), r));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Client {
            outcomes,
            _stop: StopFlag(stop),
        }
    }

    fn count(&self) -> usize {
        self.outcomes.lock().expect("outcomes").len()
    }

    fn since(&self, from: usize) -> Vec<Outcome> {
        self.outcomes.lock().expect("outcomes")[from..]
            .iter()
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// When the first outcome at or after index `from` satisfying `ok`
    /// was recorded, and whether any later one did not satisfy it.
    fn first_and_stable(
        &self,
        from: usize,
        ok: impl Fn(&Outcome) -> bool,
    ) -> Option<(std::time::Instant, bool)> {
        let all = self.outcomes.lock().expect("outcomes");
        let i = all[from..].iter().position(|(_, o)| ok(o))? + from;
        Some((all[i].0, all[i..].iter().all(|(_, o)| ok(o))))
    }

    /// Waits until the last `n` outcomes all satisfy `ok`; returns how long it took.
    async fn wait_last(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&Outcome) -> bool,
    ) -> Duration {
        let start = std::time::Instant::now();
        loop {
            {
                let all = self.outcomes.lock().expect("outcomes");
                if all.len() >= n && all[all.len() - n..].iter().all(|(_, o)| ok(o)) {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < timeout,
                    "timed out after {timeout:?} waiting for {what}; last outcomes: {:?}",
                    all[all.len().saturating_sub(10)..]
                        .iter()
                        .map(|(_, o)| o)
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Node namespace with two pods on veth links: pod1 10.0.1.2, pod2 10.0.2.2.
fn topology() -> (NetNs, NetNs, NetNs) {
    let node = NetNs::new("kub");
    let pod1 = NetNs::new("kub");
    let pod2 = NetNs::new("kub");
    for (i, pod) in [(1, &pod1), (2, &pod2)] {
        let (host, peer) = (format!("veth{i}"), format!("eth{i}"));
        node.veth(&host, pod, &peer);
        node.exec(&["ip", "addr", "add", &format!("10.0.{i}.1/24"), "dev", &host]);
        node.exec(&["ip", "link", "set", &host, "up"]);
        pod.exec(&["ip", "addr", "add", &format!("10.0.{i}.2/24"), "dev", &peer]);
        pod.exec(&["ip", "link", "set", &peer, "up"]);
        pod.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.0.{i}.1"),
        ]);
    }
    // The ClusterIP needs a route for the first lookup; DNAT then reroutes.
    node.exec(&["ip", "route", "add", "172.30.0.0/16", "dev", "veth1"]);
    (node, pod1, pod2)
}

/// The whole traffic story on one backend.
async fn traffic_follows_the_api(backend: &str) {
    let (node_ns, pod1, pod2) = topology();
    let _echo1 = echo_server(&pod1, "0.0.0.0:8080");
    let _echo2 = echo_server(&pod2, "0.0.0.0:8080");
    let dir = TempDir::new(&format!("kube-traffic-{backend}"));
    let kubeconfig = dir.join("kubeconfig");
    let log = dir.join("kproxy.log");
    let mut emu = emulator_in(node_ns.name(), &kubeconfig, &["10.0.1.2"]).await;
    let daemon = Daemon::start(&node_ns, backend, &kubeconfig, &log);
    wait_rules(
        &node_ns,
        backend,
        "the first sync",
        Duration::from_secs(60),
        &log,
        |r| r.contains("10.0.1.2"),
    )
    .await;

    let vip = SocketAddr::from(([172, 30, 0, 10], 80));
    let client = Client::start(node_ns.name(), vip);
    let pod1_ok = |o: &Outcome| o.as_deref() == Ok("10.0.1.2");
    let pod2_ok = |o: &Outcome| o.as_deref() == Ok("10.0.2.2");
    client
        .wait_last(10, Duration::from_secs(20), "traffic to pod1", pod1_ok)
        .await;
    let from = client.count();

    // Move the endpoint from pod1 to pod2 while the client loops.
    let changed_at = std::time::Instant::now();
    let at_change = client.count();
    emu.apply(&slice(&["10.0.2.2"])).expect("slice");
    client
        .wait_last(10, Duration::from_secs(20), "traffic to pod2", pod2_ok)
        .await;
    let (first_pod2, stable) = client
        .first_and_stable(at_change, pod2_ok)
        .expect("pod2 answered");
    let switch = first_pod2.duration_since(changed_at);
    assert!(
        stable,
        "{backend}: pod1 answered again after pod2 took over: {:?}",
        client.since(at_change)
    );
    let mid = client.count();

    // The API server goes away: traffic keeps flowing to pod2.
    emu.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = client.since(mid);
    assert!(
        during.len() > 10 && during.iter().all(pod2_ok),
        "{backend}: traffic changed while the API server was away: {during:?}"
    );

    // It comes back with a change made meanwhile: both pods answer.
    emu.apply(&slice(&["10.0.1.2", "10.0.2.2"])).expect("slice");
    emu.restart().await.expect("emulator restarts");
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let recent = client.since(client.count().saturating_sub(40));
        if recent.iter().any(pod1_ok) && recent.iter().any(pod2_ok) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "{backend}: both pods never answered after the restart: {recent:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // No connection failed at any point: every endpoint change kept a
    // serving endpoint, so none may.
    let all = client.since(from);
    let failures: Vec<&Outcome> = all.iter().filter(|o| o.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{backend}: {} of {} connections failed: {failures:?}",
        failures.len(),
        all.len()
    );
    eprintln!(
        "{backend}: first connection to the new endpoint {switch:?} after the API change; {} connections, none failed",
        all.len()
    );
    assert!(
        daemon.terminate().await,
        "kproxy did not exit cleanly on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nftables_traffic_follows_the_api() {
    traffic_follows_the_api("nftables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_nft_traffic_follows_the_api() {
    traffic_follows_the_api("iptables-nft").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_legacy_traffic_follows_the_api() {
    traffic_follows_the_api("iptables-legacy").await;
}

// Bootstrap: a node reaches the API server at its own address, never
// through a ClusterIP that kproxy has yet to program.

/// The `kubernetes` Service, whose ClusterIP kproxy programs: a node that
/// needed it to reach the API server could never make its first list.
fn kubernetes_service(api: SocketAddr) -> [Value; 2] {
    [
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "kubernetes", "namespace": "default"},
               "spec": {"type": "ClusterIP", "clusterIP": "172.30.0.1", "clusterIPs": ["172.30.0.1"],
                        "ipFamilies": ["IPv4"],
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                   "targetPort": api.port()}]}}),
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "kubernetes", "namespace": "default",
                            "labels": {"kubernetes.io/service-name": "kubernetes"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [api.ip().to_string()], "conditions": {"ready": true}}],
               "ports": [{"name": "https", "port": api.port(), "protocol": "TCP"}]}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_rules_bootstraps_through_the_control_plane_address() {
    // The node and a control-plane host on a veth link; the emulator
    // listens on the control-plane host's own address.
    let node_ns = NetNs::new("kbn");
    let api_ns = NetNs::new("kba");
    node_ns.veth("cp0", &api_ns, "eth0");
    node_ns.exec(&["ip", "addr", "add", "192.168.77.1/24", "dev", "cp0"]);
    node_ns.exec(&["ip", "link", "set", "cp0", "up"]);
    api_ns.exec(&["ip", "addr", "add", "192.168.77.2/24", "dev", "eth0"]);
    api_ns.exec(&["ip", "link", "set", "eth0", "up"]);
    api_ns.exec(&["ip", "link", "set", "lo", "up"]);
    // A rebooted node: no rules at all.
    assert_eq!(
        rules(&node_ns, "nftables").await,
        "",
        "the node starts empty"
    );

    let (emu, api) = Emulator::start_with(
        SocketAddr::from(([192, 168, 77, 2], 0)),
        common::bind_in(api_ns.name()),
    )
    .await
    .expect("emulator starts on the control-plane address");
    emu.apply(&node()).expect("node");
    for o in kubernetes_service(api) {
        emu.apply(&o).expect("kubernetes service");
    }
    let dir = common::TempDir::new("bootstrap");
    let kubeconfig = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    assert!(
        emu.kubeconfig().contains("server: http://192.168.77.2:"),
        "{}",
        emu.kubeconfig()
    );
    // As the shipped ConfigMap does: the kubeconfig comes from
    // clientConnection, not from a flag or the environment.
    let config = dir.write(
        "config.conf",
        &format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             mode: nftables\nclusterCIDR: 10.0.0.0/16\nhostnameOverride: {NODE}\n\
             clientConnection:\n  kubeconfig: {}\n  qps: 5\n  burst: 10\n",
            kubeconfig.display()
        ),
    );
    let config = config.to_str().expect("utf-8 path").to_string();
    let mut daemon = common::Daemon::start(
        &node_ns,
        &[
            "--source",
            "kube",
            "--config",
            &config,
            "--min-sync-period",
            "200ms",
        ],
        &[],
    );
    let started = tokio::time::Instant::now();
    loop {
        let r = rules(&node_ns, "nftables").await;
        if r.contains("172.30.0.1") && r.contains("192.168.77.2") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no first sync through the control-plane address; rules:\n{r}\nlog:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("first sync {:?} after start", started.elapsed());
    let log = daemon.log();
    assert!(
        log.contains("server=http://192.168.77.2:"),
        "the daemon did not use clientConnection.kubeconfig:\n{log}"
    );
    assert!(
        daemon.terminate(),
        "kproxy did not exit cleanly:\n{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_list_status_shows_the_errors_and_sigterm_exits_0() {
    let ns = common::test_ns();
    let (emu, _) = Emulator::start_with(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        common::bind_in(ns.name()),
    )
    .await
    .expect("emulator starts inside the namespace");
    emu.unavailable_for(Duration::from_secs(600));
    let dir = common::TempDir::new("prelist");
    let kubeconfig = dir.path().join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let mut daemon = nftables_daemon(
        &ns,
        &kubeconfig,
        &["--metrics-bind-address", "127.0.0.1:10249"],
    );
    // The watchers' errors are in /status and the metrics as they happen,
    // although no list has completed and so no sync has run.
    let started = tokio::time::Instant::now();
    let status = loop {
        let status = common::http_get(&ns, 10249, "/status").map(|(_, _, body)| body);
        if let Some(body) = &status {
            let v: Value = serde_json::from_str(body).expect("/status is JSON");
            if v["sourceErrors"].as_array().is_some_and(|e| e.len() == 4) {
                break v;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "/status shows no source errors: {status:?}\nlog:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["syncs"], json!(0), "{status}");
    let errors = status["sourceErrors"].to_string();
    assert!(
        errors.contains("EndpointSlice") && errors.contains("503"),
        "{errors}"
    );
    let (_, _, metrics) = common::http_get(&ns, 10249, "/metrics").expect("/metrics");
    assert_eq!(
        common::metric(&metrics, "kproxy_source_errors{kind=\"EndpointSlice\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        common::metric(&metrics, "kproxy_source_watch_errors_total{kind=\"Node\"}")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // Stopped while it waits for the API server: a clean exit.
    assert!(
        daemon.terminate(),
        "SIGTERM before the first list did not exit 0:\n{}",
        daemon.log()
    );
    assert_eq!(rules(&ns, "nftables").await, "", "nothing was programmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_long_outage_changes_reach_the_kernel_within_the_backoff_cap() {
    // The watchers' longest delay (kproxy's backoff cap) and slack for
    // one sync on a loaded machine: a hang bound, not a performance
    // assertion; the figure is printed.
    const CAP: Duration = Duration::from_secs(30);
    let Emulated {
        ns,
        dir,
        kubeconfig,
        emu,
    } = emulated("outage").await;
    let log = dir.path().join("kproxy.log");
    let mut daemon = Daemon::start(&ns, "nftables", &kubeconfig, &log);
    wait_rules(
        &ns,
        "nftables",
        "the first sync",
        Duration::from_secs(60),
        &log,
        |r| r.contains("10.0.1.1"),
    )
    .await;
    assert!(emu.wait_for_watches(4, Duration::from_secs(10)).await);

    // 35 s down: every watcher's delay has grown to the cap.
    emu.unavailable_for(Duration::from_secs(600));
    emu.hang_up_watches();
    tokio::time::sleep(Duration::from_secs(35)).await;
    daemon.assert_running(&log);
    // It comes back as a restarted API server does: 403s while its
    // authorizer loads, and a watch cache that no longer reaches back to
    // the daemon's resourceVersions (410).
    emu.apply(&slice(&["10.0.1.2"])).expect("slice");
    emu.expire_watches();
    emu.forbid_for(Duration::from_secs(3));
    let back = tokio::time::Instant::now();
    wait_rules(
        &ns,
        "nftables",
        "the change after the outage",
        CAP + Duration::from_secs(3 + 15),
        &log,
        |r| r.contains("10.0.1.2") && !r.contains("10.0.1.1"),
    )
    .await;
    eprintln!(
        "after a 35 s outage, a change reached the kernel {:?} after the API server came back",
        back.elapsed()
    );
    assert!(daemon.terminate().await, "kproxy did not exit cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_api_servers_403s_are_not_warnings() {
    const FORBIDDEN: Duration = Duration::from_secs(5);
    let Emulated {
        ns,
        dir: _dir,
        kubeconfig,
        emu,
    } = emulated("forbidden").await;
    // The authorizer of a just-started API server is not ready yet.
    emu.forbid_for(FORBIDDEN);
    let started = tokio::time::Instant::now();
    let mut daemon = nftables_daemon(&ns, &kubeconfig, &[]);
    while !rules(&ns, "nftables").await.contains("10.0.1.1") {
        assert!(
            started.elapsed() < FORBIDDEN + Duration::from_secs(15),
            "no first sync; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "first sync {:?} after start, with 403s for {FORBIDDEN:?}",
        started.elapsed()
    );
    let log = daemon.log();
    let forbidden: Vec<&str> = log.lines().filter(|l| l.contains("forbidden")).collect();
    assert!(
        forbidden.iter().any(|l| l.contains("DEBUG")),
        "the 403s were not logged at debug level:\n{log}"
    );
    assert!(
        forbidden.iter().all(|l| !l.contains("WARN")),
        "transient 403s logged as warnings:\n{}",
        forbidden.join("\n")
    );
    assert!(daemon.terminate(), "kproxy did not exit cleanly");
}
