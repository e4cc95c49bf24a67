//! The per-family state while generating (`Ctx`) and the match and
//! target shorthands the generator's modules share.

use std::collections::HashMap;
use std::net::IpAddr;

use kproxy_graph::{FamilyGraph, LocalTraffic, Protocol, ServiceGraph, ServicePortName};

use crate::ir::{Addr, Chain, Match, Rule, Target};

pub(super) fn comment(text: String) -> Match {
    Match::Comment(text)
}

pub(super) fn proto(p: Protocol) -> Match {
    Match::Protocol(p)
}

pub(super) fn dst_ip(ip: IpAddr) -> Match {
    Match::Destination {
        negated: false,
        addr: Addr::Ip(ip),
    }
}

pub(super) fn jump(chain: &str) -> Target {
    Target::Jump(chain.to_string())
}

pub(super) fn ctstate(states: &str) -> Match {
    Match::Conntrack {
        negated: false,
        states: states.into(),
    }
}

pub(super) fn dst_ip_net(net: &str, negated: bool) -> Match {
    Match::Destination {
        negated,
        addr: Addr::Net(net.parse().unwrap_or_default()),
    }
}

pub(super) fn src_net(net: &str, negated: bool) -> Match {
    Match::Source {
        negated,
        addr: Addr::Net(net.parse().unwrap_or_default()),
    }
}

pub(super) fn local_if(lt: &LocalTraffic, negated: bool) -> Option<Match> {
    match lt {
        LocalTraffic::None => None,
        LocalTraffic::Cidr(net) => Some(Match::Source {
            negated,
            addr: Addr::Net(*net),
        }),
        LocalTraffic::Interface(name) => Some(Match::InInterface {
            negated,
            name: name.clone(),
        }),
        LocalTraffic::InterfacePrefix(p) => Some(Match::InInterface {
            negated,
            name: format!("{p}+"),
        }),
    }
}

/// Per-family state while generating.
pub(super) struct Ctx<'a> {
    pub(super) graph: &'a ServiceGraph,
    pub(super) fg: &'a FamilyGraph,
    pub(super) large: bool,
    pub(super) filter: Vec<(&'static str, Vec<Rule>)>,
    pub(super) nat_top: Vec<(&'static str, Vec<Rule>)>,
    pub(super) nat_services: Vec<Chain>,
    /// Chains of unchanged service ports taken from the previous ruleset
    /// ([`generate_reusing`](super::generate_reusing)): used as they are instead of generated.
    pub(super) reuse: HashMap<ServicePortName, Vec<Chain>>,
    /// Count localhost NodePort packets ([`GenOptions::nfacct`](super::GenOptions::nfacct), IPv4 with
    /// localhost NodePorts on).
    pub(super) localhost_nfacct: bool,
}

/// The rules of `chain` among `chains` (the first chain's when it is not
/// there).
fn rules_of<'a>(chains: &'a mut [(&'static str, Vec<Rule>)], chain: &str) -> &'a mut Vec<Rule> {
    let i = chains.iter().position(|(c, _)| *c == chain).unwrap_or(0);
    &mut chains[i].1
}

impl Ctx<'_> {
    pub(super) fn filter_rules(&mut self, chain: &str) -> &mut Vec<Rule> {
        rules_of(&mut self.filter, chain)
    }

    pub(super) fn nat_rules(&mut self, chain: &str) -> &mut Vec<Rule> {
        rules_of(&mut self.nat_top, chain)
    }

    /// kube-proxy's `appendServiceCommentLocked`: no per-endpoint comments
    /// in large-cluster mode.
    pub(super) fn endpoint_comment(&self, text: String) -> Vec<Match> {
        if self.large {
            Vec::new()
        } else {
            vec![comment(text)]
        }
    }
}
