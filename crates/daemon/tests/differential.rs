//! Differential test of the incremental path on every backend: random
//! sequences of changes are fed to an [`IncrementalGraph`] and applied with
//! `Backend::sync` as the daemon's reconciler drives them (a full sync
//! first, then the graph's `ChangeSet` after every batch), and after every
//! step the kernel is compared with a fresh full load of the same objects
//! in a second network namespace.
//!
//! The changes are chosen to collide: Services share ExternalIPs,
//! LoadBalancer IPs and NodePorts, an ExternalIP may equal another
//! Service's ClusterIP, pods back several Services, and ClientIP affinity,
//! UDP, `externalTrafficPolicy: Local`, source ranges, endpoint churn and
//! Service adds and deletes are mixed in.
//!
//! What is normalised, and why (everything else must be equal):
//! - nftables: rule and object handles (allocation order differs between a
//!   load and a sequence of transactions); the `sync-generation` element
//!   (each sync writes the next generation); the elements of the `affinity`
//!   set (filled by packets, not by kproxy); counter values; the order of
//!   set elements (a listing prints them in hash order); `tcp dport` versus
//!   `th dport` in a data map's type (nft prints either depending on
//!   whether the map came from its cache; the kernel's bytecode is the
//!   same); and chains with no rules, which an incremental sync flushes and
//!   deletes one sync later ("flush now, delete later",
//!   docs/backends/nftables.md) while a full load never writes them.
//! - iptables: `iptables-save`'s comment lines and chain counters, and the
//!   order of chains (rules keep their order within each chain).
//!
//! `KPROXY_DIFFERENTIAL_SEEDS=N` runs seeds 1..=N (default 10 per backend);
//! `KPROXY_DIFFERENTIAL_SEED=S` runs seed S alone (to reproduce a failure);
//! `KPROXY_DIFFERENTIAL_STEPS=N` sets the steps per seed (default 14).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy_graph::{Backend, IncrementalGraph, Objects, ProxyConfig, ProxyMode, ServiceGraph};
use kproxy_testkit::rand::rngs::StdRng;
use kproxy_testkit::rand::{RngExt, SeedableRng};
use kproxy_testkit::{NetNs, line_diff};
use serde_json::{Value, json};

/// Service slots: few enough that keys collide often.
const SLOTS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

#[derive(Debug, Clone)]
struct Port {
    name: &'static str,
    port: u16,
    proto: &'static str,
    node_port: Option<u16>,
}

#[derive(Debug, Clone)]
struct Ep {
    ip: String,
    node: &'static str,
    ready: bool,
}

#[derive(Debug, Clone)]
struct Svc {
    slot: usize,
    kind: Kind,
    ports: Vec<Port>,
    external_ips: Vec<String>,
    lb_ips: Vec<String>,
    source_ranges: Vec<&'static str>,
    affinity: Option<u32>,
    etp_local: bool,
    itp_local: bool,
    endpoints: Vec<Ep>,
}

fn cluster_ip(slot: usize) -> String {
    format!("172.30.0.{}", 10 + slot)
}

fn name(slot: usize) -> String {
    format!("svc-{slot}")
}

fn namespace(slot: usize) -> &'static str {
    if slot.is_multiple_of(2) {
        "ns-a"
    } else {
        "ns-b"
    }
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn random_ports(rng: &mut StdRng, kind: Kind) -> Vec<Port> {
    let n = if rng.random_bool(0.3) { 2 } else { 1 };
    (0..n)
        .map(|i| Port {
            name: ["http", "https"][i],
            port: [80, 443][i],
            proto: if rng.random_bool(0.25) { "UDP" } else { "TCP" },
            node_port: (kind != Kind::ClusterIp).then(|| pick(rng, &[30001, 30002, 30003])),
        })
        .collect()
}

fn random_external_ips(rng: &mut StdRng, slot: usize) -> Vec<String> {
    let other = (slot + rng.random_range(1..SLOTS)) % SLOTS;
    let mut out = Vec::new();
    for ip in [
        "192.168.99.1".to_string(),
        "192.168.99.2".to_string(),
        cluster_ip(other),
    ] {
        if rng.random_bool(0.3) {
            out.push(ip);
        }
    }
    out
}

