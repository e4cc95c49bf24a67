//! iptables-save output or iptables-restore input to the tracer's model:
//! each rule through kproxy-iptables' parser ([`IptablesRuleset::parse`]),
//! rules the tracer does not understand kept with the matches it is sure
//! of.

use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_graph::IpFamily;

use crate::TraceError;

use super::{IptMatch, IptRule, IptTarget, IptablesRuleset, Tables, builtin, protocol_number};

/// Parse a rule's words (after `-A CHAIN`) with kproxy-iptables' parser
/// and convert its IR into the tracer's model.
fn parse_rule(words: &[String], text: &str, line: usize) -> Result<IptRule, TraceError> {
    use kproxy_iptables::{AddrTypeDir, Match, Recent, Target};
    let err = |reason: String| TraceError::Parse {
        line,
        text: text.to_string(),
        reason,
    };
    let rule = kproxy_iptables::parse::parse_rule(words).map_err(&err)?;
    let mut matches = Vec::with_capacity(rule.matches.len());
    for m in rule.matches {
        matches.push(match m {
            Match::Comment(c) => IptMatch::Comment(c),
            Match::Protocol(p) => IptMatch::Protocol {
                negated: false,
                proto: Some(protocol_number(p)),
            },
            Match::Source { negated, addr } => IptMatch::Source {
                negated,
                net: addr_net(addr),
            },
            Match::Destination { negated, addr } => IptMatch::Destination {
                negated,
                net: addr_net(addr),
            },
            Match::InInterface { negated, name } => IptMatch::InInterface { negated, name },
            Match::DestPort(p) => IptMatch::DestPort {
                negated: false,
                lo: p,
                hi: p,
            },
            Match::AddrType { dir, kind } => {
                if kind != "LOCAL" {
                    return Err(err(format!(
                        "address type {kind:?} is not supported (only LOCAL)"
                    )));
                }
                IptMatch::AddrTypeLocal {
                    dst: dir == AddrTypeDir::Dst,
                    negated: false,
                }
            }
            Match::Conntrack { negated, states } => IptMatch::CtState {
                negated,
                states: states
                    .split(',')
                    .map(|s| s.trim().to_ascii_uppercase())
                    .collect(),
            },
            Match::Mark {
                negated,
                value,
                mask,
            } => IptMatch::Mark {
                negated,
                value,
                mask,
            },
            Match::Statistic { one_in } => {
                if one_in == 0 {
                    return Err(err("statistic probability of zero".into()));
                }
                IptMatch::Probability(1.0 / f64::from(one_in))
            }
            Match::Nfacct(name) => IptMatch::Nfacct(name),
            Match::Recent(Recent::Set { name }) => IptMatch::RecentSet(name),
            Match::Recent(Recent::Check { name, .. }) => IptMatch::RecentCheck(name),
        });
    }
    let target = rule.target.map(|t| match t {
        Target::Jump(c) => IptTarget::Jump(c),
        Target::Accept => IptTarget::Accept,
        Target::Drop => IptTarget::Drop,
        Target::Return => IptTarget::Return,
        Target::Reject => IptTarget::Reject,
        Target::Dnat(sa) => IptTarget::Dnat {
            ip: sa.ip(),
            port: Some(sa.port()),
        },
        Target::Masquerade { .. } => IptTarget::Masquerade,
        // --or-mark V is --set-xmark V/V; --xor-mark V is --set-xmark V/0.
        Target::MarkOr(v) => IptTarget::Mark { value: v, mask: v },
        Target::MarkXor(v) => IptTarget::Mark { value: v, mask: 0 },
        Target::MarkSetX { value, mask } => IptTarget::Mark { value, mask },
    });
    Ok(IptRule {
        text: text.to_string(),
        line,
        matches,
        target,
        unknown: None,
    })
}

/// [`parse_rule`], keeping a rule it does not understand as
/// [`IptRule::unknown`]: other programs' rules in the built-in chains must
/// not stop a trace that never reaches them.
fn parse_rule_lazy(words: &[String], text: &str, line: usize) -> IptRule {
    parse_rule(words, text, line).unwrap_or_else(|e| IptRule {
        text: text.to_string(),
        line,
        matches: sure_matches(words),
        target: None,
        unknown: Some(match e {
            TraceError::Parse { reason, .. } => reason,
            other => other.to_string(),
        }),
    })
}

/// The address, protocol and in-interface matches of a rule that is not
/// understood as a whole. Matches are ANDed, so when one of these fails the
/// rule cannot match whatever the rest means: the trace may pass it by.
fn sure_matches(words: &[String]) -> Vec<IptMatch> {
    let mut out = Vec::new();
    let mut negated = false;
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let arg = words.get(i + 1).map(String::as_str);
        let neg = std::mem::take(&mut negated);
        match (w, arg) {
            ("!", _) => {
                negated = true;
                i += 1;
                continue;
            }
            ("-s" | "--source" | "-d" | "--destination", Some(a)) if !a.contains(',') => {
                let net = a
                    .parse::<IpNet>()
                    .ok()
                    .or_else(|| a.parse::<IpAddr>().ok().map(IpNet::from));
                if let Some(net) = net {
                    out.push(if w.starts_with("-s") || w == "--source" {
                        IptMatch::Source { negated: neg, net }
                    } else {
                        IptMatch::Destination { negated: neg, net }
                    });
                }
            }
            ("-p" | "--protocol", Some(a)) => {
                let proto = match a {
                    "tcp" | "6" => Some(6),
                    "udp" | "17" => Some(17),
                    "sctp" | "132" => Some(132),
                    "icmp" | "1" => Some(1),
                    _ => None,
                };
                if proto.is_some() {
                    out.push(IptMatch::Protocol {
                        negated: neg,
                        proto,
                    });
                }
            }
            ("-i" | "--in-interface", Some(a)) => out.push(IptMatch::InInterface {
                negated: neg,
                name: a.to_string(),
            }),
            _ => {}
        }
        i += 1;
    }
    out
}

