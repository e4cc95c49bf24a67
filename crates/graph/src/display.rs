//! A readable, stable text form of a service graph (what `kproxy graph`
//! prints): one block per service port with its addresses, endpoints and
//! decisions, then the warnings.

use std::fmt::Write as _;

use crate::model::{
    Endpoint, LbIpMode, LocalTraffic, NodePortIps, ServiceGraph, ServicePort, TrafficPolicy,
};

/// Names come from objects and may hold anything (quotes, newlines):
/// print them escaped so one object can never forge lines of output.
fn safe(s: &str) -> String {
    s.escape_debug().to_string()
}

fn policy(p: TrafficPolicy) -> &'static str {
    match p {
        TrafficPolicy::Cluster => "Cluster",
        TrafficPolicy::Local => "Local",
    }
}

/// An endpoint's address as [`Endpoint::addr_string`] gives it, written
/// into `out`.
fn put_addr(out: &mut String, ep: &Endpoint) {
    put_ip_port(out, ep.ip, ep.port);
}

/// `ip:port` as [`Endpoint::addr_string`] gives it, in a new string: the
/// key endpoints are merged and sorted by (`Display` of an address costs
/// many times more).
pub(crate) fn addr_text(ip: std::net::IpAddr, port: u16) -> String {
    let mut out = String::with_capacity(24);
    put_ip_port(&mut out, ip, port);
    out
}

fn put_ip_port(out: &mut String, ip: std::net::IpAddr, port: u16) {
    match ip {
        std::net::IpAddr::V4(ip) => put_ipv4(out, ip),
        std::net::IpAddr::V6(ip) => {
            let _ = write!(out, "[{ip}]");
        }
    }
    out.push(':');
    put_dec(out, port);
}

/// `n` in decimal, as its `Display` writes it.
fn put_dec(out: &mut String, n: u16) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `ip` in dotted decimal, as its `Display` writes it (which costs many
/// times more: a graph prints hundreds of thousands of addresses).
fn put_ipv4(out: &mut String, ip: std::net::Ipv4Addr) {
    let [a, b, c, d] = ip.octets();
    let mut digits = itoa::Buffer::new();
    for (i, octet) in [a, b, c, d].into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        out.push_str(digits.format(octet));
    }
}

/// `items` joined by `sep`, written into `out`.
fn put_joined<T: AsRef<str>>(out: &mut String, items: &[T], sep: &str) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(item.as_ref());
    }
}

/// One endpoint's line (without indentation and newline).
fn endpoint_line(out: &mut String, ep: &Endpoint) {
    put_addr(out, ep);
    let _ = write!(
        out,
        " node={} [",
        ep.node_name.as_deref().unwrap_or("-").escape_debug()
    );
    let flags = [
        (ep.ready, "ready"),
        (ep.serving && !ep.ready, "serving"),
        (ep.terminating, "terminating"),
        (!ep.ready && !ep.serving, "not-serving"),
        (ep.is_local, "local"),
    ];
    let mut first = true;
    for (on, flag) in flags {
        if on {
            if !first {
                out.push(',');
            }
            out.push_str(flag);
            first = false;
        }
    }
    out.push(']');
    if let Some(z) = &ep.zone {
        let _ = write!(out, " zone={z}");
    }
    if let Some(h) = ep.zone_hints() {
        out.push_str(" hints.zones=");
        put_joined(out, h, ",");
    }
    if let Some(h) = ep.node_hints() {
        out.push_str(" hints.nodes=");
        put_joined(out, h, ",");
    }
}

/// A set of endpoints' addresses, or `(none)`.
fn list(out: &mut String, eps: &[std::sync::Arc<Endpoint>]) {
    if eps.is_empty() {
        out.push_str("(none)");
    }
    for (i, e) in eps.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        put_addr(out, e);
    }
}

