//! Benchmark of the nftables backend against kube-proxy's nftables layout,
//! on this machine, in the same run, in empty network namespaces.
//!
//! ```text
//! cargo run --release -p kproxy-bench --bin nftables-bench -- \
//!     [--sizes 1000,10000,50000] [--kube-proxy-sizes 1000,10000] \
//!     [--kube-proxy-135-sizes 1000] \
//!     [--endpoints 10] [--reps 3] [--changes 7]
//! ```
//!
//! Needs root (network namespaces). Every measurement runs in a fresh
//! child process (so peak memory is per case): the child prints one line,
//! the parent reports medians with min and max. Measured:
//! - `gen`: generation + rendering of the full ruleset (no kernel);
//! - `full`: a full sync through `NftablesBackend` into an empty namespace
//!   (generate, render, `nft -f`), then `--changes` single-endpoint changes
//!   as incremental syncs; peak RSS of this process and of the largest
//!   `nft` it ran;
//! - `kube`: kube-proxy v1.36's layout for the same cluster (a chain per
//!   service whose rule DNATs through an anonymous `numgen` map, one
//!   `service-ips` element per service) in one `nft -f` transaction;
//!   `kube135` the v1.33-v1.35 layout (endpoint chains), both from
//!   [`kproxy_bench::kpnft`].
//!
//! The cluster is `kproxy-bench`'s seeded generator in its uniform
//! ClusterIP form ([`Params::only`]).

#![allow(
    clippy::disallowed_methods,
    reason = "test code: starts the binary under test, `ip netns` and shells itself"
)]
#![allow(clippy::unwrap_used, reason = "a benchmark program, failures abort it")]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use kproxy_bench::kpnft::{Layout, render_layout};
use kproxy_bench::synth::{Cluster, Params};
use kproxy_bench::sys::Ns;
use kproxy_graph::{Backend, ChangeSet, Generator, ProxyMode, Render};
use kproxy_nftables::{NftGenerator, NftablesBackend};

/// CPU seconds (user + system) used so far by this process and by its
/// waited-for children: the work done, which a busy machine inflates far
/// less than wall time.
fn cpu_secs() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    let secs = |who| {
        getrusage(who)
            .map(|u| {
                let t =
                    |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
                t(u.user_time()) + t(u.system_time())
            })
            .unwrap_or(0.0)
    };
    secs(UsageWho::RUSAGE_SELF) + secs(UsageWho::RUSAGE_CHILDREN)
}