fn addr_net(a: kproxy_iptables::Addr) -> IpNet {
    match a {
        kproxy_iptables::Addr::Ip(ip) => IpNet::from(ip),
        kproxy_iptables::Addr::Net(n) => n,
    }
}

impl IptablesRuleset {
    /// Parse iptables-save output or iptables-restore input.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let mut sections: Vec<(Option<IpFamily>, Tables)> = Vec::new();
        let mut cur_family: Option<IpFamily> = None;
        let mut cur = Tables::default();
        let mut table: Option<String> = None;
        let mut started = false;
        // Logical lines: a quoted value holding a newline spans several.
        for (line, raw) in kproxy_iptables::parse::save_lines(text) {
            let raw = raw.as_ref();
            let l = raw.trim();
            if l.is_empty() {
                continue;
            }
            let err = |reason: &str| TraceError::Parse {
                line,
                text: raw.to_string(),
                reason: reason.to_string(),
            };
            if let Some(c) = l.strip_prefix('#') {
                let c = c.trim_start();
                let fam = if c.starts_with("IPv4") {
                    Some(IpFamily::V4)
                } else if c.starts_with("IPv6") {
                    Some(IpFamily::V6)
                } else {
                    None
                };
                if let Some(f) = fam {
                    if started {
                        sections.push((cur_family, std::mem::take(&mut cur)));
                    }
                    cur_family = Some(f);
                    started = true;
                }
                continue;
            }
            started = true;
            if let Some(t) = l.strip_prefix('*') {
                table = Some(t.trim().to_string());
                cur.tables.entry(t.trim().to_string()).or_default();
                continue;
            }
            if l == "COMMIT" {
                table = None;
                continue;
            }
            let Some(tname) = table.clone() else {
                return Err(err("outside a *table ... COMMIT block"));
            };
            let chains = cur.tables.entry(tname.clone()).or_default();
            if let Some(decl) = l.strip_prefix(':') {
                let mut it = decl.split_whitespace();
                let name = it.next().ok_or_else(|| err("chain line without a name"))?;
                let policy = it.next().filter(|p| *p != "-").map(str::to_string);
                // Under --noflush a chain line flushes the chain; in
                // iptables-save output the rules follow it anyway.
                let c = chains.entry(name.to_string()).or_default();
                c.rules.clear();
                if policy.is_some() {
                    c.policy = policy;
                }
                continue;
            }
            // Counters `[p:b] -A ...` from iptables-save -c.
            let body = if l.starts_with('[') {
                l.split_once(']').map(|x| x.1.trim()).unwrap_or(l)
            } else {
                l
            };
            // As iptables-save quotes; a line it cannot split (a chain
            // named with a leading quote) is taken word by word.
            let words = kproxy_iptables::parse::tokenize_lossy(body);
            let (op, chain) = match (words.first(), words.get(1)) {
                (Some(o), Some(c)) => (o.as_str(), c.clone()),
                _ => return Err(err("expected -A/-I/-N/-X/-F CHAIN")),
            };
            match op {
                "-A" | "--append" => {
                    let rule = parse_rule_lazy(&words[2..], body, line);
                    chains.entry(chain).or_default().rules.push(rule);
                }
                "-I" | "--insert" => {
                    let (pos, rest) = match words.get(2).and_then(|w| w.parse::<usize>().ok()) {
                        Some(n) => (n.max(1) - 1, &words[3..]),
                        None => (0, &words[2..]),
                    };
                    let rule = parse_rule_lazy(rest, body, line);
                    let c = chains.entry(chain).or_default();
                    let pos = pos.min(c.rules.len());
                    c.rules.insert(pos, rule);
                }
                "-N" | "--new-chain" => {
                    chains.entry(chain).or_default();
                }
                "-F" | "--flush" => {
                    if let Some(c) = chains.get_mut(&chain) {
                        c.rules.clear();
                    }
                }
                "-X" | "--delete-chain" => {
                    chains.remove(&chain);
                }
                _ => return Err(err("expected -A/-I/-N/-X/-F CHAIN")),
            }
        }
        if started {
            sections.push((cur_family, cur));
        }
        // Built-in chains exist even when the text does not name them.
        for (_, t) in &mut sections {
            for (tname, chains) in &mut t.tables {
                for c in ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"] {
                    if builtin(tname, c) {
                        chains.entry(c.to_string()).or_default();
                    }
                }
                for (cname, c) in chains.iter_mut() {
                    if builtin(tname, cname) && c.policy.is_none() {
                        c.policy = Some("ACCEPT".into());
                    }
                }
            }
        }
        Ok(IptablesRuleset { sections })
    }

    /// The tables that apply to `family`.
    pub fn tables(&self, family: IpFamily) -> Option<&Tables> {
        self.sections
            .iter()
            .find(|(f, _)| *f == Some(family))
            .or_else(|| self.sections.iter().find(|(f, _)| f.is_none()))
            .map(|(_, t)| t)
    }

    /// The chains named in rules but not defined (a broken ruleset).
    pub(super) fn check_targets(&self) -> Result<(), TraceError> {
        for (_, t) in &self.sections {
            for chains in t.tables.values() {
                for (cname, c) in chains {
                    for r in &c.rules {
                        if let Some(IptTarget::Jump(j) | IptTarget::Goto(j)) = &r.target
                            && !chains.contains_key(j)
                        {
                            return Err(TraceError::Unsupported {
                                chain: cname.clone(),
                                rule: r.text.clone(),
                                reason: format!("unknown target or chain {j:?}"),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
