//! The long-running daemon applier: one `kproxy run` per scenario whose
//! source file each step rewrites.

use super::*;

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
pub(super) fn daemon_sync(
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
