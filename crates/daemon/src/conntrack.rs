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
//! The `conntrack` tool does the listing and deleting (it speaks
//! ctnetlink); if it is missing the cleanup is skipped with one warning.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kproxy_graph::{ChangeSet, IpFamily, Protocol, ServiceGraph, ServicePort};

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

/// One UDP flow as `conntrack -L` prints it.
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

/// Parse one line of `conntrack -L -p udp` output.
pub fn parse_flow(line: &str) -> Option<Flow> {
    let mut srcs = Vec::new();
    let mut dsts = Vec::new();
    let mut sports = Vec::new();
    let mut dports = Vec::new();
    for tok in line.split_whitespace() {
        if let Some((k, v)) = tok.split_once('=') {
            match k {
                "src" => srcs.push(v.parse::<IpAddr>().ok()?),
                "dst" => dsts.push(v.parse::<IpAddr>().ok()?),
                "sport" => sports.push(v.parse::<u16>().ok()?),
                "dport" => dports.push(v.parse::<u16>().ok()?),
                _ => {}
            }
        }
    }
    if srcs.len() < 2 || dsts.is_empty() || sports.len() < 2 || dports.is_empty() {
        return None;
    }
    Some(Flow {
        orig_src: srcs[0],
        orig_dst: dsts[0],
        orig_sport: sports[0],
        orig_dport: dports[0],
        reply_src: srcs[1],
        reply_sport: sports[1],
    })
}

/// The count in conntrack's "N flow entries have been deleted." summary.
fn deleted_count(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let rest = l.split("): ").nth(1).unwrap_or(l);
        let (n, tail) = rest.trim().split_once(' ')?;
        tail.contains("have been deleted").then(|| n.parse().ok())?
    })
}

fn parse_lines(stdout: &[u8]) -> u64 {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| parse_flow(l).is_some())
        .count() as u64
}

/// What one cleanup did.
#[derive(Debug, Default)]
pub struct Report {
    /// How long it took.
    pub duration: Duration,
    /// Deleted flows per family.
    pub deleted: Vec<(IpFamily, u64)>,
}

/// The cleanup, with the tool's availability remembered.
#[derive(Debug, Default)]
pub struct Conntrack {
    unavailable: bool,
}

fn family_flag(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
}

impl Conntrack {
    /// A cleaner.
    pub fn new() -> Self {
        Conntrack::default()
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
            let out = Command::new("conntrack")
                .args(["-L", "-p", "udp", "-f", family_flag(family)])
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output();
            let out = match out {
                Ok(o) if o.status.success() => o,
                Ok(o) => {
                    tracing::warn!(family = %family, status = %o.status, "conntrack -L failed; stale UDP flows not cleaned");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the conntrack tool is not available; stale UDP flows will not be cleaned");
                    self.unavailable = true;
                    return report;
                }
            };
            // One delete per (service, stale reply source) rather than per
            // flow: after a DNS endpoint change thousands of clients may
            // hold flows to the same gone endpoint.
            let groups: BTreeSet<(IpAddr, u16, IpAddr, u16)> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(parse_flow)
                .filter(|f| t.is_stale(f))
                .map(|f| (f.orig_dst, f.orig_dport, f.reply_src, f.reply_sport))
                .collect();
            let mut deleted = 0u64;
            for (dst, dport, rsrc, rsport) in groups {
                let out = Command::new("conntrack")
                    .args([
                        "-D",
                        "-p",
                        "udp",
                        "-f",
                        family_flag(family),
                        "--orig-dst",
                        &dst.to_string(),
                        "--orig-port-dst",
                        &dport.to_string(),
                        "--reply-src",
                        &rsrc.to_string(),
                        "--reply-port-src",
                        &rsport.to_string(),
                    ])
                    .stdin(Stdio::null())
                    .output();
                match out {
                    Ok(o) if o.status.success() => {
                        let n = deleted_count(&String::from_utf8_lossy(&o.stderr))
                            .unwrap_or_else(|| parse_lines(&o.stdout));
                        deleted += n;
                        tracing::debug!(%dst, dport, reply = %rsrc, reply_port = rsport, n,
                            "deleted stale UDP conntrack entries");
                    }
                    // Exit 1 with nothing deleted: the flows expired meanwhile.
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "conntrack -D failed"),
                }
            }
            if deleted > 0 {
                tracing::info!(family = %family, deleted, "deleted stale UDP conntrack entries");
            }
            report.deleted.push((family, deleted));
        }
        report.duration = started.elapsed();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conntrack_lines() {
        let f = parse_flow("udp      17 29 src=10.0.0.2 dst=172.30.0.41 sport=40000 dport=53 [UNREPLIED] src=10.180.0.1 dst=10.0.0.2 sport=5353 dport=40000 mark=0 use=1").unwrap();
        assert_eq!(f.orig_dst, "172.30.0.41".parse::<IpAddr>().unwrap());
        assert_eq!(f.orig_dport, 53);
        assert_eq!(f.reply_src, "10.180.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(f.reply_sport, 5353);
        assert!(
            parse_flow("conntrack v1.4.8 (conntrack-tools): 3 flow entries have been shown.")
                .is_none()
        );
    }

    #[test]
    fn deleted_summary_is_read() {
        assert_eq!(
            deleted_count(
                "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted.\n"
            ),
            Some(3)
        );
        assert_eq!(deleted_count("something else"), None);
    }

    #[test]
    fn stale_flows() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut t = Targets::default();
        t.vips
            .insert((ip("172.30.0.41"), 53), [(ip("10.180.0.1"), 53)].into());
        t.vips.insert((ip("172.30.0.42"), 53), BTreeSet::new());
        t.node_ports.insert(30053, [(ip("10.180.0.1"), 53)].into());
        t.node_ips.insert(ip("192.168.0.2"));
        let flow = |dst: &str, dport: u16, rsrc: &str, rsport: u16| Flow {
            orig_src: ip("10.0.0.2"),
            orig_dst: ip(dst),
            orig_sport: 40000,
            orig_dport: dport,
            reply_src: ip(rsrc),
            reply_sport: rsport,
        };
        assert!(
            !t.is_stale(&flow("172.30.0.41", 53, "10.180.0.1", 53)),
            "serving endpoint"
        );
        assert!(
            t.is_stale(&flow("172.30.0.41", 53, "10.180.0.9", 53)),
            "gone endpoint"
        );
        assert!(
            t.is_stale(&flow("172.30.0.41", 53, "172.30.0.41", 53)),
            "never DNATed"
        );
        assert!(
            t.is_stale(&flow("172.30.0.42", 53, "10.180.0.1", 53)),
            "scaled to zero"
        );
        assert!(
            !t.is_stale(&flow("172.30.0.43", 53, "10.1.1.1", 53)),
            "not a service"
        );
        assert!(
            t.is_stale(&flow("192.168.0.2", 30053, "192.168.0.2", 30053)),
            "nodeport, no DNAT"
        );
        assert!(!t.is_stale(&flow("192.168.0.2", 30053, "10.180.0.1", 53)));
        assert!(
            !t.is_stale(&flow("8.8.8.8", 30053, "8.8.8.8", 30053)),
            "not a node address"
        );
    }
}
