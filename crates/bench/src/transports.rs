//! The nftables backend's two transports side by side in one run: full
//! syncs (fresh namespace each) and single endpoint changes through
//! `Backend::sync`, over netlink and through `nft -f`, on the same
//! synthetic cluster. `kproxy-bench nft-transports --sizes 10000,50000`.

use std::time::Instant;

use anyhow::Context as _;
use kproxy_graph::{Backend, ChangeSet, ProxyMode};
use kproxy_nftables::{NftablesBackend, TransportKind};

use crate::synth::{Cluster, Params};
use crate::sys::Ns;

fn stats(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let med = s[s.len() / 2];
    format!(
        "{:.3} (min {:.3}, max {:.3}, n={})",
        med,
        s[0],
        s[s.len() - 1],
        s.len()
    )
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// This process's user and system CPU time so far, in seconds (every
/// thread: the netlink transport sends on a thread of its own; not the
/// exec transport's `nft` child).
fn cpu() -> (f64, f64) {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (s(u.user_time()), s(u.system_time()))
        }
        Err(_) => (0.0, 0.0),
    }
}

/// Children of this process right now (the `nft` of the exec transport).
fn children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .map(|s| s.split_whitespace().count())
        .unwrap_or(0)
}

/// The transports named in `names` (`exec`, `netlink`), in that order.
fn kinds(names: &[String]) -> anyhow::Result<Vec<TransportKind>> {
    for n in names {
        if n != "exec" && n != "netlink" {
            anyhow::bail!("--transports {n:?}: expected exec or netlink");
        }
    }
    Ok([TransportKind::Exec, TransportKind::Netlink]
        .into_iter()
        .filter(|k| names.iter().any(|n| n == k.as_str()))
        .collect())
}

/// Measure and print; the last size also gets `changes` endpoint changes.
/// Only the transports in `names`; the ratio when both are measured.
pub fn run(
    sizes: &[usize],
    endpoints: usize,
    reps: usize,
    changes: usize,
    names: &[String],
) -> anyhow::Result<()> {
    let kinds = kinds(names)?;
    println!(
        "| Services | transport | full sync s, median (min, max) | user CPU s | system CPU s | largest batch MiB | ratio netlink/exec |"
    );
    println!("|---:|---|---|---|---|---:|---:|");
    let mut change_lines = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let mut cluster = Cluster::generate(Params::sized(n, endpoints))?;
        cluster.add_target()?;
        let g = cluster.graph(ProxyMode::Nftables)?;
        let mut med = Vec::new();
        for &kind in &kinds {
            let mut wall = Vec::new();
            let (mut user, mut sys) = (Vec::new(), Vec::new());
            let mut peak = 0usize;
            let mut kids = 0usize;
            for _ in 0..reps {
                let ns = Ns::new()?;
                let mut b = NftablesBackend::in_netns(ns.name()).transport(kind);
                let t = Instant::now();
                let c0 = cpu();
                // A thread watches for child processes during the sync.
                let done = std::sync::atomic::AtomicBool::new(false);
                let seen = std::thread::scope(|s| {
                    let h = s.spawn(|| {
                        let mut max = 0;
                        while !done.load(std::sync::atomic::Ordering::Relaxed) {
                            max = max.max(children());
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                        max
                    });
                    let r = b.sync(&g, None);
                    let c1 = cpu();
                    user.push(c1.0 - c0.0);
                    sys.push(c1.1 - c0.1);
                    done.store(true, std::sync::atomic::Ordering::Relaxed);
                    (r, h.join().unwrap_or(0))
                });
                let (r, k) = seen;
                r.map_err(|e| anyhow::anyhow!("{kind:?} at {n}: {e}"))?;
                wall.push(t.elapsed().as_secs_f64());
                peak = peak.max(b.peak_batch_bytes());
                kids = kids.max(k);
            }
            med.push(median(&wall));
            let ratio = if kind == TransportKind::Netlink && med.len() == 2 {
                format!("{:.2}", med[1] / med[0])
            } else {
                String::new()
            };
            let batch = if kind == TransportKind::Netlink {
                format!("{:.1}", peak as f64 / (1 << 20) as f64)
            } else {
                "-".into()
            };
            println!(
                "| {n} | {} (child processes seen: {kids}) | {} | {} | {} | {batch} | {ratio} |",
                kind.as_str(),
                stats(&wall),
                stats(&user),
                stats(&sys)
            );
        }
        if i + 1 == sizes.len() && changes > 0 {
            for &kind in &kinds {
                let ns = Ns::new()?;
                let mut b = NftablesBackend::in_netns(ns.name()).transport(kind);
                b.sync(&g, None)
                    .map_err(|e| anyhow::anyhow!("{kind:?} at {n}: {e}"))?;
                let mut c = cluster.clone();
                let mut prev = g.clone();
                let mut wall = Vec::new();
                let mut cpu_ms = Vec::new();
                for k in 0..changes {
                    c.change_endpoint(k * 7 + 1).context("change")?;
                    let next = c.graph(ProxyMode::Nftables)?;
                    let cs = ChangeSet::between(&prev, &next);
                    let t = Instant::now();
                    let c0 = cpu();
                    b.sync(&next, Some(&cs))
                        .map_err(|e| anyhow::anyhow!("{kind:?} change at {n}: {e}"))?;
                    wall.push(t.elapsed().as_secs_f64() * 1000.0);
                    let c1 = cpu();
                    cpu_ms.push((c1.0 - c0.0 + c1.1 - c0.1) * 1000.0);
                    prev = next;
                }
                change_lines.push(format!(
                    "| {n} | {} | {} | {} |",
                    kind.as_str(),
                    stats(&wall),
                    stats(&cpu_ms)
                ));
            }
        }
    }
    if !change_lines.is_empty() {
        println!();
        println!(
            "| Services | transport | one endpoint change, Backend::sync ms, median (min, max) | user + system CPU ms |"
        );
        println!("|---:|---|---|---|");
        for l in change_lines {
            println!("{l}");
        }
    }
    Ok(())
}