fn random_lb(rng: &mut StdRng, svc: &mut Svc) {
    svc.lb_ips.clear();
    svc.source_ranges.clear();
    if svc.kind != Kind::LoadBalancer {
        return;
    }
    for ip in ["5.6.7.8", "5.6.7.9"] {
        if rng.random_bool(0.6) {
            svc.lb_ips.push(ip.to_string());
        }
    }
    svc.source_ranges = match rng.random_range(0..4) {
        0 => vec![],
        1 => vec!["203.0.113.0/25"],
        // Contains the node's IP: the LB IPs are allowed too.
        2 => vec!["192.168.0.0/24"],
        _ => vec!["203.0.113.0/25", "198.51.100.0/24"],
    };
}

fn random_endpoint(rng: &mut StdRng) -> Ep {
    Ep {
        // A small shared pool: pods back several Services (hairpin keys).
        ip: format!("10.180.0.{}", rng.random_range(1..7)),
        node: pick(rng, &["test-node", "node-2"]),
        ready: rng.random_bool(0.85),
    }
}

fn add_endpoint(rng: &mut StdRng, svc: &mut Svc) {
    let ep = random_endpoint(rng);
    if !svc.endpoints.iter().any(|e| e.ip == ep.ip) {
        svc.endpoints.push(ep);
    }
}

fn random_service(rng: &mut StdRng, slot: usize) -> Svc {
    let kind = pick(rng, &[Kind::ClusterIp, Kind::NodePort, Kind::LoadBalancer]);
    let mut svc = Svc {
        slot,
        kind,
        ports: random_ports(rng, kind),
        external_ips: random_external_ips(rng, slot),
        lb_ips: vec![],
        source_ranges: vec![],
        affinity: rng.random_bool(0.25).then(|| pick(rng, &[60, 300, 10800])),
        etp_local: kind != Kind::ClusterIp && rng.random_bool(0.35),
        itp_local: rng.random_bool(0.1),
        endpoints: vec![],
    };
    random_lb(rng, &mut svc);
    for _ in 0..rng.random_range(0..4) {
        add_endpoint(rng, &mut svc);
    }
    svc
}

impl Svc {
    fn service(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({"name": p.name, "port": p.port, "protocol": p.proto, "targetPort": p.port});
                if let Some(np) = p.node_port {
                    v["nodePort"] = json!(np);
                }
                v
            })
            .collect();
        let ty = match self.kind {
            Kind::ClusterIp => "ClusterIP",
            Kind::NodePort => "NodePort",
            Kind::LoadBalancer => "LoadBalancer",
        };
        let mut spec = json!({
            "type": ty,
            "clusterIP": cluster_ip(self.slot),
            "clusterIPs": [cluster_ip(self.slot)],
            "ipFamilies": ["IPv4"],
            "ports": ports,
            "externalIPs": self.external_ips,
            "loadBalancerSourceRanges": self.source_ranges,
            "internalTrafficPolicy": if self.itp_local { "Local" } else { "Cluster" },
        });
        if self.kind != Kind::ClusterIp {
            spec["externalTrafficPolicy"] = json!(if self.etp_local { "Local" } else { "Cluster" });
            if self.etp_local && self.kind == Kind::LoadBalancer {
                spec["healthCheckNodePort"] = json!(32000 + self.slot);
            }
        }
        if let Some(t) = self.affinity {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
        }
        let ingress: Vec<Value> = self.lb_ips.iter().map(|ip| json!({"ip": ip})).collect();
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name(self.slot), "namespace": namespace(self.slot)},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": ingress}},
        })
    }

    fn slice(&self) -> Value {
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "addresses": [e.ip],
                    "conditions": {"ready": e.ready, "serving": e.ready, "terminating": false},
                    "nodeName": e.node,
                })
            })
            .collect();
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "port": p.port, "protocol": p.proto}))
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "addressType": "IPv4",
            "metadata": {
                "name": format!("{}-abcde", name(self.slot)), "namespace": namespace(self.slot),
                "labels": {"kubernetes.io/service-name": name(self.slot)},
            },
            "ports": ports,
            "endpoints": endpoints,
        })
    }
}

