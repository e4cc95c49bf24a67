//! The live layer: what happens to traffic that is flowing while the
//! daemon dies, restarts, changes backend, takes over from kube-proxy and
//! hands back, and while the API server is away.
//!
//! One [`Topology`] (a node, a local endpoint pod, a client pod, remote
//! endpoints, an external client) serves every event in turn. During each
//! event, client threads that joined the client pod's and the external
//! client's namespaces keep opening new TCP connections through a
//! ClusterIP and a NodePort, and hold long-lived TCP connections and UDP
//! flows that exchange a line every [`PING_EVERY`]. Every new connection
//! must be answered by one of its Service's endpoints; every long-lived
//! one must keep being answered by the endpoint it first reached. Each
//! failure is recorded with its time, the phase of the event it happened
//! in and the connection. [`run_live`] returns one [`EventReport`] per
//! event and backend; [`EventReport::ok`] is the verdict.
//!
//! The events ([`EventKind`]):
//! - `restarts`: `kproxy run --source FILE` SIGKILLed and restarted
//!   [`LiveConfig::restarts`] times, per backend;
//! - `switch`: stopped and restarted with another backend,
//!   iptables-legacy → iptables-nft → nftables → iptables-legacy;
//! - `takeover`: kube-proxy's rules (`kproxy render` for an iptables
//!   flavour, loaded with `iptables-restore` as kube-proxy does) with no
//!   proxy running, then kproxy starts and takes over (it removes
//!   kube-proxy's leftovers after its first sync), then hands back: kproxy
//!   stops, kube-proxy's rules are loaded again, `kproxy cleanup --backend
//!   nftables` removes kproxy's tables;
//! - `outage`: `kproxy run --source kube` against the API server emulator,
//!   which goes away for [`LiveConfig::outage`] while an endpoint is added,
//!   one removed and a Service created; every change must reach the kernel
//!   within the kube source's watch backoff cap and one sync of the
//!   server's return (the catch-up time is measured);
//! - `control`: the rules and conntrack flushed with no daemon for a
//!   second and a half: connections must fail there, which shows that the
//!   counting can see failures ([`EventReport::expect_failures`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::HarnessError;
use crate::runner::Daemon;
use crate::scenario::BackendName;
use crate::topo::{Topology, TopologySpec};
use crate::wire::{self, Attempt, Held, Proto, Target};

/// The node's name.
pub const NODE: &str = "live-node";
const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 2);
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The local endpoint of `web` (a pod on the node).
const WEB_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
/// The client pod (no endpoint).
const CLIENT_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const WEB_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const API_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 20);
/// Removed from `api` while the API server is away.
const API_GONE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 21);
/// Added to `api` while the API server is away.
const API_NEW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 22);
/// The endpoint of `fresh`, the Service created while the API server is away.
const FRESH_EP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 30);
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const API_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const FRESH_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const TARGET_PORT: u16 = 8080;
const NODE_PORT_TCP: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;

/// Pause between two new connections of one client loop.
pub const NEW_EVERY: Duration = Duration::from_millis(25);
/// Pause between two exchanges on a long-lived connection.
pub const PING_EVERY: Duration = Duration::from_millis(200);
/// A new connection (or one exchange) slower than this fails. A TCP SYN
/// lost once is retransmitted after 1 s: such a connection is counted as
/// slow, not failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Client loops stop by themselves after this long or this many
/// connections, whatever the harness does.
const LOOP_TIME_LIMIT: Duration = Duration::from_secs(300);
const LOOP_COUNT_LIMIT: u64 = 20_000;

/// One kind of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// SIGKILL and restart, per backend.
    Restarts,
    /// Restarts with another backend.
    Switch,
    /// kube-proxy's rules taken over and handed back, per backend.
    Takeover,
    /// The API server away and back (`--source kube`).
    Outage,
    /// Rules and conntrack flushed with no daemon: must fail.
    Control,
}

impl EventKind {
    /// Every event, in the order they run.
    pub const ALL: [EventKind; 5] = [
        EventKind::Control,
        EventKind::Restarts,
        EventKind::Switch,
        EventKind::Takeover,
        EventKind::Outage,
    ];

    /// `restarts`, `switch`, `takeover`, `outage`, `control`.
    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "restarts" => EventKind::Restarts,
            "switch" => EventKind::Switch,
            "takeover" => EventKind::Takeover,
            "outage" => EventKind::Outage,
            "control" => EventKind::Control,
            _ => return None,
        })
    }

    /// The events named by `filter` (comma-separated; empty = all).
    pub fn list(filter: &str) -> Result<Vec<EventKind>, HarnessError> {
        let mut v = Vec::new();
        for w in filter.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            v.push(EventKind::parse(w).ok_or_else(|| {
                HarnessError::Preflight(format!(
                    "unknown live event {w:?} (restarts, switch, takeover, outage, control)"
                ))
            })?);
        }
        Ok(if v.is_empty() {
            EventKind::ALL.to_vec()
        } else {
            EventKind::ALL
                .into_iter()
                .filter(|k| v.contains(k))
                .collect()
        })
    }
}

/// What a live run needs.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The `kproxy-proto` binary (echo servers, sysctls).
    pub proto_bin: PathBuf,
    /// The `kproxy` binary.
    pub kproxy: PathBuf,
    /// Backends for the per-backend events and the switch sequence.
    pub backends: Vec<BackendName>,
    /// Which events.
    pub events: Vec<EventKind>,
    /// SIGKILL/restart cycles per backend.
    pub restarts: usize,
    /// How long the API server is away.
    pub outage: Duration,
    /// Backends the outage runs on.
    pub outage_backends: Vec<BackendName>,
    /// The `--sync-period` of the outage's daemon: every change made during
    /// the outage must be in the kernel within this long of the server's
    /// return.
    pub sync_period: Duration,
}

