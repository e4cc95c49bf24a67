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
//!
//! The stages have their files: `cluster` (the objects, the topology
//! and the flows), `traffic` (the client loops and their tally),
//! `node` (daemons, rules and an event's body with traffic flowing),
//! `events` (one function per event) and `report` (what an event did
//! and the verdict).

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

mod cluster;
mod events;
mod node;
mod report;
mod traffic;

pub use cluster::Flow;
use cluster::*;
use events::*;
use node::*;
use report::*;
pub use report::{CATCH_UP_KNOWN_FAILURE, Check, EventReport, WATCH_BACKOFF_CAP};
use traffic::*;

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
