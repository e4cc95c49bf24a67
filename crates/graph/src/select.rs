//! Endpoint selection: which endpoints serve cluster traffic and which serve
//! local traffic, and the decisions every backend renders (kube-proxy's
//! `CategorizeEndpoints` in pkg/proxy/topology.go and the per-service-port
//! booleans of `syncProxyRules` in its proxiers).

use std::sync::Arc;

use crate::model::{
    Decisions, Endpoint, NoEndpointVerdict, ServicePort, TopologyMode, TrafficPolicy,
};

/// Which topology filter the hints allow for this node, if any.
///
/// As upstream: only Ready endpoints are considered; node hints win when
/// every Ready endpoint has them and one names this node; otherwise zone
/// hints when every Ready endpoint has them and one names this zone.
pub(crate) fn topology_mode(
    endpoints: &[Arc<Endpoint>],
    node_name: &str,
    zone: Option<&str>,
) -> Option<TopologyMode> {
    let mut all_node_hints = true;
    let mut node_hit = false;
    let mut all_zone_hints = true;
    let mut zone_hit = false;
    for ep in endpoints.iter().filter(|e| e.ready) {
        match ep.node_hints() {
            Some(h) if !h.is_empty() => node_hit |= h.iter().any(|n| &**n == node_name),
            _ => all_node_hints = false,
        }
        match ep.zone_hints() {
            Some(h) if !h.is_empty() => {
                zone_hit |= zone.is_some_and(|z| h.iter().any(|x| &**x == z))
            }
            _ => all_zone_hints = false,
        }
    }
    if all_node_hints && node_hit {
        return Some(TopologyMode::PreferSameNode);
    }
    if all_zone_hints && zone_hit {
        return Some(TopologyMode::PreferSameZone);
    }
    None
}

fn available_for_topology(
    ep: &Endpoint,
    mode: Option<TopologyMode>,
    node: &str,
    zone: Option<&str>,
) -> bool {
    match mode {
        None => true,
        Some(TopologyMode::PreferSameNode) => ep
            .node_hints()
            .is_some_and(|h| h.iter().any(|n| &**n == node)),
        Some(TopologyMode::PreferSameZone) => ep
            .zone_hints()
            .is_some_and(|h| zone.is_some_and(|z| h.iter().any(|x| &**x == z))),
    }
}

/// Fill in `cluster_endpoints`, `local_endpoints`, `reachable_endpoints`,
/// `ready_local_endpoints` and `decisions` of `sp` from `sp.endpoints`.
/// `sp.endpoints` must already be sorted.
pub(crate) fn select(sp: &mut ServicePort, node_name: &str, zone: Option<&str>) {
    let mut d = Decisions::default();
    let mut has_any = false;
    let mut cluster: Vec<Arc<Endpoint>> = Vec::new();
    let mut local: Vec<Arc<Endpoint>> = Vec::new();

    if sp.uses_cluster_endpoints() {
        d.topology = topology_mode(&sp.endpoints, node_name, zone);
        cluster = sp
            .endpoints
            .iter()
            .filter(|e| e.ready && available_for_topology(e, d.topology, node_name, zone))
            .cloned()
            .collect();
        if cluster.is_empty() {
            // Fallback: serving-terminating endpoints, topology ignored.
            cluster = sp
                .endpoints
                .iter()
                .filter(|e| e.is_serving_terminating())
                .cloned()
                .collect();
            d.cluster_terminating_fallback = !cluster.is_empty();
        }
        has_any = !cluster.is_empty();
    }

    let reachable = if !sp.uses_local_endpoints() {
        cluster.clone()
    } else {
        let mut local_ready = false;
        let mut local_serving_terminating = false;
        for ep in &sp.endpoints {
            if ep.ready {
                has_any = true;
                local_ready |= ep.is_local;
            } else if ep.is_serving_terminating() {
                has_any = true;
                local_serving_terminating |= ep.is_local;
            }
        }
        if local_ready {
            local = sp
                .endpoints
                .iter()
                .filter(|e| e.is_local && e.ready)
                .cloned()
                .collect();
        } else if local_serving_terminating {
            d.local_terminating_fallback = true;
            local = sp
                .endpoints
                .iter()
                .filter(|e| e.is_local && e.is_serving_terminating())
                .cloned()
                .collect();
        }
        if !sp.uses_cluster_endpoints() {
            local.clone()
        } else if d.topology.is_none() && !d.local_terminating_fallback {
            // Every ready endpoint is in `cluster`, so it covers `local`.
            cluster.clone()
        } else {
            let mut all = cluster.clone();
            for ep in &local {
                if !all.iter().any(|e| e.ip == ep.ip && e.port == ep.port) {
                    all.push(ep.clone());
                }
            }
            sort_endpoints(&mut all);
            all
        }
    };

    d.has_endpoints = has_any;
    d.uses_cluster_chain = !cluster.is_empty() && sp.uses_cluster_endpoints();
    d.uses_local_chain = !local.is_empty() && sp.uses_local_endpoints();
    d.internal_policy_chain = sp.internal_traffic_policy;
    d.has_internal_endpoints = has_any;
    if sp.internal_traffic_policy == TrafficPolicy::Local && local.is_empty() {
        d.has_internal_endpoints = false;
    }
    let accessible = sp.externally_accessible();
    let external_local = accessible && sp.external_traffic_policy == TrafficPolicy::Local;
    d.external_policy_chain = if external_local {
        TrafficPolicy::Local
    } else {
        TrafficPolicy::Cluster
    };
    d.has_external_endpoints = has_any;
    if external_local && local.is_empty() {
        d.has_external_endpoints = false;
    }
    d.uses_external_chain = has_any && accessible;
    d.source_ranges_apply =
        !sp.source_ranges.is_empty() && sp.vip_load_balancer_ips().next().is_some();
    if !has_any {
        d.internal_verdict = Some(NoEndpointVerdict::Reject);
        if accessible {
            d.external_verdict = Some(NoEndpointVerdict::Reject);
        }
    } else {
        if !d.has_internal_endpoints {
            d.internal_verdict = Some(NoEndpointVerdict::Drop);
        }
        if accessible && !d.has_external_endpoints {
            d.external_verdict = Some(NoEndpointVerdict::Drop);
        }
    }

    sp.ready_local_endpoints = sp
        .endpoints
        .iter()
        .filter(|e| e.is_local && e.ready)
        .count();
    sp.cluster_endpoints = cluster;
    sp.local_endpoints = local;
    sp.reachable_endpoints = reachable;
    sp.decisions = d;
}

/// Sort endpoints the way kube-proxy does: by their `ip:port` text.
pub(crate) fn sort_endpoints(eps: &mut [Arc<Endpoint>]) {
    eps.sort_by_cached_key(|e| crate::display::addr_text(e.ip, e.port));
}
