//! One random Service, as the property and netlink-equivalence tests
//! build them: both families, NodePorts, external and load-balancer IPs
//! with source ranges, affinity, traffic policies, endpoints on this node
//! and others. Names come from the caller (hostile ones, or a fixed list).

use kproxy_testkit::{Draw, TestRng};

use super::cluster::Svc;

/// An IPv4 address in `net` (`net.X.Y`), from a small range so that
/// Services share addresses now and then.
pub fn v4(r: &mut TestRng, net: &str) -> String {
    format!("{net}.{}.{}", r.below(4), 1 + r.below(5))
}

/// An IPv6 address in `net` (`net::X:Y`), as [`v4`].
pub fn v6(r: &mut TestRng, net: &str) -> String {
    format!("{net}::{:x}:{:x}", r.below(4), 1 + r.below(5))
}

/// A random Service named `ns/name` with port name `port_name`.
pub fn random_svc(r: &mut TestRng, ns: &str, name: &str, port_name: &str) -> Svc {
    let six = r.chance(30);
    let ip = |r: &mut TestRng, four: &str, sixn: &str| if six { v6(r, sixn) } else { v4(r, four) };
    let cluster_ip = ip(r, "172.30", "fd00:30");
    let port = [80u16, 443, 53, 1, 65535][r.below(5) as usize];
    let mut s = Svc::new(ns, name, &cluster_ip, port);
    s.port_name = port_name.to_string();
    s.protocol = ["TCP", "UDP", "SCTP"][r.below(3) as usize];
    s.target_port = [80u16, 8080, 53][r.below(3) as usize];
    if r.chance(50) {
        s.node_port = Some(30000 + r.below(5) as u16);
    }
    for _ in 0..r.below(3) {
        s.external_ips.push(ip(r, "192.168.99", "fd00:99"));
    }
    if r.chance(30) {
        s.node_port.get_or_insert(30010);
        for _ in 0..1 + r.below(2) {
            s.lb_ips.push(ip(r, "5.6", "fd00:56"));
        }
        for _ in 0..r.below(4) {
            let range = if six {
                ["fd00::/8", "fd00:56::/64", "::/0", "fd00:56::1/128"][r.below(4) as usize]
            } else {
                [
                    "203.0.113.0/25",
                    "10.0.0.0/8",
                    "10.1.0.0/16",
                    "5.6.0.0/16",
                    "192.168.0.2/32",
                    "0.0.0.0/0",
                ][r.below(6) as usize]
            };
            s.source_ranges.push(range.into());
        }
    }
    if r.chance(25) {
        s.affinity = Some([1u32, 10800, 86400][r.below(3) as usize]);
    }
    s.etp_local = r.chance(40);
    s.itp_local = r.chance(20);
    for _ in 0..r.below(6) {
        let node = (*r.pick(&["test-node", "node-2", "node-3"])).to_string();
        let ready = r.chance(80);
        s.endpoints.push((ip(r, "10.180", "fd00:10"), node, ready));
    }
    s
}