/// Format one service port.
pub fn service_port(out: &mut String, sp: &ServicePort) {
    let d = &sp.decisions;
    let _ = writeln!(
        out,
        "  {} {}/{}",
        sp.name.to_string().escape_debug(),
        sp.port,
        sp.name.protocol
    );
    let _ = writeln!(out, "    cluster IP:     {}:{}", sp.cluster_ip, sp.port);
    if !sp.external_ips.is_empty() {
        let ips: Vec<String> = sp.external_ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "    external IPs:   {}", ips.join(", "));
    }
    if !sp.load_balancer_ips.is_empty() {
        let ips: Vec<String> = sp
            .load_balancer_ips
            .iter()
            .map(|l| match l.mode {
                LbIpMode::Vip => l.ip.to_string(),
                LbIpMode::Proxy => format!("{} (ipMode Proxy: no rules)", l.ip),
            })
            .collect();
        let _ = writeln!(out, "    LB IPs:         {}", ips.join(", "));
    }
    if !sp.source_ranges.is_empty() {
        let r: Vec<String> = sp.source_ranges.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "    source ranges:  {}", r.join(", "));
    }
    if let Some(np) = sp.node_port {
        let _ = writeln!(out, "    node port:      {np}");
    }
    if let Some(hc) = sp.health_check_node_port {
        let _ = writeln!(
            out,
            "    health check:   {hc} (ready local endpoints: {})",
            sp.ready_local_endpoints
        );
    }
    if let Some(a) = sp.session_affinity {
        let _ = writeln!(out, "    affinity:       ClientIP {}s", a.timeout_seconds);
    }
    let _ = writeln!(
        out,
        "    policies:       internal={} external={}{}",
        policy(sp.internal_traffic_policy),
        policy(sp.external_traffic_policy),
        sp.traffic_distribution
            .as_deref()
            .map(|t| format!(" trafficDistribution={t}"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "    endpoints:");
    if sp.endpoints.is_empty() {
        let _ = writeln!(out, "      (none)");
    }
    for ep in &sp.endpoints {
        out.push_str("      ");
        endpoint_line(out, ep);
        out.push('\n');
    }
    out.push_str("    cluster set:    ");
    list(out, &sp.cluster_endpoints);
    out.push_str("\n    local set:      ");
    list(out, &sp.local_endpoints);
    out.push('\n');
    let _ = write!(out, "    decisions:      has-endpoints={}", d.has_endpoints);
    if let Some(v) = d.internal_verdict {
        let _ = write!(
            out,
            " cluster-ip-traffic={}",
            format!("{v:?}").to_uppercase()
        );
    }
    if let Some(v) = d.external_verdict {
        let _ = write!(out, " external-traffic={}", format!("{v:?}").to_uppercase());
    }
    for (on, decision) in [
        (d.uses_external_chain, " external-chain"),
        (d.uses_cluster_chain, " cluster-chain"),
        (d.uses_local_chain, " local-chain"),
        (d.source_ranges_apply, " source-range-firewall"),
    ] {
        if on {
            out.push_str(decision);
        }
    }
    if let Some(t) = d.topology {
        let _ = write!(out, " topology={t:?}");
    }
    if d.cluster_terminating_fallback {
        out.push_str(" cluster-terminating-fallback");
    }
    if d.local_terminating_fallback {
        out.push_str(" local-terminating-fallback");
    }
    out.push('\n');
}

/// [`service_port`] of each of `ports`, in order; the second half into a
/// text of its own on another thread when `split` and there are many (the
/// texts are joined in order, so the output is the same either way).
fn service_ports(out: &mut String, ports: &[&ServicePort], split: bool) {
    if !split || ports.len() < PARALLEL_MIN {
        for sp in ports {
            service_port(out, sp);
        }
        return;
    }
    let (first, second) = ports.split_at(ports.len() / 2);
    let room = out.capacity().saturating_sub(out.len()) / 2;
    let rest = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let mut rest = String::with_capacity(room);
            for sp in second {
                service_port(&mut rest, sp);
            }
            rest
        });
        for sp in first {
            service_port(out, sp);
        }
        match other.join() {
            Ok(rest) => rest,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    out.push_str(&rest);
}

/// Families with fewer service ports than this are printed on one thread.
const PARALLEL_MIN: usize = 512;

