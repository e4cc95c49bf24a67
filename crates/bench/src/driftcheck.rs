//! `kproxy-bench drift-check`: the cost of one drift check
//! ([`kproxy_graph::Backend::check`]) on a synthetic cluster, in a fresh
//! namespace.
//!
//! The cluster is the one `kproxy-bench gen` writes for the same
//! parameters. After a full sync, each round bumps the generation with an
//! empty incremental sync (so the check recomputes what it expects, as
//! the first check after a daemon's sync does), then measures one check:
//! - CPU: user + system time of this process and of the children the
//!   check waited for (`getrusage` before and after);
//! - memory: the growth of this process's peak RSS over its RSS before
//!   the check (the peak is reset through `/proc/self/clear_refs`), and
//!   the largest peak RSS of a child the check ran, read from
//!   `/usr/bin/time`, which wraps the iptables tools through `PATH` (the
//!   bench runs itself again with the wrappers first on `PATH`; nftables
//!   runs no tool).
//!
//! Prints one line per check and the medians with min and max.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kproxy_graph::{BackendKind, ChangeSet, ProxyMode};

use crate::{subjects, synth, sys};

/// One check's cost.
#[derive(Debug, Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu_self: Duration,
    cpu_children: Duration,
    rss_growth_kib: u64,
    child_peak_kib: u64,
}

/// Measure `checks` drift checks of `kind` on a cluster of `services`
/// Services with `endpoints` endpoints each.
pub fn run(
    kind: BackendKind,
    services: usize,
    endpoints: usize,
    checks: usize,
) -> anyhow::Result<()> {
    // The iptables tools the check runs are wrapped through PATH, which
    // only a new process picks up: run again with it.
    let log = match std::env::var_os(WRAPPED) {
        Some(log) => Some(PathBuf::from(log)),
        None if kind != BackendKind::Nftables => {
            let dir = tempdir()?;
            let log = dir.join("child-rss");
            wrap_tools(&dir)?;
            let path = std::env::var("PATH").unwrap_or_default();
            let status = std::process::Command::new(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .env("PATH", format!("{}:{path}", dir.display()))
                .env(WRAPPED, &log)
                .status()?;
            let _ = std::fs::remove_dir_all(&dir);
            if !status.success() {
                bail!("drift-check failed: {status}");
            }
            return Ok(());
        }
        None => None,
    };
    let cluster = synth::Cluster::generate(synth::Params::sized(services, endpoints))?;
    let mode = match kind {
        BackendKind::Nftables => ProxyMode::Nftables,
        _ => ProxyMode::Iptables,
    };
    let graph = cluster.graph(mode)?;
    drop(cluster);
    let ns = sys::Ns::new()?;
    let mut backend = subjects::backend(kind, Some(ns.name()))?;
    let t = Instant::now();
    let stats = backend
        .sync(&graph, None)
        .map_err(|e| anyhow::anyhow!("full sync: {e}"))?;
    eprintln!(
        "drift-check: {kind}: {services} Services, {} rules loaded in {:.1} s",
        stats.rules_total,
        t.elapsed().as_secs_f64()
    );
    let mut costs = Vec::new();
    for i in 0..checks {
        backend
            .sync(&graph, Some(&ChangeSet::default()))
            .map_err(|e| anyhow::anyhow!("empty sync: {e}"))?;
        if let Some(log) = &log {
            let _ = std::fs::remove_file(log);
        }
        std::fs::write("/proc/self/clear_refs", "5").context("resetting the peak RSS")?;
        let rss_before = status_kib("VmRSS")?;
        let (s0, c0) = (cpu(UsageWho::RUSAGE_SELF)?, cpu(UsageWho::RUSAGE_CHILDREN)?);
        let t = Instant::now();
        let ok = backend.check().map_err(|e| anyhow::anyhow!("check: {e}"))?;
        let wall = t.elapsed();
        let (s1, c1) = (cpu(UsageWho::RUSAGE_SELF)?, cpu(UsageWho::RUSAGE_CHILDREN)?);
        let peak = status_kib("VmHWM")?;
        if !ok {
            bail!("check {i}: drift reported on an untouched kernel");
        }
        let child_peak_kib = log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let c = Cost {
            wall,
            cpu_self: s1.saturating_sub(s0),
            cpu_children: c1.saturating_sub(c0),
            rss_growth_kib: peak.saturating_sub(rss_before),
            child_peak_kib,
        };
        println!(
            "check {i}: wall {:.1} ms, cpu {:.1} ms (self {:.1}, children {:.1}), own peak growth {} KiB, largest child peak {} KiB",
            ms(c.wall),
            ms(c.cpu_self + c.cpu_children),
            ms(c.cpu_self),
            ms(c.cpu_children),
            c.rss_growth_kib,
            c.child_peak_kib
        );
        costs.push(c);
    }
    let stat = |f: &dyn Fn(&Cost) -> f64| -> String {
        let mut v: Vec<f64> = costs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        match (v.first(), v.last()) {
            (Some(lo), Some(hi)) => format!("{:.1} ({lo:.1}-{hi:.1})", v[v.len() / 2]),
            _ => "-".into(),
        }
    };
    println!(
        "{kind} {services} Services x {endpoints} endpoints, {checks} checks: median (min-max): \
         wall {} ms, cpu {} ms, own peak growth {} MiB, largest child peak {} MiB",
        stat(&|c| ms(c.wall)),
        stat(&|c| ms(c.cpu_self + c.cpu_children)),
        stat(&|c| c.rss_growth_kib as f64 / 1024.0),
        stat(&|c| c.child_peak_kib as f64 / 1024.0),
    );
    Ok(())
}

use nix::sys::resource::{UsageWho, getrusage};

fn cpu(who: UsageWho) -> anyhow::Result<Duration> {
    let u = getrusage(who).context("getrusage")?;
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("kproxy-bench-drift-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// The variable that carries the log path to the re-run process.
const WRAPPED: &str = "KPROXY_BENCH_DRIFT_RSS_LOG";

/// Wrappers of the iptables tools in `dir` that run the real tool under
/// `/usr/bin/time`, appending its peak RSS (KiB) to `$WRAPPED`.
fn wrap_tools(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for tool in [
        "iptables-legacy",
        "ip6tables-legacy",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
        "iptables-nft",
        "ip6tables-nft",
    ] {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?;
        let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if real.is_empty() {
            bail!("{tool} is not installed");
        }
        let p = dir.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\nexec /usr/bin/time -a -o \"${WRAPPED}\" -f %M {real} \"$@\"\n"),
        )?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}
