//! kproxy's packet tracers: explain what a node's ruleset does to one new
//! connection, from the ruleset's own text.
//!
//! - [`iptables::IptablesRuleset`] reads iptables-save / iptables-restore
//!   text (both families, with kproxy's `# IPv4` / `# IPv6` headers);
//! - [`nftables::NftRuleset`] reads `nft -f` scripts and `nft list table`
//!   output;
//! - both implement [`Tracer`]: [`Tracer::trace`] walks a [`Packet`]
//!   through the netfilter hooks in kernel order (prerouting or output, the
//!   DNAT, then input / forward / output filtering, then postrouting),
//!   following every random branch with its probability, and returns a
//!   [`Trace`]: per [`Branch`] the hooks, chains and matching rules, and the
//!   [`Outcome`] (endpoints with probabilities, masquerading, REJECT, DROP
//!   or not handled);
//! - [`report`] prints a trace as text, JSON or Graphviz dot (one
//!   connection, or a Service's connections together);
//! - [`diff`] compares two rulesets of one backend by meaning (what a sync
//!   would change);
//! - [`predict`] is the one-call form for differential tests against the
//!   kernel; [`service_connections`] lists a Service's representative
//!   connections.
//!
//! Anything a tracer does not understand is a [`TraceError`] naming the
//! rule or statement: a tracer that guessed would explain the wrong thing.
//! Rules it cannot read (other programs' rules on a live node) are kept and
//! listed by [`Tracer::unknown_rules`]; a trace that reaches one fails,
//! unless the rule's understood matches already rule the connection out.

#![deny(missing_docs)]

/// Implements [`Tracer`] for a ruleset that is a [`HookRunner`]: check the
/// ruleset with `$check`, then walk the hooks; `unknown_rules` is the
/// ruleset's own `unknown`.
macro_rules! hook_tracer {
    ($ruleset:ty, $backend:literal, $check:ident) => {
        impl $crate::Tracer for $ruleset {
            fn trace(
                &self,
                packet: &$crate::Packet,
                node: &$crate::Node,
            ) -> Result<$crate::Trace, $crate::TraceError> {
                self.$check()?;
                $crate::walk($backend, self, packet, node)
            }

            fn unknown_rules(&self) -> Vec<String> {
                self.unknown()
            }
        }
    };
}

pub mod diff;
pub mod iptables;
pub mod nftables;
pub mod report;
mod walk;

pub(crate) use walk::{Flow, Flows, HookRunner, Hooked, State, check_depth, through_chains, walk};

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use kproxy_graph::{BackendKind, IpFamily, Protocol};
use serde::Serialize;

/// An error while reading a ruleset or tracing a packet.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The ruleset text could not be read.
    #[error("line {line}: {reason}: {text}")]
    Parse {
        /// 1-based line number in the ruleset text.
        line: usize,
        /// The offending line (or statement).
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule the tracer cannot evaluate.
    #[error("cannot evaluate rule in chain {chain}: {reason}: {rule}")]
    Unsupported {
        /// The chain holding the rule.
        chain: String,
        /// The rule's text.
        rule: String,
        /// What the tracer does not understand.
        reason: String,
    },
    /// The ruleset refers to something it does not define.
    #[error("{0}")]
    Invalid(String),
}

/// Where a simulated connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// It arrives on an interface (from a pod or from outside the node):
    /// prerouting first.
    Remote,
    /// The node itself opens it (the source is a node address): output
    /// first.
    Local,
}

/// The first packet of a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dport: u16,
    /// Transport protocol.
    #[serde(serialize_with = "ser_proto")]
    pub proto: Protocol,
    /// The interface it arrives on (remote origin); `eth0` when not given.
    pub iif: Option<String>,
}

fn ser_proto<S: serde::Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

impl Packet {
    /// A packet `src -> dst:dport/proto`.
    pub fn new(src: IpAddr, dst: IpAddr, dport: u16, proto: Protocol) -> Self {
        Packet {
            src,
            dst,
            dport,
            proto,
            iif: None,
        }
    }

    /// The packet's family (that of its destination).
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.dst)
    }
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} -> {}",
            self.proto.as_str().to_uppercase(),
            self.src,
            SocketAddr::new(self.dst, self.dport)
        )
    }
}

/// What the tracer must know about the node: its addresses (`addrtype
/// LOCAL`, `fib ... type local`; loopback is always local).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The node's addresses.
    pub local_ips: Vec<IpAddr>,
}