/// Format the whole graph.
pub fn graph(g: &ServiceGraph) -> String {
    // About this much text a service port and an endpoint take: one
    // allocation for all but the largest graphs.
    let size: usize = g
        .families
        .values()
        .map(|fg| fg.services.len() * 512 + fg.total_endpoints() * 128)
        .sum();
    let mut out = String::with_capacity(size + 4096);
    let n = &g.node;
    let ips: Vec<String> = n.ips.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "node {} ({}) ips=[{}] zone={}",
        if n.name.is_empty() {
            "<unset>"
        } else {
            &n.name
        },
        if n.known { "found" } else { "no Node object" },
        ips.join(", "),
        n.zone.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "masquerade mark {:#x}{}",
        g.masquerade_mark(),
        if g.config.masquerade_all {
            ", masquerade-all"
        } else {
            ""
        }
    );
    for fg in g.families.values() {
        let local = match &fg.local_traffic {
            LocalTraffic::None => "none".to_string(),
            LocalTraffic::Cidr(c) => format!("source in {c}"),
            LocalTraffic::Interface(i) => format!("in-interface {i}"),
            LocalTraffic::InterfacePrefix(p) => format!("in-interface {p}*"),
        };
        let np = match &fg.nodeport_ips {
            NodePortIps::All => "all local addresses".to_string(),
            NodePortIps::Only(ips) if ips.is_empty() => "none".to_string(),
            NodePortIps::Only(ips) => ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{}: {} service ports, {} endpoints; pod traffic: {}; node ports on: {}{}{}",
            fg.family,
            fg.services.len(),
            fg.total_endpoints(),
            local,
            np,
            if fg.localhost_nodeports {
                " + localhost"
            } else {
                ""
            },
            if fg.service_cidrs.is_empty() {
                String::new()
            } else {
                let cidrs: Vec<String> = fg.service_cidrs.iter().map(ToString::to_string).collect();
                format!("; service CIDRs: {}", cidrs.join(", "))
            }
        );
        let ports: Vec<&ServicePort> = fg.services.values().collect();
        service_ports(&mut out, &ports, crate::intake::two_cpus());
    }
    let _ = writeln!(out);
    if g.warnings.is_empty() {
        let _ = writeln!(out, "warnings: none");
    } else {
        let _ = writeln!(out, "warnings: {}", g.warnings.len());
        for w in &g.warnings {
            let _ = writeln!(out, "  {}", safe(&w.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ipv4_addresses_print_as_their_display() {
        let octets = [0u8, 1, 9, 10, 42, 99, 100, 199, 200, 255];
        for a in octets {
            for b in octets {
                let ip = std::net::Ipv4Addr::new(a, b, b, a);
                let mut out = String::new();
                put_ipv4(&mut out, ip);
                assert_eq!(out, ip.to_string());
            }
        }
    }

    #[test]
    fn addresses_with_ports_read_as_addr_string() {
        let ports = [0u16, 1, 9, 10, 80, 99, 100, 8080, 9999, 10000, 65535];
        let ips: [std::net::IpAddr; 4] = [
            std::net::Ipv4Addr::new(10, 0, 100, 255).into(),
            std::net::Ipv4Addr::new(0, 0, 0, 0).into(),
            "fd00::1".parse().unwrap(),
            "::ffff:10.1.2.3".parse().unwrap(),
        ];
        for ip in ips {
            for port in ports {
                // `Endpoint::addr_string`'s own formatting.
                let expected = match ip {
                    std::net::IpAddr::V4(ip) => format!("{ip}:{port}"),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
                };
                assert_eq!(addr_text(ip, port), expected);
            }
        }
    }

    #[test]
    fn service_ports_printed_on_two_threads_read_as_on_one() {
        let (objects, warnings) =
            crate::Objects::from_yaml("mixed", &kproxy_testkit::mixed_cluster_yaml(700))
                .expect("reads");
        assert!(warnings.is_empty(), "{warnings:?}");
        let config = crate::ProxyConfig {
            node_name: kproxy_testkit::MIXED_NODE.into(),
            ..crate::ProxyConfig::default()
        };
        let g = ServiceGraph::build(&objects, &config);
        let fg = g.families.values().next().expect("a family");
        let ports: Vec<&ServicePort> = fg.services.values().collect();
        assert!(ports.len() >= PARALLEL_MIN, "{}", ports.len());
        let (mut one, mut two) = (String::from("head\n"), String::from("head\n"));
        service_ports(&mut one, &ports, false);
        service_ports(&mut two, &ports, true);
        assert!(one.len() > 700 * 100, "{}", one.len());
        assert!(one == two, "the two-thread text differs");
    }
}
