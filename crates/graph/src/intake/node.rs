//! The node-wide part of a graph: this node's addresses, pod CIDRs and
//! zone, local-traffic detection, NodePort addresses, service CIDRs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::ZONE_LABEL;
use super::build::{Ctx, parse_ip};
use crate::config::{DetectLocalMode, NodePortAddress, ProxyConfig, ProxyMode};
use crate::model::{FamilyGraph, IpFamily, LocalTraffic, NodeInfo, NodePortIps};
use crate::warning::{ObjectKind, Warning};

/// The node-wide part of a graph: this node, the per-family graphs
/// without service ports, and the warnings raised on the way.
pub(crate) struct Base {
    pub(crate) node: NodeInfo,
    pub(crate) families: BTreeMap<IpFamily, FamilyGraph>,
    pub(crate) warnings: Vec<Warning>,
}

/// Build the node-wide part from this node's Node object (if any) and
/// the ServiceCIDR objects.
pub(crate) fn build_base<'a>(
    config: &ProxyConfig,
    node: Option<&Node>,
    service_cidrs: impl IntoIterator<Item = &'a ServiceCIDR>,
) -> Base {
    let mut cx = Ctx {
        config,
        warnings: Vec::new(),
    };
    let node = node_info(&mut cx, node);
    let mut cidrs: Vec<IpNet> = config.service_cidrs.iter().map(IpNet::trunc).collect();
    for sc in service_cidrs {
        cidrs.extend(service_cidr_ranges(&mut cx, sc));
    }
    cidrs.sort();
    cidrs.dedup();
    let mut families: BTreeMap<IpFamily, FamilyGraph> = BTreeMap::new();
    for family in &config.families {
        let mut fg = FamilyGraph::empty(*family);
        fg.node_ips = node
            .ips
            .iter()
            .filter(|ip| IpFamily::of(ip) == *family)
            .copied()
            .collect();
        fg.local_traffic = local_traffic(&mut cx, &node, *family);
        let (np, localhost) = nodeport_ips(config, &node, *family);
        fg.nodeport_ips = np;
        fg.localhost_nodeports = localhost;
        fg.service_cidrs = cidrs
            .iter()
            .filter(|c| IpFamily::of_net(c) == *family)
            .copied()
            .collect();
        families.insert(*family, fg);
    }
    Base {
        node,
        families,
        warnings: cx.warnings,
    }
}

/// The ranges of one ServiceCIDR: its `spec.cidrs`, as kube-proxy reads
/// them (`ServiceCIDRConfig` takes the spec, whatever the status or a
/// pending deletion says: a ServiceCIDR being deleted still holds its
/// ClusterIPs until the API server removes it). An unparsable entry is
/// skipped with a warning.
fn service_cidr_ranges(cx: &mut Ctx<'_>, sc: &ServiceCIDR) -> Vec<IpNet> {
    let name = sc.metadata.name.as_deref().unwrap_or("<unnamed>");
    let mut out = Vec::new();
    let entries = sc.spec.as_ref().and_then(|s| s.cidrs.as_ref());
    for (i, c) in entries.into_iter().flatten().enumerate() {
        match c.trim().parse::<IpNet>() {
            Ok(n) => out.push(n.trunc()),
            Err(_) => cx.warn(
                ObjectKind::ServiceCidr,
                name,
                format!("spec.cidrs[{i}]"),
                format!("{c:?} is not a CIDR, ignored"),
            ),
        }
    }
    out
}

