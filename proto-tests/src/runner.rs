//! Running a [`Scenario`] on one backend: build the [`Topology`], sync
//! (`kproxy run --once`, or a fixed nftables script for the harness's own
//! tests), probe, judge each probe against its expectation ([`judge`]),
//! tear down. [`ScenarioReport`] says what happened, per probe.
//!
//! The stages have their files: [`apply`] (rules into the node), [`daemon`]
//! (the long-running applier), [`probe`] (connections and the tracer's
//! prediction), [`judge`] (attempts against expectations) and [`report`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::differential::{self, Depth, StepRules};
use crate::scenario::{
    BackendName, EndpointsExpect, Expect, HttpExpect, Probe, Scenario, SimpleExpect, Source,
    objects_yaml,
};
use crate::topo::{Topology, TopologySpec};
use crate::wire::{Attempt, Proto, Target};

mod apply;
mod daemon;
mod judge;
mod probe;
mod report;

pub(crate) use apply::load_rendered;
pub use apply::sync;
pub(crate) use daemon::Daemon;
use daemon::daemon_sync;
pub use judge::{describe, judge, mutate, summarize};
pub use probe::default_count;
use probe::{run_probe, step_rules};
pub use report::{ProbeReport, ScenarioReport, Verdict};

/// The label of the node's own listener: it answers on every port that a
/// probe sends to a node address, so traffic to a node address that the
/// proxy leaves alone is seen as `no-match` (not as a REJECT).
pub const NODE_LOCAL: &str = "node-local";

/// How the rules get into the node namespace.
#[derive(Debug, Clone)]
pub enum Applier {
    /// `kproxy run --once --backend B --source DIR --config F --node-name N`.
    Kproxy {
        /// The `kproxy` binary.
        bin: PathBuf,
    },
    /// `kproxy render` outside, loaded with `nft -f` / `iptables-restore
    /// --noflush` inside (PROTO_APPLY=render): checks the generators'
    /// rules without the daemon (no conntrack clean-up, no sysctls but
    /// route_localnet, which is set here for the iptables backends).
    Render {
        /// The `kproxy` binary.
        bin: PathBuf,
    },
    /// One long-running `kproxy run` (no `--once`) per scenario: later
    /// steps rewrite its source file and wait for the next sync, so the
    /// daemon's incremental syncs answer to the same probes
    /// (PROTO_APPLY=daemon; the scenarios test runs every scenario with
    /// steps this way too).
    Daemon {
        /// The `kproxy` binary.
        bin: PathBuf,
    },
    /// `nft -f -` with this script at every step (the harness's own tests).
    Nft {
        /// The ruleset.
        script: String,
    },
}

/// Everything a run needs besides the scenario.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `kproxy-proto` binary (echo servers, probes, sysctls).
    pub proto_bin: PathBuf,
    /// How rules are applied.
    pub applier: Applier,
    /// Timeout of one probe attempt.
    pub timeout: Duration,
    /// Whether this kernel has SCTP (SCTP probes are not run without it).
    pub sctp: bool,
    /// Judge every probe against a deliberately wrong expectation
    /// ([`mutate`]): every probe must then fail, which proves it can.
    /// Probes marked `known_failure` are skipped.
    pub mutate: bool,
}

