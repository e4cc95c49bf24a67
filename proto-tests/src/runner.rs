//! Running a [`Scenario`] on one backend: build the [`Topology`], sync
//! (`kproxy run --once`, or a fixed nftables script for the harness's own
//! tests), probe, judge each probe against its expectation ([`judge`]),
//! tear down. [`ScenarioReport`] says what happened, per probe.

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

/// The verdict on one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// As expected.
    Pass,
    /// Not as expected.
    Fail(String),
    /// Not as expected, but marked `known_failure` (reason, what went wrong).
    KnownFailure(String, String),
    /// Marked `known_failure` but passed: the mark must go.
    UnexpectedPass(String),
    /// Could not be run here (reason), e.g. no SCTP in this kernel.
    NotRun(String),
}

/// One probe's report.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Step number (0 = first sync).
    pub step: usize,
    /// `from -> to`.
    pub probe: String,
    /// The expectation in force for this backend.
    pub expect: String,
    /// What was seen, summarised.
    pub observed: String,
    /// The tracer check ([`crate::differential`]): what the tracer
    /// predicted and that the kernel agreed, or why the probe is exempt.
    /// `None` when not checked at all (mutated expectations, a probe that
    /// did not run).
    pub tracer: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
}

/// One scenario on one backend.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// Backend name.
    pub backend: String,
    /// Setup or sync failure (the probes of the failed step are not run).
    pub setup_error: Option<String>,
    /// Known failure of the whole scenario (reason).
    pub known_failure: Option<String>,
    /// Per probe.
    pub probes: Vec<ProbeReport>,
    /// Wall time.
    pub elapsed: Duration,
    /// The daemon's last log lines when a probe failed (daemon mode).
    pub daemon_log: Option<String>,
}

impl ScenarioReport {
    /// Whether this run fails the suite.
    pub fn failed(&self) -> bool {
        let probe_fail = self
            .probes
            .iter()
            .any(|p| matches!(p.verdict, Verdict::Fail(_) | Verdict::UnexpectedPass(_)));
        match &self.known_failure {
            None => self.setup_error.is_some() || probe_fail,
            Some(_) => probe_fail || self.scenario_xpass(),
        }
    }

    /// A scenario marked `known_failure` that ran cleanly: the mark must go
    /// (so the suite fails).
    pub fn scenario_xpass(&self) -> bool {
        self.known_failure.is_some()
            && self.setup_error.is_none()
            && !self.probes.is_empty()
            && !self
                .probes
                .iter()
                .any(|p| matches!(p.verdict, Verdict::KnownFailure(..) | Verdict::Fail(_)))
    }

    /// Count of probes per verdict kind: (pass, fail, known, not run).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for p in &self.probes {
            match p.verdict {
                Verdict::Pass => c.0 += 1,
                Verdict::Fail(_) | Verdict::UnexpectedPass(_) => c.1 += 1,
                Verdict::KnownFailure(..) => c.2 += 1,
                Verdict::NotRun(_) => c.3 += 1,
            }
        }
        c
    }

    /// A human-readable report: one line per probe.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let (pass, fail, known, notrun) = self.counts();
        let status = if self.failed() {
            "FAIL"
        } else if self.known_failure.is_some() || known > 0 {
            "ok (KNOWN FAILURES)"
        } else {
            "ok"
        };
        let _ = writeln!(
            s,
            "== {} on {}: {status}: {pass} passed, {fail} failed, {known} known failures, {notrun} not run ({:.1}s)",
            self.scenario,
            self.backend,
            self.elapsed.as_secs_f64()
        );
        if let Some(r) = &self.known_failure {
            let _ = writeln!(s, "   KNOWN FAILURE (whole scenario): {r}");
        }
        if let Some(e) = &self.setup_error {
            let _ = writeln!(s, "   SETUP/SYNC FAILED: {e}");
        }
        for p in &self.probes {
            let (tag, why) = match &p.verdict {
                Verdict::Pass => ("pass", String::new()),
                Verdict::Fail(w) => ("FAIL", format!("\n        why: {w}")),
                Verdict::KnownFailure(r, w) => (
                    "KNOWN",
                    format!("\n        known failure: {r}\n        why: {w}"),
                ),
                Verdict::UnexpectedPass(r) => (
                    "XPASS",
                    format!("\n        marked known_failure ({r}) but passed: remove the mark"),
                ),
                Verdict::NotRun(r) => ("NOT RUN", format!(" ({r})")),
            };
            let _ = writeln!(
                s,
                "   [{tag}] step {} {}: expect {}; saw {}{why}",
                p.step, p.probe, p.expect, p.observed
            );
            if let Some(t) = &p.tracer {
                let _ = writeln!(s, "        tracer: {t}");
            }
        }
        if let Some(l) = &self.daemon_log {
            let _ = writeln!(s, "   daemon log (last lines):");
            for line in l.lines() {
                let _ = writeln!(s, "     {line}");
            }
        }
        if self.scenario_xpass() {
            let _ = writeln!(
                s,
                "   XPASS: the scenario is marked known_failure but every probe passed: remove the mark"
            );
        }
        s
    }
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