fn node_info(cx: &mut Ctx<'_>, node: Option<&Node>) -> NodeInfo {
    let mut info = NodeInfo {
        name: cx.config.node_name.clone(),
        ..NodeInfo::default()
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut primary: BTreeMap<IpFamily, IpAddr> = BTreeMap::new();
    if let Some(node) = node {
        info.known = true;
        let name = cx.config.node_name.clone();
        if let Some(labels) = &node.metadata.labels {
            info.zone = labels.get(ZONE_LABEL).filter(|z| !z.is_empty()).cloned();
            info.topology_labels = labels
                .iter()
                .filter(|(k, _)| k.starts_with("topology.kubernetes.io/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        }
        info.draining = node.metadata.deletion_timestamp.is_some()
            || node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|t| t.iter().any(|t| t.key == "ToBeDeletedByClusterAutoscaler"));
        if let Some(spec) = &node.spec {
            let mut cidrs: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
            if cidrs.is_empty()
                && let Some(c) = &spec.pod_cidr
            {
                cidrs.push(c.clone());
            }
            for (i, c) in cidrs.iter().enumerate() {
                match c.trim().parse::<IpNet>() {
                    Ok(n) => info.pod_cidrs.push(n),
                    Err(_) => cx.warn(
                        ObjectKind::Node,
                        &name,
                        format!("spec.podCIDRs[{i}]"),
                        format!("{c:?} is not a CIDR, ignored"),
                    ),
                }
            }
        }
        if let Some(addrs) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) {
            // InternalIPs first: the first InternalIP of a family is its primary.
            for want in ["InternalIP", "ExternalIP"] {
                for (i, a) in addrs.iter().enumerate().filter(|(_, a)| a.type_ == want) {
                    match parse_ip(&a.address) {
                        Some(ip) => {
                            primary.entry(IpFamily::of(&ip)).or_insert(ip);
                            ips.push(ip);
                        }
                        None => cx.warn(
                            ObjectKind::Node,
                            &name,
                            format!("status.addresses[{i}].address"),
                            format!("{:?} is not an IP address, ignored", a.address),
                        ),
                    }
                }
            }
        }
    }
    for ip in &cx.config.extra_node_ips {
        primary.entry(IpFamily::of(ip)).or_insert(*ip);
        ips.push(*ip);
    }
    ips.sort();
    ips.dedup();
    info.ips = ips;
    info.primary_ips = primary.into_values().collect();
    info
}

/// The detector for traffic from the first of `cidrs` in `family` (none
/// when it has none).
fn cidr_detector(cidrs: &[IpNet], family: IpFamily) -> LocalTraffic {
    cidrs
        .iter()
        .find(|n| IpFamily::of_net(n) == family)
        .map_or(LocalTraffic::None, |n| LocalTraffic::Cidr(n.trunc()))
}

fn local_traffic(cx: &mut Ctx<'_>, node: &NodeInfo, family: IpFamily) -> LocalTraffic {
    let c = cx.config;
    match c.detect_local_mode {
        DetectLocalMode::ClusterCidr => cidr_detector(&c.cluster_cidrs, family),
        DetectLocalMode::NodeCidr => cidr_detector(&node.pod_cidrs, family),
        DetectLocalMode::BridgeInterface => match &c.bridge_interface {
            Some(b) if valid_ifname(b) => LocalTraffic::Interface(b.clone()),
            other => {
                cx.warn(
                    ObjectKind::Document,
                    "configuration",
                    "detectLocal.bridgeInterface",
                    format!("{other:?} is not a usable interface name; no local-traffic detector"),
                );
                LocalTraffic::None
            }
        },
        DetectLocalMode::InterfaceNamePrefix => {
            match &c.interface_name_prefix {
                Some(p) if valid_ifname(p) => LocalTraffic::InterfacePrefix(p.clone()),
                other => {
                    cx.warn(ObjectKind::Document, "configuration", "detectLocal.interfaceNamePrefix", format!("{other:?} is not a usable interface name prefix; no local-traffic detector"));
                    LocalTraffic::None
                }
            }
        }
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, whitespace, quotes or `+`.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn nodeport_ips(config: &ProxyConfig, node: &NodeInfo, family: IpFamily) -> (NodePortIps, bool) {
    let loopback = family.loopback_net();
    let entries: Vec<NodePortAddress> = if config.nodeport_addresses.is_empty() {
        match config.mode {
            ProxyMode::Iptables => Vec::new(),
            ProxyMode::Nftables => vec![NodePortAddress::Primary],
        }
    } else {
        config.nodeport_addresses.clone()
    };
    let fam_entries: Vec<&NodePortAddress> = entries
        .iter()
        .filter(|e| match e {
            NodePortAddress::Primary => true,
            NodePortAddress::Cidr(n) => IpFamily::of_net(n) == family,
        })
        .collect();
    // No entry of this family (even when the other family has some):
    // every address, as kube-proxy's `NewNodePortAddresses` (0.0.0.0/0 or
    // ::/0) in both modes.
    let all = fam_entries.is_empty()
        || fam_entries
            .iter()
            .any(|e| matches!(e, NodePortAddress::Cidr(n) if n.prefix_len() == 0));
    let localhost_allowed =
        config.mode == ProxyMode::Iptables && family == IpFamily::V4 && config.localhost_nodeports;
    if all {
        return (NodePortIps::All, localhost_allowed);
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut localhost = false;
    for e in fam_entries {
        match e {
            NodePortAddress::Primary => ips.extend(
                node.primary_ips
                    .iter()
                    .filter(|ip| IpFamily::of(ip) == family),
            ),
            NodePortAddress::Cidr(n) => {
                ips.extend(node.ips.iter().filter(|ip| n.contains(*ip)));
                // Any overlap with the loopback network admits localhost.
                if loopback.contains(&n.network()) || n.contains(&loopback.network()) {
                    localhost = true;
                }
            }
        }
    }
    ips.retain(|ip| !loopback.contains(ip));
    ips.sort();
    ips.dedup();
    (NodePortIps::Only(ips), localhost && localhost_allowed)
}
