//! The state of a walk through one table (`Ctx`) and match evaluation:
//! the probability that a rule's matches hold for a packet.

use crate::{Hook, Node, Packet, State, TraceError};

use super::{IptMatch, IptRule, Tables, protocol_number};

pub(super) struct Ctx<'a> {
    pub(super) tables: &'a Tables,
    pub(super) table: &'a str,
    pub(super) packet: &'a Packet,
    pub(super) node: &'a Node,
    pub(super) hook: Hook,
}

impl Ctx<'_> {
    pub(super) fn in_iface(&self) -> Option<String> {
        match (self.node.origin(&self.packet.src), self.hook) {
            (crate::Origin::Local, Hook::Input) => Some("lo".into()),
            (crate::Origin::Local, _) => None,
            (crate::Origin::Remote, Hook::Prerouting | Hook::Input | Hook::Forward) => Some(
                self.packet
                    .iif
                    .clone()
                    .unwrap_or_else(|| "eth0".to_string()),
            ),
            (crate::Origin::Remote, _) => None,
        }
    }

    /// Probability that `rule` matches `st` (0 or 1 except for statistic).
    pub(super) fn match_prob(
        &self,
        chain: &str,
        rule: &IptRule,
        st: &State,
    ) -> Result<f64, TraceError> {
        let mut p = 1.0;
        let unsupported = |reason: &str| TraceError::Unsupported {
            chain: chain.to_string(),
            rule: rule.text.clone(),
            reason: reason.to_string(),
        };
        for m in &rule.matches {
            let ok = match m {
                IptMatch::Comment(_) | IptMatch::Nfacct(_) | IptMatch::RecentSet(_) => true,
                IptMatch::Protocol { negated, proto } => {
                    let is = match proto {
                        None => true,
                        Some(n) => *n == protocol_number(self.packet.proto),
                    };
                    is != *negated
                }
                IptMatch::Source { negated, net } => net.contains(&self.packet.src) != *negated,
                IptMatch::Destination { negated, net } => net.contains(&st.dst) != *negated,
                IptMatch::InInterface { negated, name } => {
                    let is = match self.in_iface() {
                        None => false,
                        Some(i) => match name.strip_suffix('+') {
                            Some(prefix) => i.starts_with(prefix),
                            None => &i == name,
                        },
                    };
                    is != *negated
                }
                IptMatch::DestPort { negated, lo, hi } => {
                    if !rule.matches.iter().any(|m| {
                        matches!(
                            m,
                            IptMatch::Protocol {
                                negated: false,
                                proto: Some(_)
                            }
                        )
                    }) {
                        return Err(unsupported("--dport without -p"));
                    }
                    (*lo..=*hi).contains(&st.dport) != *negated
                }
                IptMatch::AddrTypeLocal { dst, negated } => {
                    let ip = if *dst { st.dst } else { self.packet.src };
                    self.node.is_local(&ip) != *negated
                }
                IptMatch::CtState { negated, states } => {
                    let mut any = false;
                    for s in states {
                        any |= match s.as_str() {
                            "NEW" => true,
                            "DNAT" => st.dnat.is_some(),
                            "ESTABLISHED" | "RELATED" | "INVALID" | "UNTRACKED" | "SNAT" => false,
                            other => return Err(unsupported(&format!("conntrack state {other}"))),
                        };
                    }
                    any != *negated
                }
                IptMatch::Mark {
                    negated,
                    value,
                    mask,
                } => ((st.mark & mask) == *value) != *negated,
                IptMatch::Probability(q) => {
                    p *= q.clamp(0.0, 1.0);
                    true
                }
                IptMatch::RecentCheck(_) => false,
            };
            if !ok {
                return Ok(0.0);
            }
        }
        if let Some(why) = &rule.unknown {
            // Every understood match holds: what the rest does decides.
            return Err(unsupported(&format!("rule not understood ({why})")));
        }
        Ok(p)
    }
}