/// A `kproxy run` daemon in the node namespace, killed on drop. Its log
/// lines are collected; each "synced" line counts one applied sync.
pub(crate) struct Daemon {
    child: std::process::Child,
    synced: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Daemon {
    /// Start `c` (a `kproxy run` in a namespace) with its standard output
    /// and error collected line by line.
    pub(crate) fn spawn(mut c: Command) -> Result<Daemon, String> {
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| format!("{c:?}: {e}"))?;
        let synced = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let readers: Vec<Box<dyn std::io::Read + Send>> = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for r in readers {
            let (synced, log) = (synced.clone(), log.clone());
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                    if line.contains(" synced ") || line.contains("\"synced\"") {
                        synced.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok(Daemon { child, synced, log })
    }

    /// The process id (`ip netns exec` execs kproxy, so it is kproxy's).
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it still runs.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(crate) fn syncs(&self) -> usize {
        self.synced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Wait until more than `n` syncs happened; the log tail on failure.
    pub(crate) fn wait_beyond(&mut self, n: usize, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while self.syncs() <= n {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("kproxy run exited ({st}):\n{}", self.tail()));
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "no sync within {}s after the source changed:\n{}",
                    limit.as_secs(),
                    self.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Wait until no sync happened for `quiet` (a file change can cause
    /// more than one sync; a late one must not be taken for the next step's).
    pub(crate) fn wait_quiet(&self, quiet: Duration) {
        let start = Instant::now();
        loop {
            let c = self.syncs();
            std::thread::sleep(quiet);
            if self.syncs() == c || start.elapsed() > Duration::from_secs(10) {
                return;
            }
        }
    }

    /// Wait until the daemon logged nothing for `quiet` (its stale-UDP
    /// clean-up runs after the "synced" line and logs when it is done).
    pub(crate) fn wait_log_quiet(&self, quiet: Duration) {
        let len = || self.log.lock().map(|l| l.len()).unwrap_or(0);
        let start = Instant::now();
        loop {
            let c = len();
            std::thread::sleep(quiet);
            if len() == c || start.elapsed() > Duration::from_secs(10) {
                return;
            }
        }
    }

    pub(crate) fn tail(&self) -> String {
        let l = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        l[l.len().saturating_sub(25)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write a step's objects for the daemon (a rename, so it never reads a
/// half-written file); start the daemon at the first step; wait for the
/// sync that follows.
fn daemon_sync(
    s: &Scenario,
    topo: &Topology,
    objs: &[serde_yaml_ng::Value],
    backend: BackendName,
    bin: &Path,
    daemon: &mut Option<Daemon>,
) -> Result<(), String> {
    let src = topo.dir.join("objects");
    std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
    let tmp = topo.dir.join("objects.yaml.tmp");
    if let Some(d) = daemon.as_ref() {
        d.wait_quiet(Duration::from_millis(400));
    }
    let before = daemon.as_ref().map(Daemon::syncs);
    std::fs::write(&tmp, objects_yaml(objs)).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, src.join("objects.yaml")).map_err(|e| e.to_string())?;
    if let (Some(d), Some(n)) = (daemon.as_mut(), before) {
        let r = d.wait_beyond(n, Duration::from_secs(20));
        // The daemon logs "synced" before it deletes stale UDP conntrack
        // flows; give the clean-up time to finish before probing.
        std::thread::sleep(Duration::from_millis(500));
        return r;
    }
    let config = topo.dir.join("config.yaml");
    std::fs::write(&config, s.config_yaml()).map_err(|e| e.to_string())?;
    let mut c = topo.node.command(bin);
    c.env("NO_COLOR", "1")
        .env("XTABLES_LOCKFILE", topo.xtables_lock())
        .args(["run", "--backend", backend.as_str(), "--source"])
        .arg(&src)
        .arg("--config")
        .arg(&config)
        .args(["--node-name", &s.node.name])
        // Only source changes may trigger syncs here: a periodic one could
        // be taken for the sync of a step.
        .args(["--sync-period", "1h", "--min-sync-period", "0s"])
        .args(&s.kproxy_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let d = daemon.insert(Daemon::spawn(c)?);
    d.wait_beyond(0, Duration::from_secs(30))?;
    // Let a sync triggered by the file write itself (racing the start) pass.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Apply the objects of one step in the node namespace (see [`Applier`]).
pub fn sync(
    s: &Scenario,
    topo: &Topology,
    objs: &[serde_yaml_ng::Value],
    backend: BackendName,
    cfg: &RunConfig,
) -> Result<(), String> {
    match &cfg.applier {
        Applier::Daemon { .. } => Err("the daemon applier is driven by run_scenario".into()),
        Applier::Nft { script } => topo
            .node
            .exec_input(&["nft", "-f", "-"], Some(script))
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Applier::Render { bin } => {
            let src = topo.dir.join("objects");
            std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
            std::fs::write(src.join("objects.yaml"), objects_yaml(objs))
                .map_err(|e| e.to_string())?;
            let config = topo.dir.join("config.yaml");
            std::fs::write(&config, s.config_yaml()).map_err(|e| e.to_string())?;
            let mut c = Command::new(bin);
            c.env("NO_COLOR", "1")
                .args([
                    "render",
                    "--backend",
                    backend.as_str(),
                    "--node-name",
                    &s.node.name,
                ])
                .arg("--config")
                .arg(&config)
                .args(&s.kproxy_args)
                .arg(src.join("objects.yaml"));
            let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{c:?}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            load_rendered(topo, backend, &text, &cfg.proto_bin)
        }
        Applier::Kproxy { bin } => {
            let src = topo.dir.join("objects");
            std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
            std::fs::write(src.join("objects.yaml"), objects_yaml(objs))
                .map_err(|e| e.to_string())?;
            let config = topo.dir.join("config.yaml");
            std::fs::write(&config, s.config_yaml()).map_err(|e| e.to_string())?;
            let mut c = topo.node.command(bin);
            c.env("NO_COLOR", "1")
                .env("XTABLES_LOCKFILE", topo.xtables_lock())
                .args(["run", "--once", "--backend", backend.as_str(), "--source"])
                .arg(&src)
                .arg("--config")
                .arg(&config)
                .args(["--node-name", &s.node.name])
                .args(&s.kproxy_args);
            run_bounded(c, Duration::from_secs(60))
        }
    }
}

/// Load `kproxy render` output into the node namespace.
pub(crate) fn load_rendered(
    topo: &Topology,
    backend: BackendName,
    text: &str,
    proto_bin: &Path,
) -> Result<(), String> {
    let err = |e: crate::HarnessError| e.to_string();
    if backend == BackendName::Nftables {
        return topo
            .node
            .exec_input(&["nft", "-f", "-"], Some(text))
            .map(|_| ())
            .map_err(err);
    }
    let flavour = if backend == BackendName::IptablesLegacy {
        "legacy"
    } else {
        "nft"
    };
    let bin = proto_bin.to_string_lossy();
    topo.node
        .exec(&[&bin, "sysctl", "net.ipv4.conf.all.route_localnet=1"])
        .map_err(err)?;
    // The render counts into kube-proxy's nfacct counters, which must
    // exist before `-m nfacct` loads (kube-proxy creates them at start).
    if !kproxy_iptables::nfacct::ensure_counters(Some(topo.node.name())) {
        return Err("cannot create the nfacct counters the render matches".into());
    }
    // Sections start with "# IPv4: ..." / "# IPv6: ...".
    let mut sections: Vec<(bool, String)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("# IPv4") {
            sections.push((false, String::new()));
        } else if line.starts_with("# IPv6") {
            sections.push((true, String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    for (v6, body) in sections {
        let tool = format!(
            "{}-{flavour}-restore",
            if v6 { "ip6tables" } else { "iptables" }
        );
        let lock = format!("XTABLES_LOCKFILE={}", topo.xtables_lock().display());
        topo.node
            .exec_input(&["env", &lock, &tool, "--noflush"], Some(&body))
            .map_err(err)?;
    }
    Ok(())
}

/// Run a command with a deadline; stdout/stderr in the error.
fn run_bounded(mut c: Command, limit: Duration) -> Result<(), String> {
    let what = format!("{c:?}");
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what}: no exit within {}s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("{what}: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The default number of connections of a probe.
pub fn default_count(e: &Expect, sticky: bool) -> u32 {
    match e {
        Expect::Endpoints(ep) if sticky => 10.max(ep.endpoints.len() as u32 * 5),
        // With n endpoints picked at random, 10n+10 connections miss one of
        // them with probability n*(1-1/n)^(10n+10): 2e-6 for n=2, 2e-5 for n=3.
        Expect::Endpoints(ep) if ep.endpoints.len() > 1 => 10 * ep.endpoints.len() as u32 + 10,
        // One endpoint expected: 16 connections let a second, unexpected
        // endpoint show itself (missed with probability 2^-16 at 50%).
        Expect::Endpoints(_) => 16,
        Expect::Simple(SimpleExpect::Drop) => 1,
        Expect::Http(_) => 2,
        Expect::Simple(_) => 2,
    }
}

/// What the tracer check works from at one step: `None` = no check
/// (mutated expectations: every probe fails anyway), `Some(Err)` = the
/// ruleset could not be dumped (every probe of the step fails).
fn step_rules(
    topo: &Topology,
    backend: BackendName,
    cfg: &RunConfig,
) -> Option<Result<StepRules, String>> {
    if cfg.mutate {
        return None;
    }
    let dumped =
        differential::dump_ruleset(&topo.node, backend, &topo.xtables_lock()).and_then(|text| {
            Ok(StepRules {
                backend: differential::backend_kind(backend),
                text,
                node_ips: differential::node_addresses(&topo.node)?,
            })
        });
    Some(dumped)
}

/// Why a probe's tracer check is partial or exempt, if it is.
fn tracer_depth(p: &Probe, expect: &Expect) -> Result<Depth, String> {
    if matches!(expect, Expect::Http(_)) {
        return Err(
            "exempt: HTTP health-check probe (the daemon's health server answers, not a rule)"
                .into(),
        );
    }
    if p.sticky || p.source_port.is_some() {
        return Ok(Depth::SubsetOnly);
    }
    Ok(Depth::Full)
}

/// The tracer's source address for a probe: the address the attempts
/// were made from (the kernel's choice for `node`), else for `node` the
/// loopback address towards loopback and otherwise the node's first
/// address of the family.
fn tracer_source(
    src: &Source,
    to: &Target,
    attempts: &[Attempt],
    rules: &StepRules,
) -> Option<IpAddr> {
    match src {
        Source::NodeAddr(ip) | Source::Pod(ip) | Source::External(ip) => Some(*ip),
        Source::Node => attempts
            .iter()
            .find_map(|a| match a {
                Attempt::Answer { local: Some(l), .. } => Some(l.ip()),
                _ => None,
            })
            .or_else(|| to.addr.ip().is_loopback().then(|| to.addr.ip()))
            .or_else(|| {
                rules.node_ips.iter().copied().find(|ip| {
                    ip.is_ipv4() == to.addr.is_ipv4() && !ip.is_loopback() && !is_link_local(ip)
                })
            }),
    }
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn run_probe(
    topo: &Topology,
    step: usize,
    p: &Probe,
    backend: BackendName,
    cfg: &RunConfig,
    scenario_known: bool,
    rules: Option<&Result<StepRules, String>>,
) -> Option<ProbeReport> {
    if let Some(bs) = &p.backends
        && !bs.iter().any(|k| backend.matches_key(k))
    {
        return None;
    }
    let mode = match cfg.applier {
        Applier::Kproxy { .. } => "run",
        Applier::Daemon { .. } => "daemon",
        Applier::Render { .. } => "render",
        Applier::Nft { .. } => "nft",
    };
    if let Some(ms) = &p.modes
        && !ms.iter().any(|m| m == mode)
    {
        return None;
    }
    let expect = p.expect.get(backend)?.clone();
    let mut rep = ProbeReport {
        step,
        probe: format!(
            "{} -> {}{}",
            p.from,
            p.to,
            if p.sticky { " (sticky)" } else { "" }
        ),
        expect: describe(&expect),
        observed: String::new(),
        tracer: None,
        verdict: Verdict::Pass,
    };
    if !p.note.is_empty() {
        rep.probe = format!("{} [{}]", rep.probe, p.note);
    }
    let (Ok(src), Ok(to)) = (Source::parse(&p.from), p.to.parse::<Target>()) else {
        rep.verdict = Verdict::Fail("unparsable probe (checked at load time)".into());
        return Some(rep);
    };
    if to.proto == Proto::Sctp && !cfg.sctp {
        rep.verdict = Verdict::NotRun("this kernel has no SCTP".into());
        rep.observed = "-".into();
        return Some(rep);
    }
    let count = p.count.unwrap_or_else(|| default_count(&expect, p.sticky));
    let known = p
        .known_failure
        .as_ref()
        .and_then(|k| k.get(backend))
        .cloned();
    let expect = if cfg.mutate {
        if known.is_some() || scenario_known {
            return None;
        }
        let m = mutate(&expect);
        rep.expect = format!("{} (mutated from {})", describe(&m), rep.expect);
        m
    } else {
        expect
    };
    let attempts = match topo.source(&src) {
        Ok((ns, bind)) => probe_in(
            ns,
            &cfg.proto_bin,
            &ProbeArgs {
                to,
                bind,
                port: p.source_port.unwrap_or(0),
                http: matches!(expect, Expect::Http(_)),
                count,
                timeout: cfg.timeout,
            },
        ),
        Err(e) => Err(e),
    };
    // The tracer check: what the rules the kernel holds predict must be
    // what the kernel did. A disagreement is never a known failure: it is
    // a tracer bug (or a kernel behaviour the tracer does not model), not
    // the kproxy bug a known_failure mark is about.
    let mut disagreement = None;
    if let (Some(rules), Ok(a)) = (rules, &attempts) {
        let checked = match (rules, tracer_depth(p, &expect)) {
            (_, Err(exempt)) => Ok(exempt),
            (Err(e), _) => Err(format!("cannot dump the node's ruleset: {e}")),
            (Ok(r), Ok(depth)) => match tracer_source(&src, &to, a, r) {
                None => Err(format!("no source address for {} in the node", p.from)),
                Some(from) => differential::check(r, from, to.addr, to.proto, a, depth).map(
                    |pred| match depth {
                        Depth::Full => format!("{pred} (agrees)"),
                        Depth::SubsetOnly => format!(
                            "{pred} (agrees; every answer predicted, not every prediction required: {})",
                            if p.sticky {
                                "session affinity keeps one endpoint, the tracer sees them all"
                            } else {
                                "one source port, one conntrack flow"
                            }
                        ),
                    },
                ),
            },
        };
        match checked {
            Ok(line) => rep.tracer = Some(line),
            Err(mut e) => {
                if p.source_port.is_some() {
                    // The tracer models a new connection; this probe reuses
                    // one conntrack flow across steps.
                    e.push_str(
                        " (a fixed source port reuses one conntrack flow: a stale flow the rules no longer create shows here)",
                    );
                }
                rep.tracer = Some(format!("DISAGREES: {e}"));
                disagreement = Some(e);
            }
        }
    }
    let result = attempts.and_then(|a| {
        rep.observed = summarize(&a);
        judge(&expect, p.sticky, &a)
    });
    let known = p
        .known_failure
        .as_ref()
        .and_then(|k| k.get(backend))
        .cloned();
    if let Some(d) = disagreement {
        rep.verdict = Verdict::Fail(match result {
            Ok(()) => format!("the tracer and the kernel disagree: {d}"),
            Err(w) => format!("{w}; and the tracer and the kernel disagree: {d}"),
        });
        return Some(rep);
    }
    rep.verdict = match (result, known) {
        (Ok(()), None) => Verdict::Pass,
        (Ok(()), Some(r)) => Verdict::UnexpectedPass(r),
        (Err(w), Some(r)) => Verdict::KnownFailure(r, w),
        (Err(w), None) if scenario_known => {
            Verdict::KnownFailure("scenario known failure".into(), w)
        }
        (Err(w), None) => Verdict::Fail(w),
    };
    Some(rep)
}

/// The `kproxy-proto probe` arguments.
struct ProbeArgs {
    to: Target,
    bind: Option<IpAddr>,
    port: u16,
    http: bool,
    count: u32,
    timeout: Duration,
}

fn probe_in(ns: &crate::topo::Ns, proto_bin: &Path, a: &ProbeArgs) -> Result<Vec<Attempt>, String> {
    let ProbeArgs {
        to,
        bind,
        port,
        http,
        count,
        timeout,
    } = a;
    let mut c = ns.command(proto_bin);
    c.args([
        "probe",
        "--to",
        &to.to_string(),
        "--count",
        &count.to_string(),
        "--timeout-ms",
        &timeout.as_millis().to_string(),
        "--port",
        &port.to_string(),
    ]);
    if let Some(b) = bind {
        c.args(["--bind", &b.to_string()]);
    }
    if *http {
        c.arg("--http");
    }
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the probe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "probe failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Attempt>(l).map_err(|e| format!("probe output {l:?}: {e}")))
        .collect()
}

/// A wrong version of an expectation, for proving that a probe can fail:
/// masquerading flipped, an expected endpoint dropped (or moved to another
/// port), reject and drop swapped, no-match turned into reject, another
/// HTTP status.
pub fn mutate(e: &Expect) -> Expect {
    match e {
        Expect::Endpoints(EndpointsExpect {
            endpoints,
            masquerade: Some(m),
        }) => Expect::Endpoints(EndpointsExpect {
            endpoints: endpoints.clone(),
            masquerade: Some(!m),
        }),
        Expect::Endpoints(EndpointsExpect {
            endpoints,
            masquerade: None,
        }) => {
            let mut eps = endpoints.clone();
            if eps.len() > 1 {
                eps.pop();
            } else if let Some(first) = eps.first_mut() {
                first.set_port(first.port().wrapping_add(1));
            }
            Expect::Endpoints(EndpointsExpect {
                endpoints: eps,
                masquerade: None,
            })
        }
        Expect::Simple(SimpleExpect::Reject) => Expect::Simple(SimpleExpect::Drop),
        Expect::Simple(SimpleExpect::Drop) => Expect::Simple(SimpleExpect::Reject),
        Expect::Simple(SimpleExpect::NoMatch) => Expect::Simple(SimpleExpect::Reject),
        Expect::Http(h) => Expect::Http(HttpExpect {
            http: h.http.wrapping_add(1),
            body_contains: h.body_contains.clone(),
        }),
    }
}

/// An expectation in words.
pub fn describe(e: &Expect) -> String {
    match e {
        Expect::Simple(SimpleExpect::Reject) => "reject".into(),
        Expect::Simple(SimpleExpect::Drop) => "drop".into(),
        Expect::Simple(SimpleExpect::NoMatch) => {
            "no-match (untouched: sink or node answers)".into()
        }
        Expect::Endpoints(EndpointsExpect {
            endpoints,
            masquerade,
        }) => {
            let eps: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
            let m = match masquerade {
                Some(true) => ", masqueraded",
                Some(false) => ", not masqueraded",
                None => "",
            };
            format!("endpoints [{}]{m}", eps.join(", "))
        }
        Expect::Http(HttpExpect {
            http,
            body_contains,
        }) => match body_contains {
            Some(b) => format!("HTTP {http} with {b:?}"),
            None => format!("HTTP {http}"),
        },
    }
}

/// Attempts grouped: `10.244.1.5:80 from 169.254.1.1 x12, refused x2`.
pub fn summarize(a: &[Attempt]) -> String {
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for x in a {
        let k = match x {
            Attempt::Answer {
                label,
                reached,
                from,
                local,
            } => {
                let l = local
                    .map(|l| l.ip().to_string())
                    .unwrap_or_else(|| "?".into());
                if label == "sink" || label == NODE_LOCAL {
                    format!("{label} (client {l})")
                } else {
                    format!("{reached} saw {} (client {l})", from.ip())
                }
            }
            Attempt::Http { status, body } => format!("HTTP {status} {body}"),
            Attempt::Refused => "refused".into(),
            Attempt::Unreachable { error } => format!("unreachable ({error})"),
            Attempt::Timeout => "timeout".into(),
            Attempt::Error { error } => format!("error ({error})"),
        };
        *groups.entry(k).or_default() += 1;
    }
    let v: Vec<String> = groups
        .into_iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

/// Judge attempts against an expectation. `Err` says what is wrong.
pub fn judge(e: &Expect, sticky: bool, attempts: &[Attempt]) -> Result<(), String> {
    if attempts.is_empty() {
        return Err("no attempts were made".into());
    }
    match e {
        Expect::Simple(SimpleExpect::Reject) => {
            for a in attempts {
                if !matches!(a, Attempt::Refused | Attempt::Unreachable { .. }) {
                    return Err(format!("want every attempt rejected; got {}", one(a)));
                }
            }
            Ok(())
        }
        Expect::Simple(SimpleExpect::Drop) => {
            for a in attempts {
                if !matches!(a, Attempt::Timeout) {
                    return Err(format!(
                        "want every attempt dropped (timeout); got {}",
                        one(a)
                    ));
                }
            }
            Ok(())
        }
        Expect::Simple(SimpleExpect::NoMatch) => {
            for a in attempts {
                if !matches!(a, Attempt::Answer { label, .. } if label == "sink" || label == NODE_LOCAL)
                {
                    return Err(format!(
                        "want the sink or the node's own listener to answer (packet untouched by the proxy); got {}",
                        one(a)
                    ));
                }
            }
            Ok(())
        }
        Expect::Endpoints(ep) => judge_endpoints(ep, sticky, attempts),
        Expect::Http(h) => {
            for a in attempts {
                let ok = matches!(a, Attempt::Http { status, body }
                    if *status == h.http
                        && h.body_contains.as_ref().is_none_or(|b| body.contains(b.as_str())));
                if !ok {
                    return Err(format!("want {}; got {}", describe(e), one(a)));
                }
            }
            Ok(())
        }
    }
}

fn one(a: &Attempt) -> String {
    summarize(std::slice::from_ref(a))
}

fn judge_endpoints(ep: &EndpointsExpect, sticky: bool, attempts: &[Attempt]) -> Result<(), String> {
    let mut hit: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for a in attempts {
        let Attempt::Answer {
            label,
            reached,
            from,
            local,
        } = a
        else {
            return Err(format!("want an endpoint to answer; got {}", one(a)));
        };
        if label == "sink" {
            return Err(
                "want an endpoint; the sink answered (the proxy did not touch the packet)".into(),
            );
        }
        if !ep.endpoints.contains(reached) {
            return Err(format!(
                "answered by {reached}, which is not an expected endpoint"
            ));
        }
        *hit.entry(*reached).or_default() += 1;
        if let Some(m) = ep.masquerade {
            let Some(local) = local else {
                return Err("the probe did not learn its own address".into());
            };
            let masqueraded = from.ip() != local.ip();
            if masqueraded != m {
                return Err(if m {
                    format!(
                        "want masquerade; {reached} saw the client's own address {}",
                        from.ip()
                    )
                } else {
                    format!(
                        "want the client address {} preserved; {reached} saw {}",
                        local.ip(),
                        from.ip()
                    )
                });
            }
        }
    }
    if sticky {
        if hit.len() != 1 {
            return Err(format!(
                "want every connection on one endpoint (session affinity); hit {}",
                hit.keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    } else {
        let missed: Vec<String> = ep
            .endpoints
            .iter()
            .filter(|e| !hit.contains_key(e))
            .map(|e| e.to_string())
            .collect();
        if !missed.is_empty() {
            return Err(format!(
                "{} never answered in {} connections",
                missed.join(", "),
                attempts.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(reached: &str, from: &str, local: &str) -> Attempt {
        Attempt::Answer {
            label: "x".into(),
            reached: reached.parse().unwrap(),
            from: from.parse().unwrap(),
            local: Some(local.parse().unwrap()),
        }
    }

    fn eps(v: &[&str], m: Option<bool>) -> Expect {
        Expect::Endpoints(EndpointsExpect {
            endpoints: v.iter().map(|s| s.parse().unwrap()).collect(),
            masquerade: m,
        })
    }

    #[test]
    fn endpoints_judged() {
        let a = [
            ans("10.0.0.1:80", "10.1.0.9:5000", "10.1.0.9:5000"),
            ans("10.0.0.2:80", "10.1.0.9:5001", "10.1.0.9:5001"),
        ];
        assert_eq!(
            judge(
                &eps(&["10.0.0.1:80", "10.0.0.2:80"], Some(false)),
                false,
                &a
            ),
            Ok(())
        );
        // Masquerade flipped.
        assert!(judge(&eps(&["10.0.0.1:80", "10.0.0.2:80"], Some(true)), false, &a).is_err());
        // A wrong endpoint.
        assert!(judge(&eps(&["10.0.0.1:80"], None), false, &a).is_err());
        // One expected endpoint never answered.
        assert!(
            judge(
                &eps(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None),
                false,
                &a
            )
            .is_err()
        );
        // Not sticky.
        assert!(judge(&eps(&["10.0.0.1:80", "10.0.0.2:80"], None), true, &a).is_err());
        let masq = [ans("10.0.0.1:80", "169.254.1.1:4000", "203.0.113.2:5000")];
        assert_eq!(
            judge(&eps(&["10.0.0.1:80"], Some(true)), false, &masq),
            Ok(())
        );
        assert!(judge(&eps(&["10.0.0.1:80"], Some(false)), false, &masq).is_err());
    }

    #[test]
    fn simple_outcomes_judged() {
        let refused = [Attempt::Refused];
        let timeout = [Attempt::Timeout];
        let sink = [Attempt::Answer {
            label: "sink".into(),
            reached: "169.254.2.2:7777".parse().unwrap(),
            from: "10.1.0.9:5000".parse().unwrap(),
            local: None,
        }];
        let reject = Expect::Simple(SimpleExpect::Reject);
        let drop = Expect::Simple(SimpleExpect::Drop);
        let nomatch = Expect::Simple(SimpleExpect::NoMatch);
        assert_eq!(judge(&reject, false, &refused), Ok(()));
        assert!(judge(&drop, false, &refused).is_err());
        assert_eq!(judge(&drop, false, &timeout), Ok(()));
        assert!(judge(&reject, false, &timeout).is_err());
        assert_eq!(judge(&nomatch, false, &sink), Ok(()));
        assert!(judge(&eps(&["10.0.0.1:80"], None), false, &sink).is_err());
        assert!(
            judge(
                &nomatch,
                false,
                &[ans("10.0.0.1:80", "1.1.1.1:1", "1.1.1.1:1")]
            )
            .is_err()
        );
        assert!(judge(&reject, false, &[]).is_err());
    }

    #[test]
    fn http_judged() {
        let h = |status| Attempt::Http {
            status,
            body: "{\"localEndpoints\":1}".into(),
        };
        let want = |http, body: Option<&str>| {
            Expect::Http(HttpExpect {
                http,
                body_contains: body.map(String::from),
            })
        };
        assert_eq!(judge(&want(200, None), false, &[h(200), h(200)]), Ok(()));
        assert!(judge(&want(503, None), false, &[h(200)]).is_err());
        assert!(judge(&want(200, Some("\"localEndpoints\":0")), false, &[h(200)]).is_err());
        assert!(judge(&want(200, None), false, &[Attempt::Refused]).is_err());
    }

    fn report(known: Option<&str>, verdicts: &[Verdict]) -> ScenarioReport {
        ScenarioReport {
            scenario: "s".into(),
            backend: "nftables".into(),
            setup_error: None,
            known_failure: known.map(String::from),
            probes: verdicts
                .iter()
                .map(|v| ProbeReport {
                    step: 0,
                    probe: "p".into(),
                    expect: "e".into(),
                    observed: "o".into(),
                    tracer: None,
                    verdict: v.clone(),
                })
                .collect(),
            elapsed: Duration::ZERO,
            daemon_log: None,
        }
    }

    #[test]
    fn known_failures_and_xpass() {
        let known = Verdict::KnownFailure("bug".into(), "why".into());
        let fail = Verdict::Fail("why".into());
        assert!(!report(None, &[Verdict::Pass]).failed());
        assert!(report(None, &[Verdict::Pass, fail.clone()]).failed());
        assert!(!report(None, &[Verdict::Pass, known.clone()]).failed());
        assert!(report(None, &[Verdict::UnexpectedPass("bug".into())]).failed());
        // A scenario marked known_failure fails the suite only once it passes.
        assert!(!report(Some("bug"), &[Verdict::Pass, known.clone()]).failed());
        assert!(report(Some("bug"), &[Verdict::Pass, Verdict::Pass]).failed());
        assert!(
            report(Some("bug"), &[Verdict::Pass])
                .render()
                .contains("XPASS")
        );
        // Probes that cannot run here do not fail anything.
        assert!(!report(None, &[Verdict::NotRun("no SCTP".into())]).failed());
        let mut setup = report(None, &[]);
        setup.setup_error = Some("kproxy run failed".into());
        assert!(setup.failed());
    }
}