/// One event on one backend (or backend sequence): the counts, the
/// failures, the other checks.
#[derive(Debug, Clone, Default)]
pub struct EventReport {
    /// The event.
    pub event: String,
    /// The backend, or the sequence of backends.
    pub backend: String,
    /// New connections attempted (long-lived ones included, when opened).
    pub attempted: u64,
    /// New connections that failed (refused, timed out, answered by the
    /// wrong server).
    pub failed: u64,
    /// New connections that took at least a second (a SYN retransmitted).
    pub slow: u64,
    /// Long-lived connections (TCP and UDP) held through the event.
    pub held: u64,
    /// Exchanges on them.
    pub exchanges: u64,
    /// Long-lived connections that broke (no answer, reset, or answered by
    /// another endpoint).
    pub broken: u64,
    /// Each failure: when, in which phase, which connection, what.
    pub failures: Vec<String>,
    /// Other checks (leftovers removed, changes caught up).
    pub checks: Vec<Check>,
    /// Outage: from the server's return to every change in the kernel.
    pub catch_up: Option<Duration>,
    /// Outage: syncs the daemon logged from the return to the catch-up.
    pub catch_up_syncs: Option<usize>,
    /// From each daemon start in the event to its first sync (the rules
    /// already in the kernel serve meanwhile).
    pub first_syncs: Vec<Duration>,
    /// Wall time.
    pub elapsed: Duration,
    /// The control event: it passes only when connections failed and
    /// long-lived ones broke.
    pub expect_failures: bool,
    /// The event could not run to its end (setup, a daemon that did not
    /// sync, ...).
    pub error: Option<String>,
    /// Not run, and why: the backends selected leave nothing to do (a
    /// switch with one backend). Reported, never counted as a pass of the
    /// traffic checks.
    pub not_run: Option<String>,
    /// The daemon's last log lines, when the event failed.
    pub daemon_log: Option<String>,
}

/// One check besides the traffic counts.
#[derive(Debug, Clone)]
pub struct Check {
    /// What must hold.
    pub what: String,
    /// Whether it held; why not.
    pub result: Result<(), String>,
    /// Marked as failing today (reason): its result is reported (`KNOWN`,
    /// or `XPASS` when it held) but does not decide the event.
    pub known_failure: Option<String>,
}

impl Check {
    /// Whether this check lets its event pass.
    pub fn ok(&self) -> bool {
        self.known_failure.is_some() || self.result.is_ok()
    }
}

/// A reason that marks the catch-up check of the outage event as a known
/// failure (reported, not failing the run), or `None`: the check counts.
/// The kube source's watch backoff is capped (see [`WATCH_BACKOFF_CAP`]), so
/// the catch-up is bounded and the check counts.
pub const CATCH_UP_KNOWN_FAILURE: Option<&str> = None;

/// The kube source's longest delay between watch retries
/// (crates/daemon/src/source/kube/backoff.rs). After the API server returns,
/// every watcher retries within this long; the changes made during the
/// outage must then be in the kernel within one more sync.
pub const WATCH_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Slack for that one sync: the relist, `--min-sync-period` (1 s by
/// default) and the sync itself, on a loaded 2-core machine.
const ONE_SYNC: Duration = Duration::from_secs(5);

impl EventReport {
    /// Whether the event went as it must.
    pub fn ok(&self) -> bool {
        if self.not_run.is_some() && self.error.is_none() {
            return true;
        }
        if self.error.is_some() || self.attempted == 0 || self.held == 0 {
            return false;
        }
        if self.expect_failures {
            return self.failed > 0 && self.broken > 0;
        }
        self.failed == 0 && self.broken == 0 && self.checks.iter().all(Check::ok)
    }

    /// A human-readable report: the counts, then the failures (at most
    /// 40 lines of them) and every check.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(why) = &self.not_run {
            let _ = writeln!(
                s,
                "== live: {} on {}: NOT RUN: {why}",
                self.event, self.backend
            );
            return s;
        }
        let _ = writeln!(
            s,
            "== live: {} on {}: {}: {} new connections, {} failed, {} slow (>= 1 s); {} long-lived ({} exchanges), {} broken{} ({:.1}s)",
            self.event,
            self.backend,
            match (self.ok(), self.expect_failures) {
                (true, false)
                    if self
                        .checks
                        .iter()
                        .any(|c| c.known_failure.is_some() && c.result.is_err()) =>
                {
                    "ok (KNOWN FAILURES)"
                }
                (true, false) if self.checks.iter().any(|c| c.known_failure.is_some()) => {
                    "ok (XPASS: a check marked as a known failure passed)"
                }
                (true, false) => "ok",
                (true, true) => "ok (failures seen, as they must be)",
                (false, true) => "FAIL (the control saw no failure: the counting is blind)",
                (false, false) => "FAIL",
            },
            self.attempted,
            self.failed,
            self.slow,
            self.held,
            self.exchanges,
            self.broken,
            match (self.catch_up, self.catch_up_syncs) {
                (Some(c), Some(n)) => format!(
                    "; catch-up {:.2}s after the API server's return, {n} sync(s)",
                    c.as_secs_f64()
                ),
                (Some(c), None) => format!("; catch-up {:.2}s", c.as_secs_f64()),
                _ => String::new(),
            },
            self.elapsed.as_secs_f64()
        );
        if let Some(e) = &self.error {
            let _ = writeln!(s, "   ERROR: {e}");
        }
        if !self.first_syncs.is_empty() {
            let mut v: Vec<u128> = self.first_syncs.iter().map(Duration::as_millis).collect();
            v.sort_unstable();
            let _ = writeln!(
                s,
                "   daemon start to first sync: median {} ms (min {}, max {}) over {} starts",
                v[v.len() / 2],
                v[0],
                v[v.len() - 1],
                v.len()
            );
        }
        for c in &self.checks {
            let _ = match (&c.result, &c.known_failure) {
                (Ok(()), None) => writeln!(s, "   [pass] {}", c.what),
                (Err(w), None) => writeln!(s, "   [FAIL] {}: {w}", c.what),
                (Err(w), Some(k)) => {
                    writeln!(s, "   [KNOWN] {}: {w}\n        known failure: {k}", c.what)
                }
                (Ok(()), Some(k)) => writeln!(
                    s,
                    "   [XPASS] {}\n        passed although marked known failure ({k}); once it passes every time, remove the mark (live::CATCH_UP_KNOWN_FAILURE)",
                    c.what
                ),
            };
        }
        // Every failure of a failed event (up to 40); a few of the
        // control's, which must have them.
        let max = if self.ok() { 6 } else { 40 };
        for f in self.failures.iter().take(max) {
            let _ = writeln!(s, "   {f}");
        }
        if self.failures.len() > max {
            let _ = writeln!(s, "   ... {} more", self.failures.len() - max);
        }
        if let Some(l) = &self.daemon_log
            && !self.ok()
        {
            let _ = writeln!(s, "   daemon log (last lines):");
            for line in l.lines() {
                let _ = writeln!(s, "     {line}");
            }
        }
        s
    }
}

