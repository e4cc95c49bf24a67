//! The walk: built-in chains per hook in kernel order, jumps, gotos,
//! returns and targets, and the [`Tracer`](crate::Tracer) for
//! [`IptablesRuleset`].

use std::net::SocketAddr;

use kproxy_graph::IpFamily;

use crate::{Hook, HookRunner, Hooked, Node, Packet, State, TraceError, Verdict};

use super::eval::Ctx;
use super::{IptChain, IptRule, IptTarget, IptablesRuleset, builtin};
use crate::{Flow, Flows};

/// A hook's built-in chain (named after the hook) and the tables that
/// have one, in priority order (raw, mangle, nat destination NAT, filter,
/// security, nat source NAT).
fn hook_chains(hook: Hook) -> (&'static str, &'static [&'static str]) {
    match hook {
        Hook::Prerouting => ("PREROUTING", &["raw", "mangle", "nat"]),
        Hook::Input => ("INPUT", &["mangle", "filter", "security", "nat"]),
        Hook::Forward => ("FORWARD", &["mangle", "filter", "security"]),
        Hook::Output => ("OUTPUT", &["raw", "mangle", "nat", "filter", "security"]),
        Hook::Postrouting => ("POSTROUTING", &["mangle", "nat"]),
    }
}

impl Ctx<'_> {
    fn run_chain(&self, chain: &str, st: State, depth: usize) -> Flows {
        crate::check_depth(chain, depth)?;
        let c = self.tables.chain(self.table, chain).ok_or_else(|| {
            TraceError::Invalid(format!("table {}: no chain {chain}", self.table))
        })?;
        self.run_rules(chain, c, 0, st, depth)
    }

    fn run_rules(
        &self,
        chain: &str,
        c: &IptChain,
        start: usize,
        mut st: State,
        depth: usize,
    ) -> Flows {
        let mut out = Vec::new();
        for (idx, rule) in c.rules.iter().enumerate().skip(start) {
            let p = self.match_prob(chain, rule, &st)?;
            if p <= 0.0 {
                continue;
            }
            if p < 1.0 {
                // Random: the matching branch runs this rule, the rest
                // continues with the next rule.
                let mut taken = st.fork(p);
                taken.event(
                    chain,
                    &rule.text,
                    Some(format!("random, {}", crate::format_percent(p))),
                );
                out.extend(self.apply(chain, c, idx, rule, taken, depth)?);
                continue;
            }
            st.event(chain, &rule.text, None);
            out.extend(self.apply(chain, c, idx, rule, st, depth)?);
            return Ok(out);
        }
        out.push((st, Flow::Return));
        Ok(out)
    }

    /// Run `rule`'s target on a state that matched it.
    fn apply(
        &self,
        chain: &str,
        c: &IptChain,
        idx: usize,
        rule: &IptRule,
        mut st: State,
        depth: usize,
    ) -> Flows {
        let unsupported = |reason: String| TraceError::Unsupported {
            chain: chain.to_string(),
            rule: rule.text.clone(),
            reason,
        };
        let verdict = |mut st: State, v: Verdict, what: String| {
            st.decide(what);
            Ok(vec![(st, Flow::Verdict(v))])
        };
        match &rule.target {
            None => self.run_rules(chain, c, idx + 1, st, depth),
            Some(IptTarget::Accept) => verdict(st, Verdict::Accept, "ACCEPT".into()),
            Some(IptTarget::Drop) => verdict(st, Verdict::Drop, "DROP".into()),
            Some(IptTarget::Reject) => {
                if self.table != "filter" {
                    return Err(unsupported("REJECT outside the filter table".into()));
                }
                verdict(st, Verdict::Reject, "REJECT".into())
            }
            Some(IptTarget::Return) => {
                if builtin(self.table, chain) {
                    // RETURN from a built-in chain applies its policy.
                    return self.policy(chain, c, st);
                }
                Ok(vec![(st, Flow::Return)])
            }
            Some(IptTarget::Dnat { ip, port }) => {
                if self.table != "nat" {
                    return Err(unsupported("DNAT outside the nat table".into()));
                }
                if IpFamily::of(ip) != IpFamily::of(&st.dst) {
                    return Err(unsupported("DNAT to another family".into()));
                }
                let to = SocketAddr::new(*ip, port.unwrap_or(st.dport));
                st.apply_dnat(to);
                verdict(st, Verdict::Accept, format!("DNAT to {to}"))
            }
            Some(IptTarget::Masquerade) => {
                if self.table != "nat" || self.hook != Hook::Postrouting {
                    return Err(unsupported("MASQUERADE outside nat POSTROUTING".into()));
                }
                st.masq = true;
                verdict(st, Verdict::Accept, "MASQUERADE".into())
            }
            Some(IptTarget::Mark { value, mask }) => {
                st.mark = (st.mark & !mask) ^ value;
                if let Some(v) = st.visits.last_mut()
                    && let Some(e) = v.events.last_mut()
                {
                    e.note = Some(format!("mark is now {:#x}", st.mark));
                }
                self.run_rules(chain, c, idx + 1, st, depth)
            }
            Some(IptTarget::Jump(target)) | Some(IptTarget::Goto(target)) => {
                let goto = matches!(rule.target, Some(IptTarget::Goto(_)));
                if self.tables.chain(self.table, target).is_none() {
                    return Err(unsupported(format!("unknown target or chain {target:?}")));
                }
                st.stack.push(target.clone());
                let mut out = Vec::new();
                for (mut s, flow) in self.run_chain(target, st, depth + 1)? {
                    match flow {
                        Flow::Verdict(v) => out.push((s, Flow::Verdict(v))),
                        Flow::Return => {
                            s.stack.pop();
                            if goto {
                                // A goto'd chain returns to our caller.
                                if builtin(self.table, chain) {
                                    out.extend(self.policy(chain, c, s)?);
                                } else {
                                    out.push((s, Flow::Return));
                                }
                            } else {
                                out.extend(self.run_rules(chain, c, idx + 1, s, depth)?);
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    fn policy(&self, chain: &str, c: &IptChain, mut st: State) -> Flows {
        let policy = c.policy.as_deref().unwrap_or("ACCEPT");
        let v = match policy {
            "ACCEPT" => Verdict::Accept,
            "DROP" => Verdict::Drop,
            other => {
                return Err(TraceError::Invalid(format!(
                    "chain {chain}: unknown policy {other}"
                )));
            }
        };
        st.event(chain, &format!("policy {policy}"), None);
        st.decide(format!("policy {policy}"));
        Ok(vec![(st, Flow::Verdict(v))])
    }
}

impl HookRunner for IptablesRuleset {
    fn run_hook(&self, hook: Hook, packet: &Packet, node: &Node, state: State) -> Hooked {
        let tables = self.tables(packet.family()).ok_or_else(|| {
            TraceError::Invalid(format!(
                "the ruleset has no {} section",
                packet.family().as_k8s_str()
            ))
        })?;
        let (chain, in_tables) = hook_chains(hook);
        // An empty chain with policy ACCEPT changes nothing: leave it
        // out of the walk.
        let chains = in_tables.iter().filter_map(|&table| {
            let c = tables.chain(table, chain)?;
            let idle = c.rules.is_empty() && c.policy.as_deref().unwrap_or("ACCEPT") == "ACCEPT";
            (!idle).then_some((table, chain, c))
        });
        crate::through_chains(state, chains, |&(table, chain, c), mut st| {
            let ctx = Ctx {
                tables,
                table,
                packet,
                node,
                hook,
            };
            st.enter_base(hook, format!("{table} {chain}"), chain);
            let mut out = Vec::new();
            for (s, flow) in ctx.run_rules(chain, c, 0, st, 0)? {
                let results = match flow {
                    Flow::Verdict(v) => vec![(s, Flow::Verdict(v))],
                    Flow::Return => ctx.policy(chain, c, s)?,
                };
                // Only accepted packets reach the next table.
                out.extend(results.into_iter().filter_map(|(s, f)| match f {
                    Flow::Verdict(v) => Some((s, v)),
                    Flow::Return => None,
                }));
            }
            Ok(out)
        })
    }
}

hook_tracer!(IptablesRuleset, "iptables", check_targets);

impl IptablesRuleset {
    /// Rules the tracer did not understand, as [`crate::Tracer::unknown_rules`] lists them.
    fn unknown(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, t) in &self.sections {
            for (table, chains) in &t.tables {
                for (name, c) in chains {
                    for r in &c.rules {
                        if let Some(why) = &r.unknown {
                            out.push(format!("{table} {name}: {} ({why})", r.text));
                        }
                    }
                }
            }
        }
        out
    }
}