fn self_peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Peak RSS of the `nft` processes this process runs, sampled from /proc
/// every 5 ms by a thread (getrusage's RUSAGE_CHILDREN would count
/// the parent's pages shared with a freshly spawned child). `VmHWM` is the
/// process's own high-water mark, so a sample shortly before exit sees the
/// peak.
struct NftPeak {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl NftPeak {
    fn start() -> NftPeak {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let me = std::process::id().to_string();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                // Only this process's children (cheap; scanning all of
                // /proc every few ms would itself slow the benchmark).
                let children = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
                    .unwrap_or_default();
                for pid in children.split_whitespace() {
                    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                        continue;
                    };
                    let get = |k: &str| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(k))
                            .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
                    };
                    if get("Name:").as_deref() == Some("nft")
                        && get("PPid:").as_deref() == Some(&me)
                    {
                        let hwm: u64 = get("VmHWM:").and_then(|v| v.parse().ok()).unwrap_or(0);
                        p.fetch_max(hwm, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        NftPeak { peak, stop }
    }

    fn finish(self) -> u64 {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        self.peak.load(Ordering::Relaxed)
    }
}

/// The uniform cluster: `n` ClusterIP Services x `e` endpoints (the
/// bench's seeded generator, seed 1).
fn cluster(n: usize, e: usize) -> Cluster {
    Cluster::generate(Params {
        only: Some("ClusterIP"),
        ..Params::sized(n, e)
    })
    .unwrap()
}

fn nft_apply(ns: &str, text: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft -f failed");
}

/// One measurement, in this (child) process. Prints `key=value` pairs.
fn run_case(kind: &str, n: usize, e: usize, changes: usize) {
    let mut c = cluster(n, e);
    let g = c.graph(ProxyMode::Nftables).unwrap();
    match kind {
        "text" => {
            // The full ruleset, for experiments by hand.
            print!("{}", NftGenerator.generate(&g).unwrap().render());
        }
        "gen" => {
            let graph_kib = self_peak_kib();
            let cpu0 = cpu_secs();
            let t = Instant::now();
            let ruleset = NftGenerator.generate(&g).unwrap();
            let gen_secs = t.elapsed().as_secs_f64();
            let after_gen_kib = self_peak_kib();
            let text = ruleset.render();
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "generate {gen_secs:.3}s (peak {after_gen_kib} KiB), render {:.3}s",
                secs - gen_secs
            );
            let cpu = cpu_secs() - cpu0;
            println!(
                "secs={secs} cpu={cpu} bytes={} graph_kib={graph_kib} self_kib={}",
                text.len(),
                self_peak_kib()
            );
        }
        "full" => {
            let ns = Ns::new().unwrap();
            // Enter the namespace (this thread; `nft` children inherit it)
            // and run `nft` directly, as the daemon does on a node, rather
            // than through `ip netns exec`.
            let f = std::fs::File::open(format!("/var/run/netns/{}", ns.name())).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut be = NftablesBackend::new();
            let graph_kib = self_peak_kib();
            let mon = NftPeak::start();
            let cpu0 = cpu_secs();
            let t = Instant::now();
            let stats = be.sync(&g, None).unwrap();
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_secs() - cpu0;
            let (self_kib, nft_kib) = (self_peak_kib(), mon.finish());
            let mut prev = g;
            let mut change_secs = Vec::new();
            for k in 0..changes {
                c.change_endpoint((k * 7919) % n).unwrap();
                let next = c.graph(ProxyMode::Nftables).unwrap();
                let cs = ChangeSet::between(&prev, &next);
                let t = Instant::now();
                let st = be.sync(&next, Some(&cs)).unwrap();
                change_secs.push(t.elapsed().as_secs_f64());
                assert!(!st.full);
                prev = next;
            }
            // A periodic full resync with nothing changed: a diff against
            // the applied state when the ruleset exceeds one transaction.
            let t = Instant::now();
            let st = be.sync(&prev, None).unwrap();
            let resync_secs = t.elapsed().as_secs_f64();
            assert!(st.full);
            let cs: Vec<String> = change_secs.iter().map(|s| s.to_string()).collect();
            println!(
                "secs={secs} cpu={cpu} bytes={} graph_kib={graph_kib} self_kib={self_kib} nft_kib={nft_kib} resync={resync_secs} changes={}",
                stats.bytes_written,
                cs.join(",")
            );
        }
        "kube" | "kube135" => {
            let layout = if kind == "kube135" {
                Layout::EndpointChains
            } else {
                Layout::DnatMap
            };
            let text = render_layout(&g, layout);
            let ns = Ns::new().unwrap();
            let mon = NftPeak::start();
            let cpu0 = cpu_secs();
            let t = Instant::now();
            nft_apply(ns.name(), &text);
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_secs() - cpu0;
            println!(
                "secs={secs} cpu={cpu} bytes={} nft_kib={}",
                text.len(),
                mon.finish()
            );
        }
        _ => panic!("unknown case {kind}"),
    }
}

fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(String::from))
}

fn median_min_max(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    let fmt = |s: f64| {
        if s < 1.0 {
            format!("{:.1} ms", s * 1e3)
        } else {
            format!("{s:.2} s")
        }
    };
    format!(
        "{} (min {}, max {}, n={})",
        fmt(med),
        fmt(v[0]),
        fmt(v[v.len() - 1]),
        v.len()
    )
}

fn median(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v[v.len() / 2];
    if m < 1.0 {
        format!("{:.1} ms", m * 1e3)
    } else {
        format!("{m:.2} s")
    }
}