/// The topology a scenario needs.
pub fn topology_spec(s: &Scenario) -> TopologySpec {
    let node_ips = s.node_ips();
    let mut spec = TopologySpec {
        node_ips: node_ips.clone(),
        extra_node_ips: s.node.extra_ips.clone(),
        ..TopologySpec::default()
    };
    for h in s.endpoint_hosts() {
        if node_ips.contains(&h.ip) || s.node.extra_ips.contains(&h.ip) {
            spec.node_endpoints.push((h.ip, h.ports));
        } else if h.local {
            spec.local_pods.push((h.ip, h.ports));
        } else {
            spec.remote.push((h.ip, h.ports));
        }
    }
    for (_, p) in s.all_probes() {
        if let Ok(t) = p.to.parse::<Target>() {
            let ip = t.addr.ip();
            let node_addr =
                ip.is_loopback() || node_ips.contains(&ip) || s.node.extra_ips.contains(&ip);
            let taken = spec
                .node_endpoints
                .iter()
                .any(|(_, ports)| ports.iter().any(|(port, _)| *port == t.addr.port()));
            // An HTTP probe talks to a server of the daemon's (health-check
            // node port): the node's listener must not take its port.
            let http = match &p.expect {
                crate::scenario::PerBackend::All(e) => matches!(e, Expect::Http(_)),
                crate::scenario::PerBackend::By(m) => {
                    m.values().any(|e| matches!(e, Expect::Http(_)))
                }
            };
            if node_addr && !taken && !http && !spec.node_listen.contains(&(t.addr.port(), t.proto))
            {
                spec.node_listen.push((t.addr.port(), t.proto));
            }
        }
        match Source::parse(&p.from) {
            Ok(Source::External(ip)) if !spec.external.contains(&ip) => spec.external.push(ip),
            Ok(Source::Pod(ip))
                if !spec.local_pods.iter().any(|(i, _)| *i == ip)
                    && !spec.remote.iter().any(|(i, _)| *i == ip) =>
            {
                // A client pod on this node that is no endpoint.
                spec.local_pods.push((ip, Vec::new()));
            }
            _ => {}
        }
    }
    spec
}

/// Run one scenario on one backend. Never panics on kernel trouble: every
/// failure ends up in the report; the topology is gone when this returns.
pub fn run_scenario(s: &Scenario, backend: BackendName, cfg: &RunConfig) -> ScenarioReport {
    let start = Instant::now();
    let mut rep = ScenarioReport {
        scenario: s.name.clone(),
        backend: match cfg.applier {
            Applier::Daemon { .. } => format!("{backend} (daemon)"),
            Applier::Render { .. } => format!("{backend} (render)"),
            _ => backend.to_string(),
        },
        setup_error: None,
        known_failure: s
            .known_failure
            .as_ref()
            .and_then(|k| k.get(backend))
            .cloned(),
        probes: Vec::new(),
        elapsed: Duration::ZERO,
        daemon_log: None,
    };
    let topo = match Topology::build(&topology_spec(s), &cfg.proto_bin) {
        Ok(t) => t,
        Err(e) => {
            rep.setup_error = Some(format!("building the topology: {e}"));
            rep.elapsed = start.elapsed();
            return rep;
        }
    };
    let per_step = s.objects_per_step();
    let probes_per_step: Vec<&[Probe]> = std::iter::once(s.probes.as_slice())
        .chain(s.steps.iter().map(|st| st.probes.as_slice()))
        .collect();
    let mut daemon: Option<Daemon> = None;
    for (step, (objs, probes)) in per_step.iter().zip(probes_per_step).enumerate() {
        let synced = match &cfg.applier {
            Applier::Daemon { bin } => daemon_sync(s, &topo, objs, backend, bin, &mut daemon),
            _ => sync(s, &topo, objs, backend, cfg),
        };
        if let Err(e) = synced {
            rep.setup_error = Some(format!("step {step}: {e}"));
            break;
        }
        let rules = step_rules(&topo, backend, cfg);
        for p in probes {
            // A fixed-port probe depends on the conntrack clean-up, which the
            // daemon runs after it reports the sync.
            if p.source_port.is_some()
                && let Some(d) = &daemon
            {
                d.wait_log_quiet(Duration::from_millis(2500));
            }
            if let Some(r) = run_probe(
                &topo,
                step,
                p,
                backend,
                cfg,
                rep.known_failure.is_some(),
                rules.as_ref(),
            ) {
                rep.probes.push(r);
            }
        }
    }
    if let Some(d) = &daemon
        && rep.failed()
    {
        rep.daemon_log = Some(d.tail());
    }
    drop(daemon);
    drop(topo);
    rep.elapsed = start.elapsed();
    rep
}