impl Node {
    /// A node with these addresses.
    pub fn new(local_ips: Vec<IpAddr>) -> Self {
        Node { local_ips }
    }

    /// Whether `ip` is an address of this node (or loopback).
    pub fn is_local(&self, ip: &IpAddr) -> bool {
        ip.is_loopback() || self.local_ips.contains(ip)
    }

    /// Where a packet from `src` starts.
    pub fn origin(&self, src: &IpAddr) -> Origin {
        if self.is_local(src) {
            Origin::Local
        } else {
            Origin::Remote
        }
    }
}

/// A netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Before routing, for arriving packets.
    Prerouting,
    /// Packets for the node itself.
    Input,
    /// Packets routed through the node.
    Forward,
    /// Packets the node sends.
    Output,
    /// After routing, for leaving packets.
    Postrouting,
}

impl Hook {
    /// The lower-case name (`prerouting`).
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
            Hook::Postrouting => "postrouting",
        }
    }
}

/// A final verdict for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    /// The packet passes (possibly DNATed).
    Accept,
    /// Silently dropped.
    Drop,
    /// Rejected (ICMP error or TCP reset).
    Reject,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Accept => "ACCEPT",
            Verdict::Drop => "DROP",
            Verdict::Reject => "REJECT",
        })
    }
}

/// One rule that matched (or a chain's policy), in the order evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The chain the rule is in.
    pub chain: String,
    /// The rule as written in the ruleset (or `policy ACCEPT`).
    pub rule: String,
    /// Call depth (0 = the hook's base chain).
    pub depth: usize,
    /// What happened (`random branch 1/2 (50%)`, `mark 0x4000`, ...).
    pub note: Option<String>,
}

/// One base chain (iptables: table + built-in chain; nftables: base chain)
/// the packet went through.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookVisit {
    /// The hook.
    pub hook: Hook,
    /// The base chain, as the backend names it (`nat PREROUTING`,
    /// `nat-prerouting (nat, priority -100)`).
    pub base: String,
    /// Rules that matched, in order.
    pub events: Vec<Event>,
    /// The chain call stack when the base chain's verdict was reached
    /// (base chain first).
    pub stack: Vec<String>,
    /// What the base chain decided (`ACCEPT`, `DNAT to ...`, ...).
    pub result: String,
}

/// One way the connection can go (random choices fix one branch).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Branch {
    /// Probability of this branch.
    pub probability: f64,
    /// The base chains traversed, in kernel order.
    pub visits: Vec<HookVisit>,
    /// The DNAT destination, if any.
    pub dnat: Option<SocketAddr>,
    /// The source is masqueraded in postrouting.
    pub masquerade: bool,
    /// The final verdict.
    pub verdict: Verdict,
}

/// A traced connection: every branch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    /// The backend whose ruleset was traced (`iptables`, `nftables`).
    pub backend: String,
    /// The packet.
    pub packet: Packet,
    /// Where it starts.
    pub origin: Origin,
    /// Every branch, in evaluation order.
    pub branches: Vec<Branch>,
}

impl Trace {
    /// The outcome, merged over branches.
    pub fn outcome(&self) -> Outcome {
        Outcome::from_branches(&self.branches)
    }
}

/// One possible result of a connection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomePart {
    /// The verdict.
    pub verdict: Verdict,
    /// Where it was DNATed to (accepted connections only).
    pub dnat: Option<SocketAddr>,
    /// Whether the source is masqueraded (accepted connections only).
    pub masquerade: bool,
    /// The probability.
    pub probability: f64,
}

/// What happens to a connection: the distinct results with their
/// probabilities, sorted (verdict, destination, masquerade).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// The results.
    pub parts: Vec<OutcomePart>,
}

/// Probabilities closer than this are equal (iptables-save prints 11
/// decimals; products of several branches accumulate rounding).
pub const PROBABILITY_TOLERANCE: f64 = 1e-6;

impl Outcome {
    /// Merge branches with the same result.
    pub fn from_branches(branches: &[Branch]) -> Outcome {
        let mut merged: BTreeMap<(Verdict, Option<SocketAddr>, bool), f64> = BTreeMap::new();
        for b in branches {
            // DNAT and masquerade matter only for connections that pass.
            let key = if b.verdict == Verdict::Accept {
                (b.verdict, b.dnat, b.masquerade)
            } else {
                (b.verdict, None, false)
            };
            *merged.entry(key).or_default() += b.probability;
        }
        Outcome {
            parts: merged
                .into_iter()
                .filter(|(_, p)| *p > PROBABILITY_TOLERANCE)
                .map(|((verdict, dnat, masquerade), probability)| OutcomePart {
                    verdict,
                    dnat,
                    masquerade,
                    probability,
                })
                .collect(),
        }
    }

