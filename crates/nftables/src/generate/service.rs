//! Per-service rules: everything one service port contributes.

use super::*;

pub(super) fn verdict(v: Option<NoEndpointVerdict>) -> String {
    match v {
        Some(NoEndpointVerdict::Drop) => "drop".to_string(),
        // Reject when unspecified: the graph says there is nothing to serve.
        Some(NoEndpointVerdict::Reject) | None => "goto reject-chain".to_string(),
    }
}

pub(super) fn ep_value(ep: &Endpoint) -> String {
    let mut out = String::with_capacity(24);
    put_ip(&mut out, ep.ip);
    out.push_str(" . ");
    put_dec(&mut out, ep.port.into());
    out
}

/// `ip` as its `Display` writes it; IPv4 digit by digit (`Display` costs
/// many times more, and a large ruleset holds an address an endpoint).
pub(super) fn put_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            let mut digits = itoa::Buffer::new();
            let [a, b, c, d] = ip.octets();
            out.push_str(digits.format(a));
            for octet in [b, c, d] {
                out.push('.');
                out.push_str(digits.format(octet));
            }
        }
        IpAddr::V6(ip) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{ip}");
        }
    }
}

/// `n` in decimal, as its `Display` writes it.
pub(super) fn put_dec(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Which key an endpoint lookup uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Vip(IpAddr),
    NodePort(u16),
}

pub(super) struct SvcCtx<'a, 'b> {
    ctx: &'a Ctx<'b>,
    sp: &'a ServicePort,
    proto: &'static str,
    base: String,
    comment: String,
    out: ServiceRules,
}

impl SvcCtx<'_, '_> {
    pub(super) fn elem(
        &mut self,
        set: &'static str,
        key: String,
        value: Option<String>,
        comment: bool,
    ) {
        let e = Element {
            value,
            comment: comment.then(|| self.comment.clone()),
        };
        self.out.elems.push(set, &key, &e);
    }

    pub(super) fn eps(&self, policy: TrafficPolicy) -> &[std::sync::Arc<Endpoint>] {
        match policy {
            TrafficPolicy::Cluster => &self.sp.cluster_endpoints,
            TrafficPolicy::Local => &self.sp.local_endpoints,
        }
    }

    pub(super) fn vip_key(&self, ip: IpAddr) -> String {
        format!("{ip} . {} . {}", self.proto, self.sp.port)
    }

    /// The chain that load-balances `policy`'s endpoints for traffic
    /// arriving `via`, adding the endpoint elements it reads. `None` when
    /// that set is empty.
    pub(super) fn policy_target(&mut self, policy: TrafficPolicy, via: Via) -> Option<String> {
        let n = self.eps(policy).len();
        if n == 0 {
            return None;
        }
        if self.sp.session_affinity.is_some() {
            let prefix = match policy {
                TrafficPolicy::Cluster => "service",
                TrafficPolicy::Local => "local",
            };
            return Some(format!("{prefix}-{}", self.base));
        }
        let (kind, key_prefix) = match (policy, via) {
            (TrafficPolicy::Cluster, Via::Vip(ip)) => (LbKind::Cluster, self.vip_key(ip)),
            (TrafficPolicy::Local, Via::Vip(ip)) => (LbKind::Local, self.vip_key(ip)),
            (TrafficPolicy::Cluster, Via::NodePort(p)) => {
                (LbKind::NodePortCluster, format!("{} . {p}", self.proto))
            }
            (TrafficPolicy::Local, Via::NodePort(p)) => {
                (LbKind::NodePortLocal, format!("{} . {p}", self.proto))
            }
        };
        let protocol = self.sp.name.protocol;
        let map = ep_map_name(kind, protocol)?;
        let values: Vec<String> = self.eps(policy).iter().map(|e| ep_value(e)).collect();
        for (i, v) in values.into_iter().enumerate() {
            let mut key = String::with_capacity(key_prefix.len() + 6);
            key.push_str(&key_prefix);
            key.push_str(" . ");
            put_dec(&mut key, i as u64);
            self.elem(map, key, Some(v), false);
        }
        let lb = LbChain {
            kind,
            proto: protocol,
            k: n,
        };
        self.out.lb.push(lb);
        Some(lb.name())
    }