fn node_object() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "test-node", "labels": {"kubernetes.io/hostname": "test-node"}},
        "spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24"]},
        "status": {"addresses": [{"address": "192.168.0.2", "type": "InternalIP"}]},
    })
}

fn config(mode: ProxyMode) -> ProxyConfig {
    ProxyConfig {
        node_name: "test-node".into(),
        mode,
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        service_cidrs: vec!["172.30.0.0/16".parse().unwrap()],
        ..ProxyConfig::default()
    }
}

/// One random batch of changes to the cluster; what it did, for messages.
fn mutate(rng: &mut StdRng, cluster: &mut BTreeMap<usize, Svc>) -> Vec<String> {
    let mut what = Vec::new();
    for _ in 0..rng.random_range(1..4) {
        let slot = rng.random_range(0..SLOTS);
        let Some(svc) = cluster.get_mut(&slot) else {
            cluster.insert(slot, random_service(rng, slot));
            what.push(format!("add {}", name(slot)));
            continue;
        };
        let n = name(slot);
        match rng.random_range(0..12) {
            0 => {
                cluster.remove(&slot);
                what.push(format!("delete {n}"));
            }
            1 => {
                *svc = random_service(rng, slot);
                what.push(format!("replace {n}"));
            }
            2 => {
                svc.external_ips = random_external_ips(rng, slot);
                what.push(format!("{n}: externalIPs {:?}", svc.external_ips));
            }
            3 => {
                random_lb(rng, svc);
                what.push(format!(
                    "{n}: LB IPs {:?} ranges {:?}",
                    svc.lb_ips, svc.source_ranges
                ));
            }
            4 => {
                for p in &mut svc.ports {
                    if p.node_port.is_some() {
                        p.node_port = Some(pick(rng, &[30001, 30002, 30003]));
                    }
                }
                what.push(format!("{n}: NodePorts changed"));
            }
            5 => {
                svc.affinity = match svc.affinity {
                    Some(_) => None,
                    None => Some(pick(rng, &[60, 300])),
                };
                what.push(format!("{n}: affinity {:?}", svc.affinity));
            }
            6 => {
                if svc.kind != Kind::ClusterIp {
                    svc.etp_local = !svc.etp_local;
                }
                what.push(format!("{n}: eTP Local {}", svc.etp_local));
            }
            7 => {
                let i = rng.random_range(0..svc.ports.len());
                let p = &mut svc.ports[i];
                p.proto = if p.proto == "TCP" { "UDP" } else { "TCP" };
                what.push(format!("{n}: port {} {}", p.port, p.proto));
            }
            8 | 9 => {
                add_endpoint(rng, svc);
                what.push(format!("{n}: endpoint added ({})", svc.endpoints.len()));
            }
            10 => {
                if !svc.endpoints.is_empty() {
                    let i = rng.random_range(0..svc.endpoints.len());
                    svc.endpoints.remove(i);
                }
                what.push(format!("{n}: endpoint removed ({})", svc.endpoints.len()));
            }
            _ => {
                for e in &mut svc.endpoints {
                    if rng.random_bool(0.5) {
                        e.ready = !e.ready;
                    }
                }
                what.push(format!("{n}: readiness flipped"));
            }
        }
    }
    what
}

/// Feed the cluster's objects to the incremental graph (the source's upserts
/// and deletes; unchanged objects are no-ops for the graph).
fn feed(g: &mut IncrementalGraph, cluster: &BTreeMap<usize, Svc>) {
    for slot in 0..SLOTS {
        match cluster.get(&slot) {
            Some(svc) => {
                let s: Service = serde_json::from_value(svc.service()).unwrap();
                let e: EndpointSlice = serde_json::from_value(svc.slice()).unwrap();
                g.upsert_service(Arc::new(s));
                g.upsert_slice(Arc::new(e));
            }
            None => {
                g.delete_service(namespace(slot), &name(slot));
                g.delete_slice(namespace(slot), &format!("{}-abcde", name(slot)));
            }
        }
    }
}