// ---------------------------------------------------------------------
// The cluster

fn node_object() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
           "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
           "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP.to_string()}]}})
}

fn service(name: &str, vip: Ipv4Addr, node_ports: bool) -> Value {
    let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP",
                                "targetPort": TARGET_PORT})];
    if node_ports {
        ports = vec![
            json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": TARGET_PORT,
                   "nodePort": NODE_PORT_TCP}),
            json!({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": TARGET_PORT,
                   "nodePort": NODE_PORT_UDP}),
        ];
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "live"},
           "spec": {"type": if node_ports { "NodePort" } else { "ClusterIP" },
                    "clusterIP": vip.to_string(), "clusterIPs": [vip.to_string()],
                    "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                    "externalTrafficPolicy": "Cluster",
                    "ports": ports}})
}

fn slice(service: &str, eps: &[(Ipv4Addr, &str)], udp: bool) -> Value {
    let mut ports = vec![json!({"name": "http", "port": TARGET_PORT, "protocol": "TCP"})];
    if udp {
        ports.push(json!({"name": "dns", "port": TARGET_PORT, "protocol": "UDP"}));
    }
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-live"), "namespace": "live",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "endpoints": eps.iter().map(|(ip, node)| json!({
               "addresses": [ip.to_string()],
               "conditions": {"ready": true, "serving": true, "terminating": false},
               "nodeName": node})).collect::<Vec<_>>(),
           "ports": ports})
}

/// The objects before the outage's changes.
fn objects_before() -> Vec<Value> {
    vec![
        node_object(),
        service("web", WEB_VIP, true),
        slice(
            "web",
            &[(WEB_LOCAL, NODE), (WEB_REMOTE, "other-node")],
            true,
        ),
        service("api", API_VIP, false),
        slice(
            "api",
            &[(API_A, "other-node"), (API_GONE, "other-node")],
            false,
        ),
    ]
}

/// The changes made while the API server is away: an endpoint of `api`
/// removed, one added, a new Service `fresh` with its endpoint.
fn outage_changes() -> Vec<Value> {
    vec![
        slice(
            "api",
            &[(API_A, "other-node"), (API_NEW, "other-node")],
            false,
        ),
        service("fresh", FRESH_VIP, false),
        slice("fresh", &[(FRESH_EP, "other-node")], false),
    ]
}

/// Whether the kernel's rules hold every outage change (and no longer
/// the removed endpoint).
fn has_outage_changes(rules: &str) -> bool {
    let has = |ip: Ipv4Addr| rules.contains(&ip.to_string());
    has(API_NEW) && !has(API_GONE) && has(FRESH_VIP) && has(FRESH_EP)
}

fn topology_spec() -> TopologySpec {
    let both = vec![(TARGET_PORT, Proto::Tcp), (TARGET_PORT, Proto::Udp)];
    TopologySpec {
        node_ips: vec![IpAddr::V4(NODE_IP)],
        local_pods: vec![
            (IpAddr::V4(WEB_LOCAL), both.clone()),
            (IpAddr::V4(CLIENT_POD), Vec::new()),
        ],
        remote: [WEB_REMOTE, API_A, API_GONE, API_NEW, FRESH_EP]
            .into_iter()
            .map(|ip| (IpAddr::V4(ip), both.clone()))
            .collect(),
        external: vec![IpAddr::V4(EXTERNAL)],
        ..TopologySpec::default()
    }
}

fn target(ip: Ipv4Addr, port: u16, proto: Proto) -> Target {
    Target {
        addr: SocketAddr::new(IpAddr::V4(ip), port),
        proto,
    }
}

/// One client connection loop.
#[derive(Debug, Clone)]
pub struct Flow {
    /// `pod 10.244.0.20 -> ClusterIP 10.96.0.10:80/tcp`.
    pub name: String,
    /// The namespace the client runs in.
    pub ns: String,
    /// Its source address.
    pub bind: IpAddr,
    /// Where it connects.
    pub to: Target,
    /// The endpoints that may answer.
    pub endpoints: BTreeSet<IpAddr>,
}

struct Flows {
    new: Vec<Flow>,
    held: Vec<Flow>,
}

fn flows(topo: &Topology) -> Flows {
    let pod = topo.pods[1].1.name().to_string();
    let ext = topo.ext.name().to_string();
    let web: BTreeSet<IpAddr> = [WEB_LOCAL, WEB_REMOTE]
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    let api: BTreeSet<IpAddr> = [API_A, API_GONE, API_NEW]
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    let flow =
        |who: &str, ns: &str, bind: Ipv4Addr, kind: &str, to: Target, eps: &BTreeSet<IpAddr>| {
            Flow {
                name: format!("{who} {bind} -> {kind} {to}"),
                ns: ns.to_string(),
                bind: IpAddr::V4(bind),
                to,
                endpoints: eps.clone(),
            }
        };
    let cip_tcp = target(WEB_VIP, 80, Proto::Tcp);
    let cip_udp = target(WEB_VIP, 53, Proto::Udp);
    let np_tcp = target(NODE_IP, NODE_PORT_TCP, Proto::Tcp);
    let np_udp = target(NODE_IP, NODE_PORT_UDP, Proto::Udp);
    Flows {
        new: vec![
            flow("pod", &pod, CLIENT_POD, "ClusterIP", cip_tcp, &web),
            flow("pod", &pod, CLIENT_POD, "NodePort", np_tcp, &web),
            flow("external", &ext, EXTERNAL, "NodePort", np_tcp, &web),
            flow(
                "pod",
                &pod,
                CLIENT_POD,
                "ClusterIP",
                target(API_VIP, 80, Proto::Tcp),
                &api,
            ),
        ],
        held: vec![
            flow("pod", &pod, CLIENT_POD, "ClusterIP", cip_tcp, &web),
            flow("pod", &pod, CLIENT_POD, "ClusterIP", cip_udp, &web),
            flow("pod", &pod, CLIENT_POD, "NodePort", np_tcp, &web),
            flow("external", &ext, EXTERNAL, "NodePort", np_tcp, &web),
            flow("external", &ext, EXTERNAL, "NodePort", np_udp, &web),
        ],
    }
}

