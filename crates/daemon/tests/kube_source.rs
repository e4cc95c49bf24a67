//! `kproxy run --source kube` end to end: the real binary, in a network
//! namespace, against the API server emulator serving inside that
//! namespace; the kernel's rules must follow the API's EndpointSlices,
//! and survive the API server going away.
//!
//! Needs root (network namespaces, nft); fails, never skips, without it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kproxy_apiserver_emulator::{Emulator, reusable_listener};
use kproxy_testkit::NetNs;
use nix::sched::{CloneFlags, setns};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const NODE: &str = "test-node";

/// A binder that creates the emulator's listening socket inside `ns`.
fn bind_in(
    ns: &str,
) -> impl Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync + 'static {
    let path = format!("/var/run/netns/{ns}");
    move |addr| {
        let path = path.clone();
        // setns affects only the calling thread: a throwaway thread makes
        // the socket, which stays in the namespace it was made in.
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            setns(&file, CloneFlags::CLONE_NEWNET)?;
            reusable_listener(addr)
        })
        .join()
        .map_err(|_| std::io::Error::other("bind thread panicked"))?
    }
}

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

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The whole story on one backend.
async fn follows_the_api_and_survives_its_absence(backend: &str) {
    let ns = NetNs::new("kub");
    let dir = TempDir(
        std::env::temp_dir().join(format!("kproxy-kube-run-{backend}-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let kubeconfig = dir.0.join("kubeconfig");
    let log = dir.0.join("kproxy.log");

    let (mut emu, _) =
        Emulator::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), bind_in(ns.name()))
            .await
            .expect("emulator starts inside the namespace");
    emu.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    emu.apply(&node()).expect("node");
    emu.apply(&service()).expect("service");
    emu.apply(&slice(&["10.0.1.1"])).expect("slice");
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
    emu.fail_for(Duration::from_secs(4));
    emu.apply(&slice(&["10.0.1.6"])).expect("slice");
    let mut daemon = Daemon::start(&ns, backend, &kubeconfig, &log);
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.assert_running(&log);
    let waiting = rules(&ns, backend).await;
    assert!(
        waiting.contains("10.0.1.5") && !waiting.contains("10.0.1.6"),
        "{backend}: a daemon waiting for the API server changed the rules:\n{waiting}"
    );
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
    follows_the_api_and_survives_its_absence("nftables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_nft_follows_the_api_and_survives_its_absence() {
    follows_the_api_and_survives_its_absence("iptables-nft").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iptables_legacy_follows_the_api_and_survives_its_absence() {
    follows_the_api_and_survives_its_absence("iptables-legacy").await;
}