/// The graph a fresh start would build from the same objects.
fn fresh_graph(cluster: &BTreeMap<usize, Svc>, mode: ProxyMode) -> ServiceGraph {
    let mut objects = Objects::default();
    let mut warnings = Vec::new();
    objects.add_value(node_object(), &mut warnings);
    for svc in cluster.values() {
        objects.add_value(svc.service(), &mut warnings);
        objects.add_value(svc.slice(), &mut warnings);
    }
    ServiceGraph::build(&objects, &config(mode))
}

#[derive(Clone, Copy, Debug)]
enum Which {
    Nftables,
    IptablesNft,
    IptablesLegacy,
}

impl Which {
    fn mode(self) -> ProxyMode {
        match self {
            Which::Nftables => ProxyMode::Nftables,
            _ => ProxyMode::Iptables,
        }
    }

    fn backend(self, ns: &NetNs) -> Box<dyn Backend> {
        match self {
            Which::Nftables => Box::new(kproxy_nftables::NftablesBackend::in_netns(ns.name())),
            Which::IptablesNft => Box::new(kproxy_iptables::IptablesBackend::in_netns(
                kproxy_iptables::Flavour::Nft,
                ns.name(),
            )),
            Which::IptablesLegacy => Box::new(kproxy_iptables::IptablesBackend::in_netns(
                kproxy_iptables::Flavour::Legacy,
                ns.name(),
            )),
        }
    }

    /// The kernel's rules in `ns`, normalised (see the crate docs).
    fn listing(self, ns: &NetNs) -> String {
        match self {
            Which::Nftables => nft_listing(ns),
            Which::IptablesNft => iptables_listing(ns, "nft"),
            Which::IptablesLegacy => iptables_listing(ns, "legacy"),
        }
    }
}

fn nft_listing(ns: &NetNs) -> String {
    let mut out = String::new();
    for fam in ["ip", "ip6"] {
        let text = ns.exec(&["nft", "-j", "list", "table", fam, "kproxy"]);
        let v: Value = serde_json::from_str(&text).expect("nft -j output");
        let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut objects = Vec::new();
        for obj in v["nftables"].as_array().expect("nftables array") {
            let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            if kind == "metainfo" {
                continue;
            }
            let mut body = body.clone();
            let m = body.as_object_mut().expect("object");
            m.remove("handle");
            let name = m
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string();
            let elems = match m.remove("elem") {
                Some(Value::Array(e)) => e,
                _ => Vec::new(),
            };
            let text = body
                .to_string()
                .replace(
                    r#"{"field":"dport","protocol":"tcp"}"#,
                    r#"{"field":"dport","protocol":"th"}"#,
                )
                .replace(
                    r#"{"field":"dport","protocol":"udp"}"#,
                    r#"{"field":"dport","protocol":"th"}"#,
                )
                .replace(
                    r#"{"field":"dport","protocol":"sctp"}"#,
                    r#"{"field":"dport","protocol":"th"}"#,
                );
            if kind == "rule" {
                let chain = body["chain"].as_str().unwrap_or("").to_string();
                let text = counters_zeroed(&text);
                rules.entry(chain).or_default().push(text);
                continue;
            }
            objects.push((kind.clone(), name.clone(), text));
            if name != "sync-generation" && name != "affinity" {
                let mut elems: Vec<String> = elems.iter().map(|e| e.to_string()).collect();
                elems.sort();
                for e in elems {
                    objects.push(("element".into(), name.clone(), format!("{name} {e}")));
                }
            }
        }
        objects.sort();
        for (kind, name, text) in objects {
            // Chains with no rules: flushed by an incremental sync, deleted
            // by the next one.
            if kind == "chain" && !rules.contains_key(&name) && !text.contains("\"hook\"") {
                continue;
            }
            let _ = writeln!(out, "{fam} {kind} {text}");
        }
        for (chain, rs) in rules {
            for r in rs {
                let _ = writeln!(out, "{fam} rule {chain}: {r}");
            }
        }
    }
    out
}

fn counters_zeroed(text: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(text) else {
        return text.to_string();
    };
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(c)) = m.get_mut("counter") {
                    c.insert("packets".into(), json!(0));
                    c.insert("bytes".into(), json!(0));
                }
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v.to_string()
}

