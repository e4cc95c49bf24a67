//! Stale UDP conntrack cleanup (upstream `CleanStaleEntries` in
//! pkg/proxy/conntrack/cleanup.go).
//!
//! UDP has no connection teardown: a conntrack entry created while a
//! service had no endpoints, or one pointing at an endpoint that is gone,
//! keeps steering (or black-holing) a client's packets until it times out,
//! which for DNS clients reusing a source port is forever. After a sync,
//! for every UDP service port that changed (every one after a full sync),
//! flows whose original destination is the service (ClusterIP, external
//! IP, LB IP or NodePort) and whose reply source is not a serving endpoint
//! are deleted. That includes the scale-to-zero case (every flow to the
//! service goes) and service ports that were removed.
//!
//! The flows are read and deleted over ctnetlink (kproxy-netlink's
//! `conntrack` module), as kube-proxy's `CleanStaleEntries` does: one dump
//! of the family's UDP flows, filtered on the protocol in the kernel, then
//! a delete of each stale flow by its tuple and id, batched many to a
//! message. No `conntrack` process is run. If the kernel has no ctnetlink
//! the cleanup is skipped with one warning.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use kproxy_graph::{ChangeSet, IpFamily, Protocol, ServiceGraph, ServicePort};
use kproxy_netlink::conntrack::{self, IPPROTO_UDP};
use kproxy_netlink::{Family, NfSocket};

/// One deletion target set for a family.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Targets {
    /// `(service IP, port)` to the serving endpoints (`ip`, `port`).
    pub vips: BTreeMap<(IpAddr, u16), BTreeSet<(IpAddr, u16)>>,
    /// NodePort to the serving endpoints.
    pub node_ports: BTreeMap<u16, BTreeSet<(IpAddr, u16)>>,
    /// The node's addresses (NodePort flows are matched on these).
    pub node_ips: BTreeSet<IpAddr>,
}

impl Targets {
    fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.node_ports.is_empty()
    }

    fn add(&mut self, sp: &ServicePort, serving: bool) {
        let eps: BTreeSet<(IpAddr, u16)> = if serving {
            sp.reachable_endpoints
                .iter()
                .map(|e| (e.ip, e.port))
                .collect()
        } else {
            BTreeSet::new()
        };
        let mut vips = vec![sp.cluster_ip];
        vips.extend(sp.external_ips.iter().copied());
        vips.extend(sp.vip_load_balancer_ips());
        for ip in vips {
            self.vips.insert((ip, sp.port), eps.clone());
        }
        if let Some(np) = sp.node_port {
            self.node_ports.insert(np, eps);
        }
    }

    /// Whether a flow is stale.
    pub fn is_stale(&self, f: &Flow) -> bool {
        let reply = (f.reply_src, f.reply_sport);
        if let Some(eps) = self.vips.get(&(f.orig_dst, f.orig_dport)) {
            return !eps.contains(&reply);
        }
        if self.node_ips.contains(&f.orig_dst)
            && let Some(eps) = self.node_ports.get(&f.orig_dport)
        {
            return !eps.contains(&reply);
        }
        false
    }
}

/// The UDP service ports to check, per family: changed, added and removed
/// ones (removed ones have no serving endpoint left).
pub fn targets(
    prev: Option<&ServiceGraph>,
    next: &ServiceGraph,
    changes: Option<&ChangeSet>,
) -> BTreeMap<IpFamily, Targets> {
    let mut out = BTreeMap::new();
    for (family, fg) in &next.families {
        let mut t = Targets {
            node_ips: next
                .node
                .ips
                .iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == *family)
                .collect(),
            ..Targets::default()
        };
        let fam_changes = changes.map(|c| c.family(*family));
        for sp in fg.services.values() {
            if sp.name.protocol != Protocol::Udp {
                continue;
            }
            let relevant = match &fam_changes {
                None => true,
                Some(c) => c.added.contains(&sp.name) || c.changed.contains(&sp.name),
            };
            if relevant {
                t.add(sp, true);
            }
        }
        if let (Some(prev), Some(c)) = (prev, &fam_changes)
            && let Some(pf) = prev.families.get(family)
        {
            for name in &c.removed {
                if let Some(sp) = pf.services.get(name)
                    && sp.name.protocol == Protocol::Udp
                {
                    t.add(sp, false);
                }
            }
        }
        if !t.is_empty() {
            out.insert(*family, t);
        }
    }
    out
}

/// One UDP flow: the parts of a conntrack entry the cleanup looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Original source.
    pub orig_src: IpAddr,
    /// Original destination (the service address).
    pub orig_dst: IpAddr,
    /// Original source port.
    pub orig_sport: u16,
    /// Original destination port.
    pub orig_dport: u16,
    /// Reply source (the DNAT target, or the original destination).
    pub reply_src: IpAddr,
    /// Reply source port.
    pub reply_sport: u16,
}

impl From<&conntrack::Flow> for Flow {
    fn from(f: &conntrack::Flow) -> Self {
        Flow {
            orig_src: f.orig.src,
            orig_dst: f.orig.dst,
            orig_sport: f.orig.sport,
            orig_dport: f.orig.dport,
            reply_src: f.reply.src,
            reply_sport: f.reply.sport,
        }
    }
}

