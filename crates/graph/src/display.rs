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

fn endpoint_line(ep: &Endpoint) -> String {
    let mut flags = Vec::new();
    if ep.ready {
        flags.push("ready");
    }
    if ep.serving && !ep.ready {
        flags.push("serving");
    }
    if ep.terminating {
        flags.push("terminating");
    }
    if !ep.ready && !ep.serving {
        flags.push("not-serving");
    }
    if ep.is_local {
        flags.push("local");
    }
    let mut s = format!(
        "{} node={} [{}]",
        ep.addr_string(),
        safe(ep.node_name.as_deref().unwrap_or("-")),
        flags.join(",")
    );
    if let Some(z) = &ep.zone {
        let _ = write!(s, " zone={z}");
    }
    if let Some(h) = &ep.zone_hints {
        let _ = write!(s, " hints.zones={}", h.join(","));
    }
    if let Some(h) = &ep.node_hints {
        let _ = write!(s, " hints.nodes={}", h.join(","));
    }
    s
}

fn list(eps: &[std::sync::Arc<Endpoint>]) -> String {
    if eps.is_empty() {
        "(none)".into()
    } else {
        eps.iter()
            .map(|e| e.addr_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Format one service port.
pub fn service_port(out: &mut String, sp: &ServicePort) {
    let d = &sp.decisions;
    let _ = writeln!(
        out,
        "  {} {}/{}",
        safe(&sp.name.to_string()),
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
        let _ = writeln!(out, "      {}", endpoint_line(ep));
    }
    let _ = writeln!(out, "    cluster set:    {}", list(&sp.cluster_endpoints));
    let _ = writeln!(out, "    local set:      {}", list(&sp.local_endpoints));
    let mut decisions = Vec::new();
    decisions.push(format!("has-endpoints={}", d.has_endpoints));
    if let Some(v) = d.internal_verdict {
        decisions.push(format!(
            "cluster-ip-traffic={}",
            format!("{v:?}").to_uppercase()
        ));
    }
    if let Some(v) = d.external_verdict {
        decisions.push(format!(
            "external-traffic={}",
            format!("{v:?}").to_uppercase()
        ));
    }
    if d.uses_external_chain {
        decisions.push("external-chain".into());
    }
    if d.uses_cluster_chain {
        decisions.push("cluster-chain".into());
    }
    if d.uses_local_chain {
        decisions.push("local-chain".into());
    }
    if d.source_ranges_apply {
        decisions.push("source-range-firewall".into());
    }
    if let Some(t) = d.topology {
        decisions.push(format!("topology={t:?}"));
    }
    if d.cluster_terminating_fallback {
        decisions.push("cluster-terminating-fallback".into());
    }
    if d.local_terminating_fallback {
        decisions.push("local-terminating-fallback".into());
    }
    let _ = writeln!(out, "    decisions:      {}", decisions.join(" "));
}

/// Format the whole graph.
pub fn graph(g: &ServiceGraph) -> String {
    let mut out = String::new();
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
        for sp in fg.services.values() {
            service_port(&mut out, sp);
        }
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