fn iptables_listing(ns: &NetNs, flavour: &str) -> String {
    let mut out = String::new();
    for tool in ["iptables", "ip6tables"] {
        let text = ns.exec_locked(&[&format!("{tool}-{flavour}-save")]);
        let mut table = String::new();
        let mut chains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let flush = |out: &mut String, table: &str, chains: &mut BTreeMap<String, Vec<String>>| {
            for (c, rules) in std::mem::take(chains) {
                let _ = writeln!(out, "{tool} {table} chain {c}");
                for r in rules {
                    let _ = writeln!(out, "{tool} {table} {r}");
                }
            }
        };
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() || line == "COMMIT" {
                continue;
            }
            if let Some(t) = line.strip_prefix('*') {
                flush(&mut out, &table, &mut chains);
                table = t.to_string();
            } else if let Some(decl) = line.strip_prefix(':') {
                // `:NAME POLICY [packets:bytes]`: the counters differ.
                let mut parts = decl.split_whitespace();
                let c = parts.next().unwrap_or("").to_string();
                let policy = parts.next().unwrap_or("-");
                chains.entry(format!("{c} {policy}")).or_default();
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let c = rest.split_whitespace().next().unwrap_or("");
                let key = chains
                    .keys()
                    .find(|k| k.split(' ').next() == Some(c))
                    .cloned()
                    .unwrap_or_else(|| format!("{c} ?"));
                chains.entry(key).or_default().push(line.to_string());
            } else {
                let _ = writeln!(out, "{tool} {table} {line}");
            }
        }
        flush(&mut out, &table, &mut chains);
    }
    out
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("KPROXY_DIFFERENTIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n: u64 = std::env::var("KPROXY_DIFFERENTIAL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    (1..=n).collect()
}

fn steps() -> usize {
    std::env::var("KPROXY_DIFFERENTIAL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(14)
}

fn run(which: Which) {
    let mode = which.mode();
    let mut failures = Vec::new();
    for seed in seeds() {
        let mut rng = StdRng::seed_from_u64(seed);
        let inc_ns = NetNs::new(&format!("dif{}", which as u8));
        let mut inc = which.backend(&inc_ns);
        let mut graph = IncrementalGraph::new(config(mode));
        let node: Node = serde_json::from_value(node_object()).unwrap();
        graph.upsert_node(Arc::new(node));
        let mut cluster = BTreeMap::new();
        for slot in 0..rng.random_range(2..SLOTS) {
            cluster.insert(slot, random_service(&mut rng, slot));
        }
        let mut history = vec![format!("initial: {:?}", cluster.keys().collect::<Vec<_>>())];
        for step in 0..=steps() {
            if step > 0 {
                history.push(format!(
                    "step {step}: {}",
                    mutate(&mut rng, &mut cluster).join("; ")
                ));
            }
            // As the daemon's reconciler: the first sync is full, then the
            // graph's changes unless they ask for a full sync.
            feed(&mut graph, &cluster);
            let update = graph.update();
            let g = graph.graph().clone();
            let changes = (step > 0 && !update.changes.needs_full_sync).then_some(update.changes);
            if let Err(e) = inc.sync(&g, changes.as_ref()) {
                failures.push(format!(
                    "{which:?} seed {seed} step {step}: incremental sync failed: {e}\n{}",
                    history.join("\n")
                ));
                break;
            }
            // A fresh namespace for every full load: what a node that
            // starts with these objects would have.
            let full_ns = NetNs::new(&format!("dfl{}", which as u8));
            let mut full = which.backend(&full_ns);
            full.sync(&fresh_graph(&cluster, mode), None)
                .unwrap_or_else(|e| panic!("{which:?} seed {seed} step {step}: full load: {e}"));
            let (want, got) = (which.listing(&full_ns), which.listing(&inc_ns));
            if want != got {
                failures.push(format!(
                    "{which:?} seed {seed} step {step}: the kernel after incremental syncs differs \
                     from a full load (- full, + incremental):\n{}\nchanges:\n{}",
                    line_diff(&want, &got),
                    history.join("\n")
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn nftables_incremental_equals_full() {
    run(Which::Nftables);
}

#[test]
fn iptables_nft_incremental_equals_full() {
    run(Which::IptablesNft);
}

#[test]
fn iptables_legacy_incremental_equals_full() {
    run(Which::IptablesLegacy);
}