    /// Same results with the same probabilities (within
    /// [`PROBABILITY_TOLERANCE`]).
    pub fn same_as(&self, other: &Outcome) -> bool {
        self.parts.len() == other.parts.len()
            && self.parts.iter().zip(&other.parts).all(|(a, b)| {
                a.verdict == b.verdict
                    && a.dnat == b.dnat
                    && a.masquerade == b.masquerade
                    && (a.probability - b.probability).abs() < PROBABILITY_TOLERANCE
            })
    }

    /// A single certain verdict with no DNAT (`DROP`, `REJECT`, or accepted
    /// untouched).
    pub fn only(&self) -> Option<&OutcomePart> {
        match self.parts.as_slice() {
            [p] => Some(p),
            _ => None,
        }
    }

    /// The connection is accepted untouched (no DNAT, no masquerade): no
    /// service rule applied.
    pub fn is_not_handled(&self) -> bool {
        matches!(self.only(), Some(p) if p.verdict == Verdict::Accept && p.dnat.is_none())
    }
}

fn percent(p: f64) -> String {
    let v = p * 100.0;
    if (v - v.round()).abs() < 0.05 {
        format!("{}%", v.round())
    } else {
        format!("{v:.1}%")
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dnat: Vec<&OutcomePart> = self.parts.iter().filter(|p| p.dnat.is_some()).collect();
        let all_dnat_same_masq = !dnat.is_empty()
            && dnat.len() == self.parts.len()
            && dnat.iter().all(|p| p.masquerade == dnat[0].masquerade);
        if all_dnat_same_masq {
            let targets: Vec<String> = dnat
                .iter()
                .map(|p| match p.dnat {
                    Some(d) if dnat.len() > 1 => format!("{d} ({})", percent(p.probability)),
                    Some(d) => d.to_string(),
                    None => String::new(),
                })
                .collect();
            return write!(
                f,
                "DNAT to {}, {}",
                targets.join(" or "),
                if dnat[0].masquerade {
                    "masqueraded"
                } else {
                    "source preserved (not masqueraded)"
                }
            );
        }
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|p| {
                let what = match (p.verdict, p.dnat) {
                    (Verdict::Accept, Some(d)) => format!(
                        "DNAT to {d}, {}",
                        if p.masquerade {
                            "masqueraded"
                        } else {
                            "not masqueraded"
                        }
                    ),
                    (Verdict::Accept, None) if p.masquerade => {
                        "not handled (accepted without DNAT), masqueraded".to_string()
                    }
                    (Verdict::Accept, None) => "not handled (accepted without DNAT)".to_string(),
                    (v, _) => v.to_string(),
                };
                if self.parts.len() > 1 {
                    format!("{what} ({})", percent(p.probability))
                } else {
                    what
                }
            })
            .collect();
        if parts.is_empty() {
            return f.write_str("no branch");
        }
        f.write_str(&parts.join("; "))
    }
}

/// A ruleset that can trace packets.
pub trait Tracer {
    /// Simulate the first packet of a new connection.
    fn trace(&self, packet: &Packet, node: &Node) -> Result<Trace, TraceError>;

    /// Rules the tracer did not understand (`chain: rule (why)`), kept so
    /// that other programs' rules do not stop traces that never reach
    /// them; a trace that reaches one fails naming it.
    fn unknown_rules(&self) -> Vec<String>;
}

/// Which tracer reads a backend's text.
pub fn tracer_for(kind: BackendKind, text: &str) -> Result<Box<dyn Tracer>, TraceError> {
    Ok(match kind {
        BackendKind::IptablesLegacy | BackendKind::IptablesNft => {
            Box::new(iptables::IptablesRuleset::parse(text)?)
        }
        BackendKind::Nftables => Box::new(nftables::NftRuleset::parse(text)?),
    })
}

/// The outcome a backend's ruleset text predicts for one new connection
/// from `from` to `to` (for differential tests against the kernel).
pub fn predict(
    backend: BackendKind,
    ruleset_text: &str,
    node_ips: &[IpAddr],
    from: IpAddr,
    to: SocketAddr,
    proto: Protocol,
) -> Result<Outcome, TraceError> {
    let tracer = tracer_for(backend, ruleset_text)?;
    let packet = Packet::new(from, to.ip(), to.port(), proto);
    let node = Node::new(node_ips.to_vec());
    Ok(tracer.trace(&packet, &node)?.outcome())
}

