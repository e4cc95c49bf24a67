//! The cost of bringing the service graph up to date after one endpoint
//! change, the daemon's old way (copy every object, rebuild the whole
//! graph, diff) against [`IncrementalGraph`] (rebuild the one Service).
//!
//! `cargo run --release -p kproxy-graph --example graph_update -- [SERVICES...] [--reps N]`
//! (default 10000 50000, 30 repeats). Prints median (min-max) per size.
//! `--memory full|incremental` instead prints the resident memory of one
//! way of holding the graph (run each in its own process).

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_graph::{ChangeSet, IncrementalGraph, Objects, ProxyConfig, ProxyMode, ServiceGraph};
use serde_json::json;

const NODE: &str = "node-0";

/// `n` Services with 10 endpoints each: a tenth NodePort, a tenth with a
/// second (UDP) port, endpoints spread over 100 nodes.
fn cluster(n: usize) -> Objects {
    let mut o = Objects::default();
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "z0"}},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.10"}]}
    }))
    .expect("node");
    o.nodes.push(node);
    let mut pod = 0u32;
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(0x0a60_0000u32 + i as u32 + 1);
        let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP"})];
        if i % 10 == 3 {
            ports.push(json!({"name": "dns", "port": 53, "protocol": "UDP"}));
        }
        let type_ = if i % 10 == 5 { "NodePort" } else { "ClusterIP" };
        if type_ == "NodePort" {
            ports[0]["nodePort"] = json!(30000 + (i % 2700));
        }
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 100)},
            "spec": {"type": type_, "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()], "ports": ports}
        }))
        .expect("service");
        o.services.push(svc);
        o.endpoint_slices.push(slice(i, &mut pod));
    }
    o
}

fn slice(i: usize, pod: &mut u32) -> EndpointSlice {
    let eps: Vec<_> = (0..10)
        .map(|_| {
            *pod += 1;
            let ip = std::net::Ipv4Addr::from(0x0a01_0000u32 + *pod);
            json!({"addresses": [ip.to_string()], "conditions": {"ready": true},
                   "nodeName": format!("node-{}", *pod % 100), "zone": format!("z{}", *pod % 3)})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": format!("ns-{}", i % 100),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]
    }))
    .expect("slice")
}

/// Resident memory now, MiB (Linux).
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

fn stats(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let med = v[v.len() / 2];
    format!(
        "{:.3} ms ({:.3}-{:.3}, n={})",
        med * 1e3,
        v[0] * 1e3,
        v[v.len() - 1] * 1e3,
        v.len()
    )
}

fn main() {
    let mut sizes = Vec::new();
    let mut reps = 30usize;
    let mut memory: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--memory" {
            memory = args.next();
        } else if a == "--reps" {
            reps = args.next().and_then(|r| r.parse().ok()).unwrap_or(reps);
        } else if let Ok(n) = a.parse() {
            sizes.push(n);
        }
    }
    if sizes.is_empty() {
        sizes = vec![10_000, 50_000];
    }
    let config = ProxyConfig {
        node_name: NODE.into(),
        mode: ProxyMode::Nftables,
        families: vec![kproxy_graph::IpFamily::V4],
        ..ProxyConfig::default()
    };
    if let Some(how) = memory {
        // Resident memory of one way of holding the graph, in a fresh
        // process: `--memory full` (objects + ServiceGraph::build) or
        // `--memory incremental` (objects moved into an IncrementalGraph).
        for n in sizes {
            let objects = cluster(n);
            let before = rss_mib();
            let t = Instant::now();
            let held: Box<dyn std::any::Any> = if how == "full" {
                let g = ServiceGraph::build(&objects, &config);
                Box::new((objects, g))
            } else {
                let mut inc = IncrementalGraph::new(config.clone());
                inc.replace_all(objects);
                inc.update();
                Box::new(inc)
            };
            println!(
                "{n} Services, {how}: objects {before:.0} MiB, with the graph {:.0} MiB, built in {:.0} ms",
                rss_mib(),
                t.elapsed().as_secs_f64() * 1e3
            );
            drop(held);
        }
        return;
    }
    for n in sizes {
        let mut objects = cluster(n);
        let mut pod = 10_000_000u32;

        // The old way: snapshot copy + full build + ChangeSet::between.
        let mut prev = ServiceGraph::build(&objects, &config);
        let mut old = Vec::new();
        for r in 0..reps.min(10) {
            let i = (r * 7919 + 1) % n;
            objects.endpoint_slices[i] = slice(i, &mut pod);
            let t = Instant::now();
            let snapshot = objects.clone();
            let next = ServiceGraph::build(&snapshot, &config);
            let cs = ChangeSet::between(&prev, &next);
            old.push(t.elapsed().as_secs_f64());
            assert!(!cs.family(kproxy_graph::IpFamily::V4).changed.is_empty());
            prev = next;
        }
        drop(prev);

        // The incremental way.
        let t = Instant::now();
        let mut inc = IncrementalGraph::new(config.clone());
        inc.replace_all(std::mem::take(&mut objects));
        inc.update();
        let first = t.elapsed().as_secs_f64();
        let mut new = Vec::new();
        for r in 0..reps {
            let i = (r * 7919 + 1) % n;
            let s = Arc::new(slice(i, &mut pod));
            let t = Instant::now();
            inc.upsert_slice(s);
            let up = inc.update();
            new.push(t.elapsed().as_secs_f64());
            assert_eq!(up.rebuilt, 1);
            assert!(
                !up.changes
                    .family(kproxy_graph::IpFamily::V4)
                    .changed
                    .is_empty()
            );
        }
        println!("{n} Services x 10 endpoints:");
        println!(
            "  copy + full build + diff (old daemon path): {}",
            stats(old)
        );
        println!("  incremental: first build {:.3} ms", first * 1e3);
        println!(
            "  incremental: upsert one slice + update:     {}",
            stats(new)
        );
    }
}
