//! The node: starting and stopping daemons, loading and dumping rules,
//! and running an event's body with traffic flowing.

use super::*;

pub(super) struct Ctx<'a> {
    pub(super) cfg: &'a LiveConfig,
    pub(super) topo: &'a Topology,
    /// The `--source` directory of the file-source daemons.
    pub(super) source: PathBuf,
    pub(super) flows: Flows,
    /// From each daemon start to its first sync (the event's report takes them).
    pub(super) first_syncs: Mutex<Vec<Duration>>,
}

/// Where a daemon reads its objects.
pub(super) enum Source<'a> {
    File,
    Kube(&'a Path),
}

impl Ctx<'_> {
    pub(super) fn start_daemon(
        &self,
        backend: BackendName,
        source: &Source<'_>,
    ) -> Result<Daemon, String> {
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
    pub(super) fn kproxy(&self, args: &[&str]) -> Result<String, String> {
        let lock = format!("XTABLES_LOCKFILE={}", self.topo.xtables_lock().display());
        let bin = self.cfg.kproxy.to_string_lossy();
        let mut argv = vec!["env", lock.as_str(), "NO_COLOR=1", bin.as_ref()];
        argv.extend_from_slice(args);
        self.topo.node.exec(&argv).map_err(|e| e.to_string())
    }

    /// Remove every mode's rules: each event starts from an empty node.
    pub(super) fn clean(&self) -> Result<(), String> {
        self.kproxy(&["cleanup", "--backend", "all"]).map(|_| ())
    }

    /// Whether the node holds a backend's Service rules: `table ip
    /// kproxy`, or a `KUBE-SERVICES` chain in the flavour's nat table.
    pub(super) fn has_rules(&self, backend: BackendName) -> bool {
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
    pub(super) fn wait_until(
        &self,
        limit: Duration,
        mut f: impl FnMut() -> bool,
    ) -> Option<Duration> {
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
    pub(super) fn load_kube_proxy_rules(&self, flavour: BackendName) -> Result<(), String> {
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
pub(super) fn with_traffic(
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

pub(super) fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// SIGTERM, then wait (SIGKILL after 10 s).
pub(super) fn terminate(d: &mut Daemon) {
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

pub(super) fn check(
    rep: &mut EventReport,
    what: impl Into<String>,
    ok: bool,
    why: impl FnOnce() -> String,
) {
    rep.checks.push(Check {
        what: what.into(),
        result: if ok { Ok(()) } else { Err(why()) },
        known_failure: None,
    });
}
