//! Test helpers: run code inside a network namespace (per thread, with
//! `setns`), a TCP echo server that answers with the address it was reached
//! on, and a small node/pod/client topology.

#![allow(dead_code, reason = "each test binary uses part of the helpers")]

pub mod cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use kproxy_testkit::NetNs;
use nix::sched::{CloneFlags, setns};

/// Run `f` on a new thread that has entered namespace `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
}

/// Start a TCP server in `ns` on `addr` that writes the local address of
/// each connection (the address it was reached on) and closes it.
pub fn echo_server(ns: &str, addr: &str) {
    let addr: SocketAddr = addr.parse().expect("server address");
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("signal");
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let local = s
                .local_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = s.write_all(local.as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("echo server started");
}

/// Connect from `ns` to `addr` once; the server's answer, or the error.
pub fn probe(ns: &str, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("probe address");
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .join()
    .expect("probe thread")
}

/// Probe `n` times; the distinct answers (errors as `error: ...`).
pub fn probe_many(ns: &str, addr: &str, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| probe(ns, addr).unwrap_or_else(|e| format!("error: {e}")))
        .collect()
}

/// Client ns — node ns — pod ns. The node has `node_ip/24` towards the
/// client and `pod_gw/16` towards the pods; the pod ns holds `pod_ips`;
/// the client routes `service_net` via the node.
pub struct Topology {
    /// The node (kproxy's rules go here).
    pub node: NetNs,
    /// The pods.
    pub pod: NetNs,
    /// An outside client.
    pub client: NetNs,
}

impl Topology {
    /// Build the seed article's network: node 192.168.49.2, pods in 10.244.0.0/16.
    pub fn seed(pod_ips: &[&str]) -> Topology {
        let node = NetNs::new("nft");
        let pod = NetNs::new("nft");
        let client = NetNs::new("nft");
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Rejections are ICMP errors, rate-limited per peer by default.
        node.exec(&["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"]);
        node.exec(&[
            "ip",
            "link",
            "add",
            "vc",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            client.name(),
        ]);
        node.exec(&[
            "ip",
            "link",
            "add",
            "vp",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ]);
        node.exec(&["ip", "addr", "add", "192.168.49.2/24", "dev", "vc"]);
        node.exec(&["ip", "addr", "add", "10.244.0.1/16", "dev", "vp"]);
        node.exec(&["ip", "link", "set", "vc", "up"]);
        node.exec(&["ip", "link", "set", "vp", "up"]);
        node.exec(&["ip", "route", "add", "default", "via", "192.168.49.10"]);
        client.exec(&["ip", "addr", "add", "192.168.49.10/24", "dev", "eth0"]);
        client.exec(&["ip", "link", "set", "eth0", "up"]);
        client.exec(&["ip", "route", "add", "10.96.0.0/12", "via", "192.168.49.2"]);
        for ip in pod_ips {
            pod.exec(&["ip", "addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
        }
        pod.exec(&["ip", "link", "set", "eth0", "up"]);
        pod.exec(&["ip", "route", "add", "default", "via", "10.244.0.1"]);
        Topology { node, pod, client }
    }
}

/// `nft list table` of both kproxy tables with the parts that legitimately
/// differ between an incrementally built and a freshly loaded table
/// removed (the sync generation), and elements sorted, so two listings
/// can be compared.
pub fn normalised_listing(ns: &NetNs, ignore_empty_chains: bool) -> String {
    let mut out = String::new();
    for fam in ["ip", "ip6"] {
        let text = ns.exec(&["nft", "-j", "list", "table", fam, "kproxy"]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("nft -j output");
        let mut items: Vec<String> = Vec::new();
        for obj in v["nftables"].as_array().expect("nftables array") {
            let Some((kind, body)) = obj.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let mut body = body.clone();
            if let Some(m) = body.as_object_mut() {
                m.remove("handle");
                if m.get("name").and_then(|n| n.as_str()) == Some("sync-generation") {
                    m.remove("elem");
                }
                if let Some(serde_json::Value::Array(elems)) = m.get_mut("elem") {
                    elems.sort_by_key(|e| e.to_string());
                }
            }
            // nft prints a data map's port as `tcp dport` or `th dport`
            // depending on whether the map came from its cache or from the
            // script; the kernel's bytecode is the same (transport header,
            // offset 2).
            let text = body.to_string().replace(
                r#"{"field":"dport","protocol":"tcp"}"#,
                r#"{"field":"dport","protocol":"th"}"#,
            );
            match kind.as_str() {
                "metainfo" => {}
                _ => items.push(format!("{kind} {text}")),
            }
        }
        // Rules keep their order within a chain; objects are sorted.
        let (mut rules, mut others): (Vec<String>, Vec<String>) =
            items.into_iter().partition(|i| i.starts_with("rule "));
        let chain_of = |r: &String| {
            serde_json::from_str::<serde_json::Value>(&r[5..])
                .ok()
                .and_then(|v| v["chain"].as_str().map(String::from))
                .unwrap_or_default()
        };
        if ignore_empty_chains {
            // Chains flushed by an incremental sync are deleted by a later
            // one ("flush now, delete later").
            let used: std::collections::BTreeSet<String> = rules.iter().map(chain_of).collect();
            others.retain(|o| {
                let Some(body) = o.strip_prefix("chain ") else {
                    return true;
                };
                let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                v.get("hook").is_some() || v["name"].as_str().is_some_and(|n| used.contains(n))
            });
        }
        others.sort();
        rules.sort_by_key(chain_of);
        out.push_str(&others.join("\n"));
        out.push('\n');
        out.push_str(&rules.join("\n"));
        out.push('\n');
    }
    out
}

/// A UDP server in `ns` on `addr` (a specific address) that answers every
/// datagram with that address.
pub fn udp_echo_server(ns: &str, addr: &str) {
    let addr: SocketAddr = addr.parse().expect("server address");
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        tx.send(()).expect("signal");
        let mut buf = [0u8; 64];
        while let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(addr.ip().to_string().as_bytes(), peer);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("udp server started");
}

/// One UDP request from `ns` (a fresh socket, so a fresh conntrack entry).
pub fn udp_probe(ns: &str, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("probe address");
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"hi", addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .expect("probe thread")
}