/// Representative new connections to a Service (`namespace/name`), per
/// family: to each ClusterIP from a pod, from outside and from the node;
/// to each NodePort (on the node's primary address), external IP and
/// VIP-mode LoadBalancer IP from outside (with source ranges: from a client
/// inside them and from one outside). The pod source is taken from the
/// configured cluster CIDR of the family (when there is one).
pub fn service_connections(
    graph: &kproxy_graph::ServiceGraph,
    namespace: &str,
    name: &str,
) -> Vec<Packet> {
    let mut out = Vec::new();
    for (fam, fg) in &graph.families {
        let external: IpAddr = match fam {
            IpFamily::V4 => IpAddr::from([203, 0, 113, 2]),
            IpFamily::V6 => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]),
        };
        // A pod address: the cluster CIDR's seventh host.
        let pod = graph
            .config
            .cluster_cidrs
            .iter()
            .find(|n| IpFamily::of_net(n) == *fam)
            .and_then(|n| n.hosts().nth(6));
        let node = graph.node.primary_ip(*fam);
        for sp in fg.services.values() {
            if sp.name.namespace != namespace || sp.name.name != name {
                continue;
            }
            let proto = sp.name.protocol;
            for src in pod.into_iter().chain([external]).chain(node) {
                out.push(Packet::new(src, sp.cluster_ip, sp.port, proto));
            }
            if let (Some(np), Some(n)) = (sp.node_port, node) {
                out.push(Packet::new(external, n, np, proto));
            }
            for ip in &sp.external_ips {
                out.push(Packet::new(external, *ip, sp.port, proto));
            }
            // With source ranges: a client inside them and one outside.
            let mut lb_clients = vec![external];
            if let Some(first) = sp.source_ranges.first() {
                let inside = first.hosts().next().unwrap_or(first.addr());
                let candidates: [IpAddr; 3] = match fam {
                    IpFamily::V4 => [
                        external,
                        IpAddr::from([198, 18, 0, 9]),
                        IpAddr::from([192, 0, 2, 99]),
                    ],
                    IpFamily::V6 => [
                        external,
                        IpAddr::from([0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 9]),
                        IpAddr::from([0xfc00, 0, 0, 0, 0, 0, 0, 9]),
                    ],
                };
                let outside = candidates
                    .into_iter()
                    .find(|c| !sp.source_ranges.iter().any(|r| r.contains(c)));
                lb_clients = std::iter::once(inside).chain(outside).collect();
            }
            for ip in sp.vip_load_balancer_ips() {
                for c in &lb_clients {
                    out.push(Packet::new(*c, ip, sp.port, proto));
                }
            }
        }
    }
    out
}

/// Parse `IP:PORT/PROTO` (`192.168.49.2:30007/tcp`, `[fd00::1]:80/udp`;
/// the protocol defaults to TCP).
pub fn parse_destination(s: &str) -> Result<(SocketAddr, Protocol), String> {
    let (addr, proto) = match s.rsplit_once('/') {
        Some((a, p)) => {
            let proto = match p.to_ascii_lowercase().as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                "sctp" => Protocol::Sctp,
                other => {
                    return Err(format!(
                        "{s:?}: unknown protocol {other:?} (tcp, udp or sctp)"
                    ));
                }
            };
            (a, proto)
        }
        None => (s, Protocol::Tcp),
    };
    let sa: SocketAddr = addr.parse().map_err(|_| {
        format!("{s:?}: expected IP:PORT/PROTO, e.g. 10.96.0.10:53/udp or [fd00::a]:80/tcp")
    })?;
    Ok((sa, proto))
}

/// Format a probability as a percentage (`50%`, `33.3%`).
pub fn format_percent(p: f64) -> String {
    percent(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        let (sa, p) = parse_destination("192.168.49.2:30007/tcp").expect("valid");
        assert_eq!(sa.to_string(), "192.168.49.2:30007");
        assert_eq!(p, Protocol::Tcp);
        let (sa, p) = parse_destination("[fd00::1]:53/UDP").expect("valid");
        assert_eq!(sa.to_string(), "[fd00::1]:53");
        assert_eq!(p, Protocol::Udp);
        assert!(parse_destination("1.2.3.4/tcp").is_err());
        assert!(parse_destination("1.2.3.4:80/icmp").is_err());
    }

    #[test]
    fn percentages() {
        assert_eq!(percent(0.5), "50%");
        assert_eq!(percent(1.0 / 3.0), "33.3%");
    }
}