    /// The chain external traffic arriving `via` goes to.
    pub(super) fn external_target(&mut self, via: Via) -> Option<String> {
        let d = &self.sp.decisions;
        let affinity = self.sp.session_affinity.is_some();
        if d.external_policy_chain == TrafficPolicy::Cluster {
            if affinity {
                let inner = self.policy_target(TrafficPolicy::Cluster, via)?;
                let name = format!("external-{}", self.base);
                self.ensure_chain(
                    &name,
                    vec![Rule::new(format!(
                        "{} goto {inner}",
                        mark_stmt(self.ctx.mark)
                    ))],
                );
                return Some(name);
            }
            self.policy_target(TrafficPolicy::Cluster, via)?;
            let n = self.sp.cluster_endpoints.len();
            let kind = match via {
                Via::Vip(_) => LbKind::MarkCluster,
                Via::NodePort(_) => LbKind::MarkNodePortCluster,
            };
            let lb = LbChain {
                kind,
                proto: self.sp.name.protocol,
                k: n,
            };
            self.out.lb.push(lb);
            return Some(lb.name());
        }
        // externalTrafficPolicy: Local, kube-proxy's external chain.
        let name = match (via, affinity) {
            (Via::NodePort(_), false) => format!("nodeport-{}", self.base),
            _ => format!("external-{}", self.base),
        };
        let mut rules = Vec::new();
        let cluster = if d.uses_cluster_chain {
            self.policy_target(TrafficPolicy::Cluster, via)
        } else {
            None
        };
        if let Some(ct) = &cluster {
            if let Some(pod) = detector(self.ctx, false) {
                rules.push(Rule::commented(
                    format!("{pod} goto {ct}"),
                    "short-circuit pod traffic",
                ));
            }
            rules.push(Rule::commented(
                format!(
                    "fib saddr type local {} goto {ct}",
                    mark_stmt(self.ctx.mark)
                ),
                "short-circuit local traffic",
            ));
        }
        if d.has_external_endpoints
            && let Some(lt) = self.policy_target(TrafficPolicy::Local, via)
        {
            rules.push(Rule::new(format!("goto {lt}")));
        }
        self.ensure_chain(&name, rules);
        Some(name)
    }

    pub(super) fn ensure_chain(&mut self, name: &str, rules: Vec<Rule>) {
        if !self.out.chains.iter().any(|c| c.name == name) {
            self.out.chains.push(Chain::new(name, rules));
        }
    }

    /// ClientIP affinity: kube-proxy's `service-`/`local-` chains without
    /// its per-endpoint chains or sets. The clients live in the one shared
    /// `affinity` set, keyed by client . endpoint id with the Service's
    /// timeout on each element (the kernel finds named sets by walking a
    /// list, so a set per endpoint makes loads quadratic). Each endpoint
    /// is one rule that sends a remembered client back to it, refreshing
    /// the entry; then new clients are spread by a cascade of `numgen
    /// random mod N-i 0` rules (probability 1/N each, as the iptables
    /// backends' `statistic` rules), each remembering the pick. No chain
    /// per endpoint: nft reads every chain of the table into its cache
    /// for any later transaction, so tens of thousands of them would make
    /// every incremental sync slow.
    pub(super) fn affinity_chains(&mut self) {
        let Some(aff) = self.sp.session_affinity else {
            return;
        };
        let fam = self.ctx.fam;
        let d = &self.sp.decisions;
        let mut wanted = Vec::new();
        if d.uses_cluster_chain && !self.sp.cluster_endpoints.is_empty() {
            wanted.push(("service", self.sp.cluster_endpoints.clone()));
        }
        if d.uses_local_chain && !self.sp.local_endpoints.is_empty() {
            wanted.push(("local", self.sp.local_endpoints.clone()));
        }
        let mut ids = BTreeSet::new();
        for (prefix, eps) in wanted {
            let mut rules = Vec::new();
            let mut picks = Vec::new();
            for ep in eps.iter() {
                let id = names::affinity_id(&self.sp.name, ep);
                ids.insert(id);
                let key = names::affinity_key(id);
                let mut dst = String::with_capacity(24);
                match ep.ip {
                    IpAddr::V4(_) => put_ip(&mut dst, ep.ip),
                    IpAddr::V6(ip) => {
                        dst.push('[');
                        put_ip(&mut dst, ip.into());
                        dst.push(']');
                    }
                }
                dst.push(':');
                put_dec(&mut dst, ep.port.into());
                let then = format!(
                    "meta l4proto {} update @{} {{ {} . {key} timeout {}s }} dnat {} to {dst}",
                    self.proto,
                    sets::AFFINITY,
                    fam.saddr(),
                    aff.timeout_seconds,
                    fam.f.as_str()
                );
                rules.push(Rule::new(format!(
                    "{} . {key} @{} {then}",
                    fam.saddr(),
                    sets::AFFINITY
                )));
                picks.push(then);
            }
            let n = picks.len();
            for (i, then) in picks.into_iter().enumerate() {
                if i + 1 < n {
                    rules.push(Rule::new(format!("numgen random mod {} 0 {then}", n - i)));
                } else {
                    rules.push(Rule::new(then));
                }
            }
            let name = format!("{prefix}-{}", self.base);
            self.ensure_chain(&name, rules);
        }
        self.out.affinity_ids = ids.into_iter().collect();
    }
}