// ---------------------------------------------------------------------
// Traffic

#[derive(Debug, Default)]
struct Tally {
    attempted: u64,
    failed: u64,
    slow: u64,
    held: u64,
    exchanges: u64,
    broken: u64,
    failures: Vec<String>,
}

/// Client loops running in their namespaces until [`Traffic::finish`] (or
/// their own time and count limits).
struct Traffic {
    stop: Arc<AtomicBool>,
    phase: Arc<Mutex<String>>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

/// Join network namespace `ns` (this thread only).
fn enter_ns(ns: &str) -> Result<(), String> {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {path}: {e}"))
}

/// `Ok(endpoint)` when an expected endpoint answered; else what happened.
fn answered_by(a: &Attempt, eps: &BTreeSet<IpAddr>) -> Result<SocketAddr, String> {
    match a {
        Attempt::Answer { reached, .. }
            if eps.contains(&reached.ip()) && reached.port() == TARGET_PORT =>
        {
            Ok(*reached)
        }
        Attempt::Answer { label, reached, .. } => Err(format!(
            "answered by {label} at {reached}, which is no endpoint of this Service"
        )),
        other => Err(crate::runner::summarize(std::slice::from_ref(other))),
    }
}

impl Traffic {
    fn start(flows: &Flows, phase: &str) -> Traffic {
        let t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            phase: Arc::new(Mutex::new(phase.to_string())),
            tally: Arc::new(Mutex::new(Tally::default())),
            threads: Vec::new(),
        };
        let start = Instant::now();
        let mut threads = Vec::new();
        for f in &flows.new {
            let (f, stop, phase, tally) =
                (f.clone(), t.stop.clone(), t.phase.clone(), t.tally.clone());
            threads.push(std::thread::spawn(move || {
                new_loop(&f, start, &stop, &phase, &tally);
            }));
        }
        for f in &flows.held {
            let (f, stop, phase, tally) =
                (f.clone(), t.stop.clone(), t.phase.clone(), t.tally.clone());
            threads.push(std::thread::spawn(move || {
                held_loop(&f, start, &stop, &phase, &tally);
            }));
        }
        Traffic { threads, ..t }
    }

    fn phase(&self, p: &str) {
        if let Ok(mut g) = self.phase.lock() {
            *g = p.to_string();
        }
    }

    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.tally)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .unwrap_or_default()
    }
}

fn phase_now(phase: &Mutex<String>) -> String {
    phase.lock().map(|p| p.clone()).unwrap_or_default()
}

/// `during "A"`, or `during "A" .. "B"` when the phase changed meanwhile.
fn during(from: &str, to: &str) -> String {
    if from == to {
        format!("during \"{from}\"")
    } else {
        format!("during \"{from}\" .. \"{to}\"")
    }
}

fn record(tally: &Mutex<Tally>, f: impl FnOnce(&mut Tally)) {
    if let Ok(mut t) = tally.lock() {
        f(&mut t);
    }
}

fn new_loop(
    f: &Flow,
    start: Instant,
    stop: &AtomicBool,
    phase: &Mutex<String>,
    tally: &Mutex<Tally>,
) {
    if let Err(e) = enter_ns(&f.ns) {
        record(tally, |t| {
            t.attempted += 1;
            t.failed += 1;
            t.failures.push(format!("new {}: {e}", f.name));
        });
        return;
    }
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && n < LOOP_COUNT_LIMIT && start.elapsed() < LOOP_TIME_LIMIT
    {
        let p0 = phase_now(phase);
        let t0 = Instant::now();
        let a = wire::probe(&f.to, Some(f.bind), 0, ATTEMPT_TIMEOUT);
        let took = t0.elapsed();
        let verdict = answered_by(&a, &f.endpoints);
        let p1 = phase_now(phase);
        record(tally, |t| {
            t.attempted += 1;
            if took >= Duration::from_secs(1) {
                t.slow += 1;
            }
            if let Err(w) = verdict {
                t.failed += 1;
                t.failures.push(format!(
                    "+{:.3}s {}: new connection {} failed after {} ms: {w}",
                    t0.duration_since(start).as_secs_f64(),
                    during(&p0, &p1),
                    f.name,
                    took.as_millis()
                ));
            }
        });
        n += 1;
        std::thread::sleep(NEW_EVERY);
    }
}

