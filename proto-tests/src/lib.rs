//! kproxy's proto-tests: real packets through real kernels, in network
//! namespaces, for every backend.
//!
//! - [`scenario::Scenario`]: the YAML scenario format (see
//!   `proto-tests/README.md`): node, proxy options, Kubernetes objects,
//!   steps, and [`scenario::Probe`]s with their [`scenario::Expect`]ations;
//! - [`topo::Topology`]: the namespaces a scenario runs in (node, local
//!   pods, remote node, external client, sink), removed on drop;
//! - [`wire`]: the echo servers and probes that run inside the namespaces
//!   (the `kproxy-proto` binary's `echo`, `sink` and `probe` subcommands);
//! - [`runner`]: one scenario on one backend → a [`runner::ScenarioReport`];
//!   [`run_suite`] runs many, in parallel;
//! - [`differential`]: every probe's result checked against what
//!   `kproxy_trace` predicts from the ruleset the kernel holds;
//! - [`live`]: live traffic through daemon kills and restarts, backend
//!   switches, kube-proxy takeover and hand-back, and API server outages.

pub mod differential;
pub mod live;
pub mod runner;
pub mod scenario;
pub mod topo;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::Duration;

use runner::{Applier, RunConfig, ScenarioReport};
use scenario::{BackendName, Scenario};

/// What can go wrong outside a probe's verdict.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A scenario file is unreadable or invalid.
    #[error("scenario {}: {message}", path.display())]
    Scenario {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A command (ip, nft, kproxy, ...) failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and output.
        message: String,
    },
    /// The machine cannot run proto-tests (not root, a tool missing).
    #[error("proto-tests cannot run: {0}")]
    Preflight(String),
}

/// `proto-tests/scenarios/`.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// The scenario files, sorted, narrowed by `filter` (comma-separated file
/// stems; empty = all).
pub fn scenario_files(filter: &str) -> Result<Vec<PathBuf>, HarnessError> {
    let dir = scenarios_dir();
    let rd = std::fs::read_dir(&dir).map_err(|e| HarnessError::Scenario {
        path: dir.clone(),
        message: e.to_string(),
    })?;
    let wanted: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            wanted.is_empty() || wanted.contains(&stem.as_str())
        })
        .collect();
    files.sort();
    if !wanted.is_empty() && files.len() != wanted.len() {
        return Err(HarnessError::Scenario {
            path: dir,
            message: format!("not every scenario in {filter:?} exists"),
        });
    }
    Ok(files)
}

/// The backends named by `filter` (comma-separated; empty = all).
pub fn backends(filter: &str) -> Result<Vec<BackendName>, HarnessError> {
    let mut out = Vec::new();
    for b in filter.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        out.push(BackendName::parse(b).ok_or_else(|| {
            HarnessError::Preflight(format!(
                "unknown backend {b:?} (iptables-legacy, iptables-nft, nftables)"
            ))
        })?);
    }
    if out.is_empty() {
        out = BackendName::ALL.to_vec();
    }
    Ok(out)
}

/// The `kproxy` binary: `$KPROXY_BIN`, else built with
/// `cargo build -p kproxy-daemon` next to the running executable.
pub fn kproxy_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("KPROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| HarnessError::Preflight(e.to_string()))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut c = std::process::Command::new(&cargo);
    c.current_dir(&root)
        .args(["build", "-q", "-p", "kproxy-daemon", "--bin", "kproxy"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        c.arg("--release");
    }
    let st = c
        .status()
        .map_err(|e| HarnessError::Preflight(format!("{cargo} build -p kproxy-daemon: {e}")))?;
    if !st.success() {
        return Err(HarnessError::Preflight(format!(
            "`cargo build -p kproxy-daemon` failed ({st})"
        )));
    }
    let bin = dir.join("kproxy");
    if !bin.exists() {
        return Err(HarnessError::Preflight(format!(
            "{} not found after building",
            bin.display()
        )));
    }
    Ok(bin)
}

/// Run `files` × `backends` with up to `jobs` at once; reports in input order.
pub fn run_suite(
    files: &[PathBuf],
    backends: &[BackendName],
    proto_bin: &Path,
    applier: &Applier,
    jobs: usize,
) -> Result<Vec<ScenarioReport>, HarnessError> {
    run_suite_with(files, backends, proto_bin, applier, jobs, false)
}

/// [`run_suite`], optionally with every expectation mutated
/// ([`runner::RunConfig::mutate`]).
pub fn run_suite_with(
    files: &[PathBuf],
    backends: &[BackendName],
    proto_bin: &Path,
    applier: &Applier,
    jobs: usize,
    mutate: bool,
) -> Result<Vec<ScenarioReport>, HarnessError> {
    topo::preflight()?;
    topo::install_signal_cleanup();
    let removed = topo::cleanup_stale()?;
    if !removed.is_empty() {
        eprintln!(
            "proto-tests: removed {} stale namespaces of dead runs",
            removed.len()
        );
    }
    let sctp = probe_sctp(proto_bin);
    eprintln!(
        "proto-tests: SCTP {}",
        if sctp {
            "available"
        } else {
            "NOT available in this kernel: SCTP probes are not run"
        }
    );
    let mut work = Vec::new();
    for f in files {
        let s = Scenario::load(f)?;
        for b in s.backends() {
            if backends.contains(&b) {
                work.push((s.clone(), b));
            }
        }
    }
    let cfg = RunConfig {
        proto_bin: proto_bin.to_path_buf(),
        applier: applier.clone(),
        timeout: Duration::from_millis(1000),
        sctp,
        mutate,
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(vec![None; work.len()]);
    std::thread::scope(|sc| {
        for _ in 0..jobs.max(1) {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((s, b)) = work.get(i) else { break };
                    let r = runner::run_scenario(s, *b, &cfg);
                    if !mutate {
                        eprint!("{}", r.render());
                    }
                    if let Ok(mut v) = results.lock() {
                        v[i] = Some(r);
                    }
                }
            });
        }
    });
    let v = results.into_inner().unwrap_or_default();
    Ok(v.into_iter().flatten().collect())
}

/// Whether SCTP sockets can be opened in a fresh namespace.
pub fn probe_sctp(proto_bin: &Path) -> bool {
    let Ok(ns) = topo::Ns::new(topo::next_job(), "sctp") else {
        return false;
    };
    ns.exec(&[&proto_bin.to_string_lossy(), "sctp-check"])
        .is_ok()
}