fn child(kind: &str, n: usize, e: usize, changes: usize) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "case",
            kind,
            &n.to_string(),
            &e.to_string(),
            &changes.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "case {kind} {n}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn list(args: &[String], flag: &str, default: &[usize]) -> Vec<usize> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("case") {
        let num = |i: usize| args[i].parse::<usize>().unwrap();
        run_case(&args[2], num(3), num(4), num(5));
        return;
    }
    let sizes = list(&args, "--sizes", &[1000, 10_000, 50_000]);
    let kube_sizes = list(&args, "--kube-proxy-sizes", &[1000, 10_000]);
    // The older layout is quadratic with a steep constant (and makes the
    // kernel report soft lockups at 10,000 services): 1,000 by default.
    let kube135_sizes = list(&args, "--kube-proxy-135-sizes", &[1000]);
    let e = list(&args, "--endpoints", &[10])[0];
    let reps = list(&args, "--reps", &[3])[0];
    let changes = list(&args, "--changes", &[7])[0];
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# nftables backend benchmark: {e} endpoints per service, {reps} runs per case; {} CPUs, load average at start {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| case | services | wall time: median (min, max) | CPU time (median) | peak RSS kproxy (graph alone) | peak RSS nft |"
    );
    println!("|---|---:|---|---:|---:|---:|");
    for &n in &sizes {
        let (mut gen_secs, mut gen_cpu) = (Vec::new(), Vec::new());
        let (mut gen_kib, mut graph_kib) = (0u64, 0u64);
        for _ in 0..reps {
            let l = child("gen", n, e, 0);
            gen_secs.push(field(&l, "secs").unwrap().parse().unwrap());
            gen_cpu.push(field(&l, "cpu").unwrap().parse().unwrap());
            gen_kib = gen_kib.max(field(&l, "self_kib").unwrap().parse().unwrap());
            graph_kib = graph_kib.max(field(&l, "graph_kib").unwrap().parse().unwrap());
        }
        println!(
            "| generate + render | {n} | {} | {} | {} MiB ({} MiB) | - |",
            median_min_max(gen_secs),
            median(gen_cpu),
            gen_kib / 1024,
            graph_kib / 1024
        );
        let (mut full, mut change) = (Vec::new(), Vec::new());
        let (mut own, mut nft, mut graph_kib) = (0u64, 0u64, 0u64);
        let (mut resync, mut full_cpu) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let l = child("full", n, e, changes);
            full.push(field(&l, "secs").unwrap().parse().unwrap());
            full_cpu.push(field(&l, "cpu").unwrap().parse().unwrap());
            own = own.max(field(&l, "self_kib").unwrap().parse().unwrap());
            graph_kib = graph_kib.max(field(&l, "graph_kib").unwrap().parse().unwrap());
            resync.push(field(&l, "resync").unwrap().parse().unwrap());
            nft = nft.max(field(&l, "nft_kib").unwrap().parse().unwrap());
            change.extend(
                field(&l, "changes")
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|s| s.parse::<f64>().ok()),
            );
        }
        println!(
            "| full sync (kproxy layout) | {n} | {} | {} | {} MiB ({} MiB) | {} MiB |",
            median_min_max(full),
            median(full_cpu),
            own / 1024,
            graph_kib / 1024,
            nft / 1024
        );
        println!(
            "| one endpoint change (incremental) | {n} | {} | - | - | - |",
            median_min_max(change)
        );
        println!(
            "| full resync, nothing changed | {n} | {} | - | - | - |",
            median_min_max(resync)
        );
    }
    for (kind, label, ns) in [
        ("kube", "kube-proxy v1.36 layout", &kube_sizes),
        ("kube135", "kube-proxy v1.33-1.35 layout", &kube135_sizes),
    ] {
        for &n in ns {
            let runs = if n >= 10_000 { 1 } else { reps };
            let (mut secs, mut cpu) = (Vec::new(), Vec::new());
            let mut nft = 0u64;
            for _ in 0..runs {
                let l = child(kind, n, e, 0);
                secs.push(field(&l, "secs").unwrap().parse().unwrap());
                cpu.push(field(&l, "cpu").unwrap().parse().unwrap());
                nft = nft.max(field(&l, "nft_kib").unwrap().parse().unwrap());
            }
            println!(
                "| full load ({label}, one nft -f) | {n} | {} | {} | - | {} MiB |",
                median_min_max(secs),
                median(cpu),
                nft / 1024
            );
        }
    }
}