fn held_loop(
    f: &Flow,
    start: Instant,
    stop: &AtomicBool,
    phase: &Mutex<String>,
    tally: &Mutex<Tally>,
) {
    let kind = if f.to.proto == Proto::Udp {
        "long-lived UDP flow"
    } else {
        "long-lived TCP connection"
    };
    if let Err(e) = enter_ns(&f.ns) {
        record(tally, |t| {
            t.attempted += 1;
            t.failed += 1;
            t.failures.push(format!("{kind} {}: {e}", f.name));
        });
        return;
    }
    let p0 = phase_now(phase);
    let t0 = Instant::now();
    let opened = Held::open(&f.to, Some(f.bind), ATTEMPT_TIMEOUT)
        .map_err(|a| crate::runner::summarize(&[a]))
        .and_then(|h| answered_by(&h.first, &f.endpoints).map(|ep| (h, ep)));
    let (mut h, first) = match opened {
        Ok(x) => x,
        Err(w) => {
            let p1 = phase_now(phase);
            record(tally, |t| {
                t.attempted += 1;
                t.failed += 1;
                t.failures.push(format!(
                    "+{:.3}s {}: {kind} {} could not be opened: {w}",
                    t0.duration_since(start).as_secs_f64(),
                    during(&p0, &p1),
                    f.name
                ));
            });
            return;
        }
    };
    record(tally, |t| {
        t.attempted += 1;
        t.held += 1;
    });
    let mut exchanges = 0u64;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < LOOP_TIME_LIMIT {
        std::thread::sleep(PING_EVERY);
        let p0 = phase_now(phase);
        let t0 = Instant::now();
        let a = h.ping();
        let verdict = match answered_by(&a, &f.endpoints) {
            Ok(ep) if ep == first => Ok(()),
            Ok(ep) => Err(format!("answered by {ep}, but it was {first}")),
            Err(w) => Err(w),
        };
        match verdict {
            Ok(()) => {
                exchanges += 1;
                record(tally, |t| t.exchanges += 1);
            }
            Err(w) => {
                let p1 = phase_now(phase);
                record(tally, |t| {
                    t.broken += 1;
                    t.failures.push(format!(
                        "+{:.3}s {}: {kind} {} (endpoint {first}) broke after {exchanges} exchanges: {w}",
                        t0.duration_since(start).as_secs_f64(),
                        during(&p0, &p1),
                        f.name
                    ));
                });
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------
// The node

struct Ctx<'a> {
    cfg: &'a LiveConfig,
    topo: &'a Topology,
    /// The `--source` directory of the file-source daemons.
    source: PathBuf,
    flows: Flows,
    /// From each daemon start to its first sync (the event's report takes them).
    first_syncs: Mutex<Vec<Duration>>,
}

/// Where a daemon reads its objects.
enum Source<'a> {
    File,
    Kube(&'a Path),
}

impl Ctx<'_> {
    fn start_daemon(&self, backend: BackendName, source: &Source<'_>) -> Result<Daemon, String> {
        let mut c = self.topo.node.command(&self.cfg.kproxy);
        c.env("NO_COLOR", "1")
            .env("XTABLES_LOCKFILE", self.topo.xtables_lock())
            .args(["run", "--backend", backend.as_str()])
            .args(["--node-name", NODE, "--cluster-cidr", CLUSTER_CIDR]);
        match source {
            Source::File => {
                c.arg("--source").arg(&self.source);
            }
            Source::Kube(kubeconfig) => {
                c.args(["--source", "kube", "--kubeconfig"])
                    .arg(kubeconfig)
                    .arg("--sync-period")
                    .arg(format!("{}s", self.cfg.sync_period.as_secs()));
            }
        }
        let started = Instant::now();
        let mut d = Daemon::spawn(c)?;
        d.wait_beyond(0, Duration::from_secs(60))
            .map_err(|e| format!("kproxy run --backend {backend}: {e}"))?;
        if let Ok(mut v) = self.first_syncs.lock() {
            v.push(started.elapsed());
        }
        Ok(d)
    }

    /// `kproxy ARGS` in the node namespace, to completion.
    fn kproxy(&self, args: &[&str]) -> Result<String, String> {
        let lock = format!("XTABLES_LOCKFILE={}", self.topo.xtables_lock().display());
        let bin = self.cfg.kproxy.to_string_lossy();
        let mut argv = vec!["env", lock.as_str(), "NO_COLOR=1", bin.as_ref()];
        argv.extend_from_slice(args);
        self.topo.node.exec(&argv).map_err(|e| e.to_string())
    }

    /// Remove every mode's rules: each event starts from an empty node.
    fn clean(&self) -> Result<(), String> {
        self.kproxy(&["cleanup", "--backend", "all"]).map(|_| ())
    }

    /// Whether the node holds a backend's Service rules: `table ip
    /// kproxy`, or a `KUBE-SERVICES` chain in the flavour's nat table.
    fn has_rules(&self, backend: BackendName) -> bool {
        let lock = format!("XTABLES_LOCKFILE={}", self.topo.xtables_lock().display());
        match backend {
            BackendName::Nftables => self
                .topo
                .node
                .exec(&["nft", "list", "table", "ip", "kproxy"])
                .is_ok(),
            b => {
                let tool = format!(
                    "iptables-{}-save",
                    if b == BackendName::IptablesLegacy {
                        "legacy"
                    } else {
                        "nft"
                    }
                );
                self.topo
                    .node
                    .exec(&["env", &lock, &tool, "-t", "nat"])
                    .is_ok_and(|out| out.contains(":KUBE-SERVICES"))
            }
        }
    }

    /// Poll until `f` holds (every 100 ms, up to `limit`); the time it took.
    fn wait_until(&self, limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
        let start = Instant::now();
        loop {
            if f() {
                return Some(start.elapsed());
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// kube-proxy's rules in `flavour`, as it loads them: `kproxy render`
    /// (kube-proxy's layout) into `iptables-restore --noflush`.
    fn load_kube_proxy_rules(&self, flavour: BackendName) -> Result<(), String> {
        let objects = self.source.join("objects.yaml");
        let out = std::process::Command::new(&self.cfg.kproxy)
            .env("NO_COLOR", "1")
            .args(["render", "--backend", flavour.as_str(), "--node-name", NODE])
            .args(["--cluster-cidr", CLUSTER_CIDR])
            .arg(&objects)
            .output()
            .map_err(|e| format!("kproxy render: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "kproxy render --backend {flavour}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        crate::runner::load_rendered(
            self.topo,
            flavour,
            &String::from_utf8_lossy(&out.stdout),
            &self.cfg.proto_bin,
        )
    }
}

/// Run `body` with traffic flowing; fill the report with its counts.
fn with_traffic(
    ctx: &Ctx<'_>,
    rep: &mut EventReport,
    first_phase: &str,
    body: impl FnOnce(&Traffic, &mut EventReport) -> Result<(), String>,
) {
    let traffic = Traffic::start(&ctx.flows, first_phase);
    let r = body(&traffic, rep);
    let tally = traffic.finish();
    if let Err(e) = r {
        rep.error = Some(e);
    }
    rep.attempted = tally.attempted;
    rep.failed = tally.failed;
    rep.slow = tally.slow;
    rep.held = tally.held;
    rep.exchanges = tally.exchanges;
    rep.broken = tally.broken;
    rep.failures = tally.failures;
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// SIGTERM, then wait (SIGKILL after 10 s).
fn terminate(d: &mut Daemon) {
    if let Ok(pid) = i32::try_from(d.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    let start = Instant::now();
    while d.running() && start.elapsed() < Duration::from_secs(10) {
        sleep_ms(20);
    }
    d.kill();
}

fn check(rep: &mut EventReport, what: impl Into<String>, ok: bool, why: impl FnOnce() -> String) {
    rep.checks.push(Check {
        what: what.into(),
        result: if ok { Ok(()) } else { Err(why()) },
        known_failure: None,
    });
}

/// SIGKILL and restart, `cfg.restarts` times.
fn restarts(ctx: &Ctx<'_>, b: BackendName) -> EventReport {
    let n = ctx.cfg.restarts;
    let mut rep = EventReport {
        event: format!("{n} x SIGKILL and restart"),
        backend: b.to_string(),
        ..EventReport::default()
    };
    if let Err(e) = ctx.clean() {
        rep.error = Some(e);
        return rep;
    }
    let mut daemon = match ctx.start_daemon(b, &Source::File) {
        Ok(d) => d,
        Err(e) => {
            rep.error = Some(e);
            return rep;
        }
    };
    let mut last_log = String::new();
    with_traffic(ctx, &mut rep, "running", |t, _| {
        sleep_ms(600);
        for i in 1..=n {
            t.phase(&format!("SIGKILLed {i}/{n}, no daemon"));
            daemon.kill();
            sleep_ms(300);
            t.phase(&format!("restart {i}/{n}, before its first sync"));
            last_log = daemon.tail();
            daemon = ctx.start_daemon(b, &Source::File)?;
            t.phase(&format!("running after restart {i}/{n}"));
            sleep_ms(500);
        }
        Ok(())
    });
    rep.daemon_log = Some(format!(
        "{last_log}\n--- the last daemon:\n{}",
        daemon.tail()
    ));
    terminate(&mut daemon);
    rep
}

/// iptables-legacy → iptables-nft → nftables → iptables-legacy (the
/// selected backends, in that order).
fn switch(ctx: &Ctx<'_>) -> EventReport {
    let order = [
        BackendName::IptablesLegacy,
        BackendName::IptablesNft,
        BackendName::Nftables,
    ];
    let mut seq: Vec<BackendName> = order
        .into_iter()
        .filter(|b| ctx.cfg.backends.contains(b))
        .collect();
    let mut rep = EventReport {
        event: "backend switches".into(),
        ..EventReport::default()
    };
    if seq.len() < 2 {
        rep.backend = seq.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(",");
        rep.not_run = Some("a backend switch needs at least two backends (PROTO_BACKENDS)".into());
        return rep;
    }
    seq.push(seq[0]);
    rep.backend = seq
        .iter()
        .map(|b| b.as_str())
        .collect::<Vec<_>>()
        .join(" -> ");
    if let Err(e) = ctx.clean() {
        rep.error = Some(e);
        return rep;
    }
    let mut daemon = match ctx.start_daemon(seq[0], &Source::File) {
        Ok(d) => d,
        Err(e) => {
            rep.error = Some(e);
            return rep;
        }
    };
    with_traffic(ctx, &mut rep, &format!("{} running", seq[0]), |t, rep| {
        sleep_ms(600);
        for w in seq.windows(2) {
            let (from, to) = (w[0], w[1]);
            t.phase(&format!("{from} stopped (SIGTERM), its rules stay"));
            terminate(&mut daemon);
            sleep_ms(300);
            t.phase(&format!("{to} starting over {from}'s rules"));
            daemon = ctx.start_daemon(to, &Source::File)?;
            t.phase(&format!("{to} running"));
            let gone = ctx.wait_until(Duration::from_secs(10), || !ctx.has_rules(from));
            check(
                rep,
                format!("{from}'s rules removed after {to}'s first sync"),
                gone.is_some(),
                || "still there 10 s after the sync".into(),
            );
            sleep_ms(500);
        }
        Ok(())
    });
    rep.daemon_log = Some(daemon.tail());
    terminate(&mut daemon);
    rep
}

/// kube-proxy's rules → kproxy `k` takes over → hands back.
fn takeover(ctx: &Ctx<'_>, k: BackendName) -> EventReport {
    // kube-proxy in iptables mode on the same flavour as an iptables
    // backend (kproxy adopts its chains), and on iptables-nft before
    // nftables (kproxy removes them).
    let flavour = if k == BackendName::IptablesLegacy {
        BackendName::IptablesLegacy
    } else {
        BackendName::IptablesNft
    };
    let mut rep = EventReport {
        event: format!("kube-proxy ({flavour}) taken over and handed back"),
        backend: k.to_string(),
        ..EventReport::default()
    };
    let setup = ctx
        .clean()
        .and_then(|()| ctx.load_kube_proxy_rules(flavour));
    if let Err(e) = setup {
        rep.error = Some(e);
        return rep;
    }
    check(
        &mut rep,
        format!("kube-proxy's {flavour} rules loaded"),
        ctx.has_rules(flavour),
        || "no KUBE-SERVICES chain".into(),
    );
    let mut log = String::new();
    with_traffic(
        ctx,
        &mut rep,
        "kube-proxy's rules, no proxy running",
        |t, rep| {
            sleep_ms(800);
            t.phase(&format!("kproxy {k} starting over kube-proxy's rules"));
            let mut daemon = ctx.start_daemon(k, &Source::File)?;
            t.phase(&format!("kproxy {k} running"));
            if k != flavour {
                let gone = ctx.wait_until(Duration::from_secs(10), || !ctx.has_rules(flavour));
                check(
                    rep,
                    format!("kube-proxy's {flavour} rules removed after kproxy's first sync"),
                    gone.is_some(),
                    || "still there 10 s after the sync".into(),
                );
            }
            check(
                rep,
                format!("kproxy's {k} rules in place"),
                ctx.has_rules(k),
                || "missing".into(),
            );
            sleep_ms(600);
            t.phase(&format!("kproxy {k} stopped (SIGTERM), its rules stay"));
            terminate(&mut daemon);
            log = daemon.tail();
            sleep_ms(300);
            t.phase("kube-proxy's rules loaded again");
            ctx.load_kube_proxy_rules(flavour)?;
            sleep_ms(500);
            t.phase("after `kproxy cleanup --backend nftables`");
            ctx.kproxy(&["cleanup", "--backend", "nftables"])?;
            check(
                rep,
                "kproxy's nftables tables removed, kube-proxy's rules in place",
                !ctx.has_rules(BackendName::Nftables) && ctx.has_rules(flavour),
                || {
                    format!(
                        "table ip kproxy present: {}, kube-proxy's {flavour} rules present: {}",
                        ctx.has_rules(BackendName::Nftables),
                        ctx.has_rules(flavour)
                    )
                },
            );
            sleep_ms(600);
            Ok(())
        },
    );
    rep.daemon_log = Some(log);
    rep
}

/// Rules and conntrack flushed with no daemon for 1.5 s: connections must
/// fail, long-lived ones must break.
fn control(ctx: &Ctx<'_>, b: BackendName) -> EventReport {
    let mut rep = EventReport {
        event: "control: rules and conntrack flushed, no daemon for 1.5 s".into(),
        backend: b.to_string(),
        expect_failures: true,
        ..EventReport::default()
    };
    if let Err(e) = ctx.clean() {
        rep.error = Some(e);
        return rep;
    }
    let mut daemon = match ctx.start_daemon(b, &Source::File) {
        Ok(d) => d,
        Err(e) => {
            rep.error = Some(e);
            return rep;
        }
    };
    with_traffic(ctx, &mut rep, "running", |t, _| {
        sleep_ms(600);
        t.phase("rules and conntrack flushed, no daemon");
        daemon.kill();
        ctx.clean()?;
        ctx.topo
            .node
            .exec(&["conntrack", "-F"])
            .map_err(|e| e.to_string())?;
        sleep_ms(1500);
        t.phase("restarted");
        daemon = ctx.start_daemon(b, &Source::File)?;
        sleep_ms(600);
        Ok(())
    });
    rep.daemon_log = Some(daemon.tail());
    terminate(&mut daemon);
    rep
}

/// A binder for the emulator: its socket is made inside namespace `ns`.
fn bind_in(
    ns: &str,
) -> impl Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync + 'static {
    let ns = ns.to_string();
    move |addr| {
        let ns = ns.clone();
        std::thread::spawn(move || {
            enter_ns(&ns).map_err(std::io::Error::other)?;
            kproxy_apiserver_emulator::reusable_listener(addr)
        })
        .join()
        .map_err(|_| std::io::Error::other("bind thread panicked"))?
    }
}

/// Mark the last check (the catch-up) with [`CATCH_UP_KNOWN_FAILURE`].
fn mark_known(rep: &mut EventReport) {
    if let Some(c) = rep.checks.last_mut() {
        c.known_failure = CATCH_UP_KNOWN_FAILURE.map(String::from);
    }
}

/// The API server away for `cfg.outage` while objects change.
fn outage(ctx: &Ctx<'_>, b: BackendName) -> EventReport {
    let mut rep = EventReport {
        event: format!("API server away for {} s", ctx.cfg.outage.as_secs()),
        backend: b.to_string(),
        ..EventReport::default()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            rep.error = Some(format!("tokio runtime: {e}"));
            return rep;
        }
    };
    let kubeconfig = ctx.topo.dir.join("kubeconfig");
    let started = ctx.clean().and_then(|()| {
        let (emu, _) = rt
            .block_on(kproxy_apiserver_emulator::Emulator::start_with(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                bind_in(ctx.topo.node.name()),
            ))
            .map_err(|e| format!("API server emulator: {e}"))?;
        emu.write_kubeconfig(&kubeconfig)
            .map_err(|e| e.to_string())?;
        for o in objects_before() {
            emu.apply(&o).map_err(|e| e.to_string())?;
        }
        let d = ctx.start_daemon(b, &Source::Kube(&kubeconfig))?;
        Ok((emu, d))
    });
    let (mut emu, mut daemon) = match started {
        Ok(x) => x,
        Err(e) => {
            rep.error = Some(e);
            return rep;
        }
    };
    let lock = ctx.topo.xtables_lock();
    let rules = || {
        crate::differential::dump_ruleset(&ctx.topo.node, b, &lock)
            .unwrap_or_else(|e| format!("(cannot dump the ruleset: {e})"))
    };
    let sync_period = ctx.cfg.sync_period;
    let outage_len = ctx.cfg.outage;
    with_traffic(ctx, &mut rep, "API server up", |t, rep| {
        sleep_ms(1000);
        t.phase("API server away");
        let gone_at = Instant::now();
        rt.block_on(emu.stop());
        sleep_ms(2000);
        for o in outage_changes() {
            emu.apply(&o).map_err(|e| e.to_string())?;
        }
        let left = outage_len.saturating_sub(gone_at.elapsed());
        std::thread::sleep(left.saturating_sub(Duration::from_secs(1)));
        let during = rules();
        check(
            rep,
            "the rules stay as they were while the API server is away",
            during.contains(&API_GONE.to_string()) && !has_outage_changes(&during),
            || format!("the kernel holds:\n{during}"),
        );
        std::thread::sleep(outage_len.saturating_sub(gone_at.elapsed()));
        t.phase("API server back, catching up");
        let syncs_before = daemon.syncs();
        rt.block_on(emu.restart())
            .map_err(|e| format!("emulator restart: {e}"))?;
        let back = Instant::now();
        let limit = sync_period * 4 + Duration::from_secs(30);
        let caught = ctx.wait_until(limit, || has_outage_changes(&rules()));
        match caught {
            Some(_) => {
                let took = back.elapsed();
                rep.catch_up = Some(took);
                rep.catch_up_syncs = Some(daemon.syncs().saturating_sub(syncs_before));
                check(
                    rep,
                    format!(
                        "every change made during the outage in the kernel within the watch backoff cap ({} s) and one sync ({} s) of the server's return",
                        WATCH_BACKOFF_CAP.as_secs(),
                        ONE_SYNC.as_secs()
                    ),
                    took <= WATCH_BACKOFF_CAP + ONE_SYNC,
                    || format!("it took {:.1} s", took.as_secs_f64()),
                );
            }
            None => check(
                rep,
                "every change made during the outage reaches the kernel",
                false,
                || {
                    format!(
                        "not within {} s; the kernel holds:\n{}",
                        limit.as_secs(),
                        rules()
                    )
                },
            ),
        }
        // The mark covers the one-sync-period target only: changes that
        // never arrive fail the event.
        if caught.is_some() {
            mark_known(rep);
        }
        t.phase("API server back, caught up");
        sleep_ms(1000);
        Ok(())
    });
    // After the catch-up: the new Service answers, the removed endpoint
    // no longer gets new connections.
    if rep.catch_up.is_some() {
        let pod = ctx.topo.pods[1].1.name().to_string();
        let after = Flows {
            new: vec![
                Flow {
                    name: format!("pod {CLIENT_POD} -> new ClusterIP {FRESH_VIP}:80/tcp"),
                    ns: pod.clone(),
                    bind: IpAddr::V4(CLIENT_POD),
                    to: target(FRESH_VIP, 80, Proto::Tcp),
                    endpoints: [IpAddr::V4(FRESH_EP)].into(),
                },
                Flow {
                    name: format!(
                        "pod {CLIENT_POD} -> ClusterIP {API_VIP}:80/tcp (endpoint {API_GONE} removed)"
                    ),
                    ns: pod,
                    bind: IpAddr::V4(CLIENT_POD),
                    to: target(API_VIP, 80, Proto::Tcp),
                    endpoints: [IpAddr::V4(API_A), IpAddr::V4(API_NEW)].into(),
                },
            ],
            held: Vec::new(),
        };
        let traffic = Traffic::start(&after, "after the catch-up: changed Services");
        sleep_ms(1000);
        let tally = traffic.finish();
        check(
            &mut rep,
            format!(
                "after the catch-up, {} new connections to the new Service and to the changed one reach only their current endpoints",
                tally.attempted
            ),
            tally.failed == 0 && tally.attempted > 0,
            || {
                tally
                    .failures
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
    }
    rep.daemon_log = Some(daemon.tail());
    terminate(&mut daemon);
    rt.block_on(emu.stop());
    rep
}

/// Run one event, time it, print its report.
fn timed(ctx: &Ctx<'_>, f: impl FnOnce() -> EventReport) -> EventReport {
    if let Ok(mut v) = ctx.first_syncs.lock() {
        v.clear();
    }
    let start = Instant::now();
    let mut r = f();
    r.elapsed = start.elapsed();
    if let Ok(mut v) = ctx.first_syncs.lock() {
        r.first_syncs = std::mem::take(&mut *v);
    }
    eprint!("{}", r.render());
    r
}

/// Build the topology once and run every event of `cfg` in turn.
pub fn run_live(cfg: &LiveConfig) -> Result<Vec<EventReport>, HarnessError> {
    crate::topo::preflight()?;
    crate::topo::install_signal_cleanup();
    crate::topo::cleanup_stale()?;
    let topo = Topology::build(&topology_spec(), &cfg.proto_bin)?;
    let source = topo.dir.join("objects");
    let text = objects_before()
        .iter()
        .map(serde_yaml_ng::to_string)
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| HarnessError::Command {
            command: "writing the objects as YAML".into(),
            message: e.to_string(),
        })?;
    std::fs::create_dir_all(&source)
        .and_then(|()| std::fs::write(source.join("objects.yaml"), text.join("---\n")))
        .map_err(|e| HarnessError::Command {
            command: format!("writing {}", source.display()),
            message: e.to_string(),
        })?;
    let ctx = Ctx {
        cfg,
        flows: flows(&topo),
        topo: &topo,
        source,
        first_syncs: Mutex::new(Vec::new()),
    };
    let mut reports = Vec::new();
    for ev in &cfg.events {
        match ev {
            EventKind::Control => {
                let b = if cfg.backends.contains(&BackendName::Nftables) {
                    BackendName::Nftables
                } else {
                    cfg.backends[0]
                };
                reports.push(timed(&ctx, || control(&ctx, b)));
            }
            EventKind::Restarts => {
                for b in &cfg.backends {
                    reports.push(timed(&ctx, || restarts(&ctx, *b)));
                }
            }
            EventKind::Switch => reports.push(timed(&ctx, || switch(&ctx))),
            EventKind::Takeover => {
                for b in &cfg.backends {
                    reports.push(timed(&ctx, || takeover(&ctx, *b)));
                }
            }
            EventKind::Outage => {
                for b in &cfg.outage_backends {
                    reports.push(timed(&ctx, || outage(&ctx, *b)));
                }
            }
        }
    }
    let _ = ctx.clean();
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(failed: u64, broken: u64) -> EventReport {
        EventReport {
            event: "e".into(),
            backend: "nftables".into(),
            attempted: 100,
            failed,
            held: 5,
            broken,
            ..EventReport::default()
        }
    }

    #[test]
    fn verdicts() {
        assert!(report(0, 0).ok());
        assert!(!report(1, 0).ok());
        assert!(!report(0, 1).ok());
        // Nothing ran: never a pass.
        let mut r = report(0, 0);
        r.attempted = 0;
        assert!(!r.ok());
        let mut r = report(0, 0);
        r.held = 0;
        assert!(!r.ok());
        // The control passes only when it saw failures and breaks.
        let control = |f, b| EventReport {
            expect_failures: true,
            ..report(f, b)
        };
        assert!(control(3, 2).ok());
        assert!(!control(0, 0).ok());
        assert!(!control(3, 0).ok());
        assert!(control(0, 0).render().contains("the counting is blind"));
        // A failed check fails the event, unless it is a known failure.
        let mut r = report(0, 0);
        check(&mut r, "x", false, || "why".into());
        assert!(!r.ok());
        assert!(r.render().contains("[FAIL] x: why"));
        r.checks[0].known_failure = Some("reason".into());
        assert!(r.ok());
        assert!(r.render().contains("[KNOWN] x: why"));
        let mut r = report(0, 0);
        check(&mut r, "y", true, String::new);
        r.checks[0].known_failure = Some("reason".into());
        assert!(r.ok());
        assert!(r.render().contains("[XPASS] y"));
        let mut r = report(0, 0);
        r.error = Some("no daemon".into());
        assert!(!r.ok());
        let skipped = EventReport {
            not_run: Some("one backend".into()),
            ..EventReport::default()
        };
        assert!(skipped.ok());
        assert!(skipped.render().contains("NOT RUN: one backend"));
    }

    #[test]
    fn outage_changes_are_recognised() {
        let before = "10.96.0.10 10.244.1.20 10.244.1.21";
        let after = "10.96.0.10 10.244.1.20 10.244.1.22 10.96.0.30 10.244.1.30";
        assert!(!has_outage_changes(before));
        assert!(has_outage_changes(after));
        // Partly caught up: the removed endpoint still there, or no new Service.
        assert!(!has_outage_changes(&format!("{after} 10.244.1.21")));
        assert!(!has_outage_changes("10.244.1.20 10.244.1.22 10.244.1.30"));
    }

    #[test]
    fn events_parse() {
        assert_eq!(EventKind::list("").unwrap(), EventKind::ALL.to_vec());
        assert_eq!(
            EventKind::list("outage, restarts").unwrap(),
            vec![EventKind::Restarts, EventKind::Outage]
        );
        assert!(EventKind::list("reboot").is_err());
    }
}