/// Everything one service port contributes.
pub(crate) fn service_rules(ctx: &Ctx, sp: &ServicePort) -> Result<ServiceRules, GenError> {
    if IpFamily::of(&sp.cluster_ip) != ctx.fg.family {
        return Err(GenError::Unsupported {
            object: sp.name.to_string(),
            reason: format!("ClusterIP {} is not {}", sp.cluster_ip, ctx.fg.family),
        });
    }
    let mut s = SvcCtx {
        ctx,
        sp,
        proto: sp.name.protocol.as_str(),
        base: names::service_base(&sp.name),
        comment: names::service_comment(&sp.name),
        out: ServiceRules::default(),
    };
    let d = sp.decisions.clone();
    let same_family = |ip: &IpAddr| IpFamily::of(ip) == ctx.fg.family;

    s.affinity_chains();

    // ClusterIP.
    s.elem(sets::CLUSTER_IPS, sp.cluster_ip.to_string(), None, false);
    let cip_key = s.vip_key(sp.cluster_ip);
    let internal = if d.has_internal_endpoints {
        s.policy_target(d.internal_policy_chain, Via::Vip(sp.cluster_ip))
    } else {
        None
    };
    match internal {
        Some(target) => s.elem(
            sets::SERVICE_IPS,
            cip_key,
            Some(format!("goto {target}")),
            true,
        ),
        None => s.elem(
            sets::NO_ENDPOINT_SERVICES,
            cip_key,
            Some(verdict(d.internal_verdict)),
            true,
        ),
    }

    // ExternalIPs and VIP-mode LoadBalancer IPs.
    let mut vips: Vec<IpAddr> = sp
        .external_ips
        .iter()
        .copied()
        .filter(same_family)
        .collect();
    let lb_ips: Vec<IpAddr> = sp.vip_load_balancer_ips().filter(same_family).collect();
    vips.extend(lb_ips.iter().copied());
    vips.sort();
    vips.dedup();
    for ip in &vips {
        let key = s.vip_key(*ip);
        let sets = (sets::SERVICE_IPS, sets::NO_ENDPOINT_SERVICES);
        external_elems(&mut s, &d, Via::Vip(*ip), key, sets);
    }

    // NodePort.
    if let Some(np) = sp.node_port {
        let key = format!("{} . {np}", s.proto);
        let sets = (sets::SERVICE_NODEPORTS, sets::NO_ENDPOINT_NODEPORTS);
        external_elems(&mut s, &d, Via::NodePort(np), key, sets);
    }

    // LoadBalancerSourceRanges: a firewall chain, entered pre-DNAT.
    if d.source_ranges_apply && !lb_ips.is_empty() {
        let ranges: Vec<_> = sp
            .source_ranges
            .iter()
            .filter(|r| kproxy_graph::IpFamily::of_net(r) == ctx.fg.family)
            .collect();
        let mut allowed: Vec<IpNet> = ranges.iter().map(|r| **r).collect();
        // A load balancer that hairpins traffic from a node back to it
        // uses its own IP as source; kube-proxy allows the LB IPs when a
        // range contains a node IP.
        if ranges
            .iter()
            .any(|r| ctx.fg.node_ips.iter().any(|ip| r.contains(ip)))
        {
            allowed.extend(lb_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        let allowed: Vec<String> = disjoint_cidrs(allowed)
            .iter()
            .map(|n| n.to_string())
            .collect();
        let name = format!("firewall-{}", s.base);
        let rule = if allowed.is_empty() {
            Rule::new("drop")
        } else {
            Rule::new(format!(
                "{} != {{ {} }} drop",
                ctx.fam.saddr(),
                allowed.join(", ")
            ))
        };
        s.ensure_chain(&name, vec![rule]);
        for ip in &lb_ips {
            s.elem(
                sets::FIREWALL_IPS,
                s.vip_key(*ip),
                Some(format!("goto {name}")),
                true,
            );
        }
    }

    // Hairpin: a local endpoint reaching itself through the service.
    for ep in &sp.reachable_endpoints {
        if ep.is_local && same_family(&ep.ip) {
            s.elem(
                sets::HAIRPIN,
                format!("{ip} . {ip} . {} . {}", s.proto, ep.port, ip = ep.ip),
                None,
                false,
            );
        }
    }

    s.out.chains.sort_by(|a, b| a.name.cmp(&b.name));
    s.out.elems.shrink_to_fit();
    s.out.lb.sort();
    s.out.lb.dedup();
    s.out.lb.shrink_to_fit();
    Ok(s.out)
}

/// Add the shared load-balancing chains `lbs` (and the chains they go to).
pub(crate) fn lb_closure<'a>(lbs: impl IntoIterator<Item = &'a LbChain>) -> BTreeSet<LbChain> {
    let mut all = BTreeSet::new();
    for lb in lbs {
        all.insert(*lb);
        if let Some(i) = lb.inner() {
            all.insert(i);
        }
    }
    all
}

/// The elements of an external destination `key` (reached `via`): a goto
/// to its external target in `services` when the external chain is used,
/// and the no-endpoint verdict in `no_endpoints` when there are no
/// external endpoints.
fn external_elems(
    s: &mut SvcCtx<'_, '_>,
    d: &kproxy_graph::Decisions,
    via: Via,
    key: String,
    (services, no_endpoints): (&'static str, &'static str),
) {
    if d.uses_external_chain
        && let Some(target) = s.external_target(via)
    {
        s.elem(services, key.clone(), Some(format!("goto {target}")), true);
    }
    if !d.has_external_endpoints {
        let verdict = Some(verdict(d.external_verdict));
        s.elem(no_endpoints, key, verdict, true);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::{put_dec, put_ip};

    proptest! {
        #[test]
        fn addresses_and_numbers_are_written_as_display_writes_them(
            v4 in any::<u32>(),
            v6 in any::<u128>(),
            n in any::<u64>(),
        ) {
            for ip in [IpAddr::from(Ipv4Addr::from(v4)), IpAddr::from(Ipv6Addr::from(v6))] {
                let mut out = String::from("x");
                put_ip(&mut out, ip);
                prop_assert_eq!(out, format!("x{ip}"));
            }
            let mut out = String::new();
            put_dec(&mut out, n);
            prop_assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn edge_values_are_written_as_display_writes_them() {
        for (ip, text) in [
            (Ipv4Addr::new(0, 0, 0, 0), "0.0.0.0"),
            (Ipv4Addr::new(10, 100, 9, 255), "10.100.9.255"),
        ] {
            let mut out = String::new();
            put_ip(&mut out, ip.into());
            assert_eq!(out, text);
        }
        for n in [0, 9, 10, 99, 100, 65535, u64::MAX] {
            let mut out = String::new();
            put_dec(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }
}
