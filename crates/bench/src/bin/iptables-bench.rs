//! Benchmark (not a test): generation + rendering of kube-proxy's iptables
//! rules for a large cluster, the size of a partial sync after one
//! endpoint change, and optionally (`--apply`, needs root) the backends'
//! real syncs with `iptables-legacy-restore` and `iptables-nft-restore`
//! inside a throw-away network namespace (first full sync, full sync over
//! an unchanged node, partial syncs after one endpoint change, one service
//! removed, one service added).
//!
//! ```text
//! cargo run --release -p kproxy-bench --bin iptables-bench -- [SERVICES] [ENDPOINTS] [--apply [--nft-only|--legacy-only] [--reps N] [--no-full]] [--write DIR]
//! ```

#![allow(
    clippy::disallowed_methods,
    reason = "test code: starts the binary under test, `ip netns` and shells itself"
)]

use std::process::Command;
use std::time::{Duration, Instant};

use kproxy_bench::synth::{Cluster, Params};
use kproxy_graph::Backend;
use kproxy_graph::{ChangeSet, IpFamily, ProxyMode, Render, ServiceGraph};
use kproxy_iptables::plan_partial;
use kproxy_iptables::{
    Flavour, GenOptions, IptablesBackend, RestorePlan, generate, generate_reusing, render_restore,
};

/// `services` NodePort Services x `endpoints` endpoints (the bench's
/// seeded generator in its uniform form, seed 1); with `changed`, the
/// first endpoint of that Service replaced by a new pod.
fn cluster(services: usize, endpoints: usize, changed: Option<usize>) -> ServiceGraph {
    let mut c = Cluster::generate(Params {
        only: Some("NodePort"),
        ..Params::sized(services, endpoints)
    })
    .expect("synthetic cluster");
    if let Some(i) = changed {
        c.change_endpoint(i).expect("change an endpoint");
    }
    c.graph(ProxyMode::Iptables).expect("graph")
}

/// CPU time this thread has run (from /proc/thread-self/schedstat, in
/// ns): on a loaded machine wall-clock time mostly measures the neighbours.
fn cpu_now() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.1} ms, min {:.1} ms, max {:.1} ms (n={})",
        ms(v[v.len() / 2]),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let services = nums.first().copied().unwrap_or(10_000);
    let endpoints = nums.get(1).copied().unwrap_or(10);
    let apply = args.iter().any(|a| a == "--apply");

    let t = Instant::now();
    let g = cluster(services, endpoints, None);
    println!(
        "graph: {services} services x {endpoints} endpoints built in {:.0} ms (intake, not measured below)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let opts = GenOptions::default();
    let (mut gen_t, mut render_t, mut both_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gen_c, mut render_c, mut both_c) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    let mut rules = 0;
    for _ in 0..11 {
        let (c0, t0) = (cpu_now(), Instant::now());
        let rs = generate(&g, &opts);
        let (c1, t1) = (cpu_now(), Instant::now());
        let text = rs.render();
        let (c2, t2) = (cpu_now(), Instant::now());
        gen_t.push(t1 - t0);
        render_t.push(t2 - t1);
        both_t.push(t2 - t0);
        gen_c.push(c1 - c0);
        render_c.push(c2 - c1);
        both_c.push(c2 - c0);
        bytes = text.len();
        rules = rs.families.iter().map(|f| f.rule_count()).sum();
    }
    println!(
        "rules: {rules}, restore input: {:.1} MiB",
        bytes as f64 / 1048576.0
    );
    println!("wall generate:          {}", stats(gen_t));
    println!("wall render:            {}", stats(render_t));
    println!("wall generate + render: {}", stats(both_t));
    println!("cpu  generate:          {}", stats(gen_c));
    println!("cpu  render:            {}", stats(render_c));
    println!("cpu  generate + render: {}", stats(both_c));

    // One endpoint of one service changes: what a partial sync writes.
    let g2 = cluster(services, endpoints, Some(services / 2));
    let changes = ChangeSet::between(&g, &g2);
    let (r1, r2) = (generate(&g, &opts), generate(&g2, &opts));
    let (f1, f2) = (
        r1.family(IpFamily::V4).expect("v4"),
        r2.family(IpFamily::V4).expect("v4"),
    );
    let plan = plan_partial(f1, f2, &changes.family(IpFamily::V4));
    let (partial, written) = render_restore(f2, &plan);
    // What a partial sync costs kproxy before the loader runs: the IR
    // (unchanged services' chains moved from the previous one, as the
    // backend does; or generated whole, as kube-proxy does), diffed
    // against the previous IR and rendered.
    for reuse in [true, false] {
        let (mut prep_t, mut prep_c) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let mut prev = r1.clone();
            let fc = changes.family(IpFamily::V4);
            let (c0, t0) = (cpu_now(), Instant::now());
            let rs = if reuse {
                generate_reusing(&g2, &opts, &mut prev, &changes)
            } else {
                generate(&g2, &opts)
            };
            let f = rs.family(IpFamily::V4).expect("v4");
            let pf = prev.family(IpFamily::V4).expect("v4");
            let p = plan_partial(pf, f, &fc);
            let _ = render_restore(f, &p);
            prep_c.push(cpu_now() - c0);
            prep_t.push(t0.elapsed());
            drop(rs);
        }
        let how = if reuse {
            "reuse + diff + render"
        } else {
            "generate + diff + render"
        };
        println!(
            "wall partial sync before the loader ({how}): {}",
            stats(prep_t)
        );
        println!(
            "cpu  partial sync before the loader ({how}): {}",
            stats(prep_c)
        );
    }
    let (full, full_written) = render_restore(f2, &RestorePlan::full());
    println!(
        "partial sync after one endpoint change: {written} rules, {} bytes (full: {full_written} rules, {} bytes)",
        partial.len(),
        full.len()
    );
    if let Some(i) = args.iter().position(|a| a == "--write") {
        let dir = args.get(i + 1).map(String::as_str).unwrap_or(".");
        let _ = std::fs::write(format!("{dir}/full.rules"), &full);
        let _ = std::fs::write(format!("{dir}/partial.rules"), &partial);
        // The way back, and both directions as kube-proxy writes them
        // (top-level chains rewritten every time), for timing the loaders
        // on the same kernel state.
        let back_plan = plan_partial(f2, f1, &ChangeSet::between(&g2, &g).family(IpFamily::V4));
        let _ = std::fs::write(
            format!("{dir}/partial-back.rules"),
            render_restore(f1, &back_plan).0,
        );
        let kube_proxy_style = |p: &RestorePlan| RestorePlan {
            dirty: p.dirty.clone(),
            insert: p.insert.clone(),
            delete: p.delete.clone(),
            ..RestorePlan::default()
        };
        let _ = std::fs::write(
            format!("{dir}/partial-kp.rules"),
            render_restore(f2, &kube_proxy_style(&plan)).0,
        );
        let _ = std::fs::write(
            format!("{dir}/partial-kp-back.rules"),
            render_restore(f1, &kube_proxy_style(&back_plan)).0,
        );
    }
    if apply {
        let flavours: Vec<Flavour> = if args.iter().any(|a| a == "--nft-only") {
            vec![Flavour::Nft]
        } else if args.iter().any(|a| a == "--legacy-only") {
            vec![Flavour::Legacy]
        } else {
            vec![Flavour::Legacy, Flavour::Nft]
        };
        let reps = args
            .iter()
            .position(|a| a == "--reps")
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(6);
        // The same cluster without its last service: one service removed
        // (and, going back, added).
        let g3 = cluster(services - 1, endpoints, None);
        apply_bench(
            &g,
            &g2,
            &g3,
            &flavours,
            reps,
            !args.iter().any(|a| a == "--no-full"),
        );
    }
}