/// What one cleanup did.
#[derive(Debug, Default)]
pub struct Report {
    /// How long it took.
    pub duration: Duration,
    /// Deleted flows per family.
    pub deleted: Vec<(IpFamily, u64)>,
}

/// The cleanup, with its ctnetlink socket (opened on first use, in the
/// daemon's network namespace).
#[derive(Debug, Default)]
pub struct Conntrack {
    sock: Option<NfSocket>,
    /// The kernel has no ctnetlink: warned once, never tried again.
    unavailable: bool,
}

fn nl_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

/// errnos that mean the kernel has no ctnetlink (no `nf_conntrack_netlink`).
fn unsupported(e: &kproxy_netlink::Error) -> bool {
    const EINVAL: i32 = 22;
    const EPROTONOSUPPORT: i32 = 93;
    const EOPNOTSUPP: i32 = 95;
    matches!(e.errno(), Some(EINVAL | EPROTONOSUPPORT | EOPNOTSUPP))
}

impl Conntrack {
    /// A cleaner working in this process's network namespace.
    pub fn new() -> Self {
        Conntrack::default()
    }

    fn socket(&mut self) -> Result<&mut NfSocket, kproxy_netlink::Error> {
        NfSocket::kept(&mut self.sock, None)
    }

    /// Delete the flows `t` calls stale in `family`: a dump of the
    /// family's UDP flows (filtered on the protocol in the kernel), then
    /// one delete per stale flow, many per message batch.
    fn clean_family(
        &mut self,
        family: IpFamily,
        t: &Targets,
    ) -> Result<conntrack::Deleted, kproxy_netlink::Error> {
        let fam = nl_family(family);
        let sock = self.socket()?;
        let mut stale = Vec::new();
        conntrack::dump(sock, fam, IPPROTO_UDP, |f| {
            if t.is_stale(&Flow::from(f)) {
                stale.push(*f);
            }
        })?;
        let mut refused = BTreeMap::<i32, u64>::new();
        let d = conntrack::delete(sock, fam, &stale, |errno| {
            *refused.entry(errno).or_default() += 1;
        })?;
        for (errno, n) in refused {
            tracing::warn!(family = %family, n, error = %std::io::Error::from_raw_os_error(errno),
                "the kernel refused to delete stale UDP conntrack entries");
        }
        Ok(d)
    }

    /// Delete stale UDP flows after a sync from `prev` to `next`.
    pub fn cleanup(
        &mut self,
        prev: Option<&ServiceGraph>,
        next: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Report {
        let started = Instant::now();
        let mut report = Report::default();
        if self.unavailable {
            return report;
        }
        for (family, t) in targets(prev, next, changes) {
            match self.clean_family(family, &t) {
                Ok(d) => {
                    if d.deleted > 0 {
                        tracing::info!(family = %family, deleted = d.deleted, gone = d.gone,
                            "deleted stale UDP conntrack entries");
                    }
                    report.deleted.push((family, d.deleted));
                }
                Err(e) if unsupported(&e) => {
                    tracing::warn!(error = %e, "the kernel has no ctnetlink; stale UDP flows will not be cleaned");
                    self.unavailable = true;
                    break;
                }
                Err(e) => {
                    // A fresh socket next time (a failed exchange may
                    // leave replies behind).
                    self.sock = None;
                    tracing::warn!(family = %family, error = %e, "stale UDP flows not cleaned");
                }
            }
        }
        report.duration = started.elapsed();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_flows() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut t = Targets::default();
        t.vips
            .insert((ip("172.30.0.41"), 53), [(ip("10.180.0.1"), 53)].into());
        t.vips.insert((ip("172.30.0.42"), 53), BTreeSet::new());
        t.node_ports.insert(30053, [(ip("10.180.0.1"), 53)].into());
        t.node_ips.insert(ip("192.168.0.2"));
        let flow = |orig_dst: &str, reply_src: &str| {
            let (o, r): (std::net::SocketAddr, std::net::SocketAddr) =
                (orig_dst.parse().unwrap(), reply_src.parse().unwrap());
            Flow {
                orig_src: ip("10.0.0.2"),
                orig_dst: o.ip(),
                orig_sport: 40000,
                orig_dport: o.port(),
                reply_src: r.ip(),
                reply_sport: r.port(),
            }
        };
        // (original destination, reply source, stale, why)
        let cases = [
            ("172.30.0.41:53", "10.180.0.1:53", false, "serving endpoint"),
            ("172.30.0.41:53", "10.180.0.9:53", true, "gone endpoint"),
            ("172.30.0.41:53", "172.30.0.41:53", true, "never DNATed"),
            ("172.30.0.42:53", "10.180.0.1:53", true, "scaled to zero"),
            ("172.30.0.43:53", "10.1.1.1:53", false, "not a service"),
            (
                "192.168.0.2:30053",
                "192.168.0.2:30053",
                true,
                "nodeport, no DNAT",
            ),
            (
                "192.168.0.2:30053",
                "10.180.0.1:53",
                false,
                "nodeport, serving",
            ),
            (
                "8.8.8.8:30053",
                "8.8.8.8:30053",
                false,
                "not a node address",
            ),
        ];
        for (orig_dst, reply_src, stale, why) in cases {
            assert_eq!(t.is_stale(&flow(orig_dst, reply_src)), stale, "{why}");
        }
    }
}
