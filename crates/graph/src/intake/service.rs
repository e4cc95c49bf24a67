//! One Service object into its service ports, per family.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::build::{Ctx, parse_ip, special_purpose};
use super::compact::{Addr, CompactService, ServiceType};
use super::{DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT};
use crate::model::{
    IpFamily, LbIpMode, LoadBalancerIp, ServicePort, ServicePortName, SessionAffinity,
    TrafficPolicy,
};
use crate::warning::ObjectKind;
use ipnet::IpNet;

/// The per-Service facts shared by all its ports, for one family.
struct SvcCommon {
    cluster_ip: IpAddr,
    external_ips: Vec<IpAddr>,
    lb_ips: Vec<LoadBalancerIp>,
    source_ranges: Vec<IpNet>,
    affinity: Option<SessionAffinity>,
    itp: TrafficPolicy,
    etp_local: bool,
    hcnp: Option<u16>,
    traffic_distribution: Option<String>,
    node_port_type: bool,
}

/// Intake one Service into every family it has a ClusterIP in. Returns
/// whether the Service is proxied at all.
pub(super) fn intake_service(
    cx: &mut Ctx<'_>,
    svc: &CompactService,
    ns: &str,
    name: &str,
    families: &mut BTreeMap<IpFamily, BTreeMap<ServicePortName, ServicePort>>,
) -> bool {
    let obj = format!("{ns}/{name}");
    if let Some(v) = &svc.labels.proxy_name
        && cx.config.proxy_name.as_deref() != Some(&**v)
    {
        return false;
    }
    let Some(spec) = &svc.spec else {
        cx.warn(ObjectKind::Service, &obj, "spec", "missing, skipped");
        return false;
    };
    let type_ = spec.type_;
    if type_ == ServiceType::ExternalName {
        return false;
    }
    let cluster_ip_strs = &spec.cluster_ips;
    if cluster_ip_strs.is_empty()
        || cluster_ip_strs
            .iter()
            .any(|s| matches!(s, Addr::Text(t) if &**t == "None"))
    {
        return false; // headless (or not yet allocated)
    }
    let mut cluster_ips: BTreeMap<IpFamily, IpAddr> = BTreeMap::new();
    for (i, a) in cluster_ip_strs.iter().enumerate() {
        let s = || a.text();
        match a.ip() {
            Some(ip) => match cluster_ips.entry(IpFamily::of(&ip)) {
                std::collections::btree_map::Entry::Occupied(_) => cx.warn(
                    ObjectKind::Service,
                    &obj,
                    format!("spec.clusterIPs[{i}]"),
                    format!("{:?} is a second address of the same family, ignored", s()),
                ),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(ip);
                }
            },
            None => cx.warn(
                ObjectKind::Service,
                &obj,
                format!("spec.clusterIPs[{i}]"),
                format!("{:?} is not an IP address, ignored", s()),
            ),
        }
    }
    if cluster_ips.is_empty() {
        cx.warn(
            ObjectKind::Service,
            &obj,
            "spec.clusterIPs",
            "no valid ClusterIP, Service skipped",
        );
        return false;
    }

    let is_lb = type_ == ServiceType::LoadBalancer;
    let node_port_type = type_ == ServiceType::NodePort || is_lb;

    let mut external_ips: Vec<IpAddr> = Vec::new();
    for (i, a) in spec.external_ips.iter().enumerate() {
        let s = || a.text();
        match a.ip() {
            Some(ip) if let Some(why) = special_purpose(ip) => cx.warn(
                ObjectKind::Service,
                &obj,
                format!("spec.externalIPs[{i}]"),
                format!("{:?} is a special-purpose address ({why}), which the API server refuses as an external IP; ignored", s()),
            ),
            Some(ip) => external_ips.push(ip),
            None => cx.warn(
                ObjectKind::Service,
                &obj,
                format!("spec.externalIPs[{i}]"),
                format!("{:?} is not an IP address, ignored", s()),
            ),
        }
    }
    let mut lb_ips: Vec<LoadBalancerIp> = Vec::new();
    if is_lb {
        for ing in &svc.ingress {
            let i = ing.index;
            let Some(ip) = ing.ip.ip() else {
                cx.warn(
                    ObjectKind::Service,
                    &obj,
                    format!("status.loadBalancer.ingress[{i}].ip"),
                    format!("{:?} is not an IP address, ignored", ing.ip.text()),
                );
                continue;
            };
            let mode = match ing.ip_mode.as_deref() {
                Some("Proxy") => LbIpMode::Proxy,
                None | Some("VIP") => LbIpMode::Vip,
                Some(other) => {
                    cx.warn(
                        ObjectKind::Service,
                        &obj,
                        format!("status.loadBalancer.ingress[{i}].ipMode"),
                        format!("{other:?} is not VIP or Proxy, treated as VIP"),
                    );
                    LbIpMode::Vip
                }
            };
            lb_ips.push(LoadBalancerIp { ip, mode });
        }
    }
    let mut source_ranges: Vec<IpNet> = Vec::new();
    if is_lb {
        for (i, s) in spec.source_ranges.iter().enumerate() {
            match s.trim().parse::<IpNet>() {
                Ok(n) => source_ranges.push(n.trunc()),
                Err(_) => match parse_ip(s) {
                    // A bare address is a /32 (or /128).
                    Some(ip) => source_ranges.push(IpNet::from(ip)),
                    None => cx.warn(
                        ObjectKind::Service,
                        &obj,
                        format!("spec.loadBalancerSourceRanges[{i}]"),
                        format!("{s:?} is not a CIDR, ignored"),
                    ),
                },
            }
        }
    }
    let affinity = if let Some(t) = spec.client_ip_affinity {
        let timeout = match t {
            None => DEFAULT_AFFINITY_TIMEOUT,
            Some(t) if t >= 1 && t <= MAX_AFFINITY_TIMEOUT as i32 => t as u32,
            Some(t) => {
                cx.warn(
                    ObjectKind::Service,
                    &obj,
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is outside 1..86400, using {DEFAULT_AFFINITY_TIMEOUT}"),
                );
                DEFAULT_AFFINITY_TIMEOUT
            }
        };
        Some(SessionAffinity {
            timeout_seconds: timeout,
        })
    } else {
        None
    };
    let itp = if spec.itp_local {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    };
    let etp_local = spec.etp_local;
    let hcnp = if is_lb && etp_local {
        optional_port(
            cx,
            &obj,
            "spec.healthCheckNodePort",
            spec.health_check_node_port,
            "is not a port, ignored",
        )
    } else {
        None
    };

    for (family, cluster_ip) in cluster_ips {
        let Some(fg) = families.get_mut(&family) else {
            continue;
        };
        let common = SvcCommon {
            cluster_ip,
            external_ips: sorted_family(&external_ips, family, IpFamily::of),
            lb_ips: {
                let mut v: Vec<LoadBalancerIp> = lb_ips
                    .iter()
                    .filter(|l| IpFamily::of(&l.ip) == family)
                    .copied()
                    .collect();
                v.sort();
                v.dedup_by(|a, b| a.ip == b.ip);
                v
            },
            source_ranges: sorted_family(&source_ranges, family, IpFamily::of_net),
            affinity,
            itp,
            etp_local,
            hcnp,
            traffic_distribution: spec.traffic_distribution.as_deref().map(String::from),
            node_port_type,
        };
        for (i, p) in spec.ports.iter().enumerate() {
            let field = || format!("spec.ports[{i}].protocol");
            let Some(protocol) = cx.port_protocol(ObjectKind::Service, &obj, field, &p.protocol)
            else {
                continue;
            };
            let port = match u16::try_from(p.port) {
                Ok(v) if v > 0 => v,
                _ => {
                    cx.warn(
                        ObjectKind::Service,
                        &obj,
                        format!("spec.ports[{i}].port"),
                        format!("{} is outside 1..65535; port skipped", p.port),
                    );
                    continue;
                }
            };
            let node_port = if common.node_port_type {
                optional_port(
                    cx,
                    &obj,
                    format!("spec.ports[{i}].nodePort"),
                    p.node_port,
                    "is outside 1..65535, ignored",
                )
            } else {
                None
            };
            let spn = ServicePortName::new(
                ns.to_string(),
                name.to_string(),
                p.name.as_deref().unwrap_or_default(),
                protocol,
            );
            if fg.contains_key(&spn) {
                cx.warn(
                    ObjectKind::Service,
                    &obj,
                    format!("spec.ports[{i}]"),
                    format!("duplicate port {spn} {protocol}, ignored"),
                );
                continue;
            }
            let mut sp = ServicePort {
                name: spn.clone(),
                port,
                cluster_ip: common.cluster_ip,
                external_ips: common.external_ips.clone(),
                load_balancer_ips: common.lb_ips.clone(),
                source_ranges: common.source_ranges.clone(),
                node_port,
                health_check_node_port: common.hcnp,
                session_affinity: common.affinity,
                internal_traffic_policy: common.itp,
                external_traffic_policy: TrafficPolicy::Cluster,
                traffic_distribution: common.traffic_distribution.clone(),
                endpoints: Vec::new(),
                cluster_endpoints: Vec::new(),
                local_endpoints: Vec::new(),
                reachable_endpoints: Vec::new(),
                decisions: Default::default(),
                ready_local_endpoints: 0,
            };
            if common.etp_local && sp.externally_accessible() {
                sp.external_traffic_policy = TrafficPolicy::Local;
            }
            fg.insert(spn, sp);
        }
    }
    true
}

/// An optional port field of the Service `obj` (unset or 0: none); a value
/// outside 1..65535 is warned about (`value` then `refusal`) and ignored.
fn optional_port(
    cx: &mut Ctx<'_>,
    obj: &str,
    field: impl Into<String>,
    value: Option<i32>,
    refusal: &str,
) -> Option<u16> {
    let v = value.filter(|&v| v != 0)?;
    match u16::try_from(v) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            cx.warn(ObjectKind::Service, obj, field, format!("{v} {refusal}"));
            None
        }
    }
}

/// The items of `family` (`of` tells an item's), sorted, each once.
fn sorted_family<T: Copy + Ord>(items: &[T], family: IpFamily, of: fn(&T) -> IpFamily) -> Vec<T> {
    let mut v: Vec<T> = items.iter().filter(|i| of(i) == family).copied().collect();
    v.sort();
    v.dedup();
    v
}