fn apply_bench(
    g: &ServiceGraph,
    g2: &ServiceGraph,
    g3: &ServiceGraph,
    flavours: &[Flavour],
    reps: usize,
    with_full: bool,
) {
    let ns = format!("kpi-bench-{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip netns add failed (needs root)");
    let there = ChangeSet::between(g, g2);
    let back = ChangeSet::between(g2, g);
    let remove = ChangeSet::between(g, g3);
    let readd = ChangeSet::between(g3, g);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for &flavour in flavours {
        let mut be = IptablesBackend::in_netns(flavour, &ns);
        let t0 = Instant::now();
        let s = be.sync(g, None).expect("first sync");
        println!(
            "{flavour:?} first full sync (empty node): {:.1} ms, {} rules written",
            ms(t0.elapsed()),
            s.rules_written
        );
        let (mut full, mut partial, mut rm, mut add) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut written = (0, 0, 0, 0);
        let (mut floor, mut floor_ok) = (Vec::new(), true);
        for _ in 0..reps {
            if with_full {
                let t0 = Instant::now();
                let s = be.sync(g, None).expect("full sync");
                full.push(t0.elapsed());
                written.0 = s.rules_written;
            }
            // There and back: both are real one-endpoint changes.
            for (target, c) in [(g2, &there), (g, &back)] {
                let t0 = Instant::now();
                let s = be.sync(target, Some(c)).expect("partial sync");
                partial.push(t0.elapsed());
                written.1 = s.rules_written;
            }
            let t0 = Instant::now();
            let s = be.sync(g3, Some(&remove)).expect("remove");
            rm.push(t0.elapsed());
            written.2 = s.rules_written;
            let t0 = Instant::now();
            let s = be.sync(g, Some(&readd)).expect("add");
            add.push(t0.elapsed());
            written.3 = s.rules_written;
            // The kernel's floor: one new, unreferenced one-rule chain in
            // the nat table, in its own restore (then removed).
            let t = be.transport();
            let t0 = Instant::now();
            floor_ok &= t
                .apply_text(
                    IpFamily::V4,
                    "*nat\n:KPI-FLOOR - [0:0]\n-A KPI-FLOOR -j RETURN\nCOMMIT\n",
                )
                .is_ok();
            floor.push(t0.elapsed());
            floor_ok &= t
                .apply_text(
                    IpFamily::V4,
                    "*nat\n:KPI-FLOOR - [0:0]\n-X KPI-FLOOR\nCOMMIT\n",
                )
                .is_ok();
        }
        assert!(floor_ok, "floor restores failed");
        println!(
            "{flavour:?} loader floor, one new one-rule chain in nat: {}",
            stats(floor)
        );
        if with_full {
            println!(
                "{flavour:?} full sync, unchanged node ({} rules written): {}",
                written.0,
                stats(full)
            );
        }
        println!(
            "{flavour:?} partial sync, one endpoint changed ({} rules written): {}",
            written.1,
            stats(partial)
        );
        println!(
            "{flavour:?} partial sync, one service removed ({} rules written): {}",
            written.2,
            stats(rm)
        );
        println!(
            "{flavour:?} partial sync, one service added ({} rules written): {}",
            written.3,
            stats(add)
        );
        be.cleanup().expect("cleanup");
    }
    let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
}
