//! The iptables tracer: reads iptables-save output or iptables-restore
//! input (kproxy's own, with `--noflush` semantics: `:CHAIN` flushes,
//! `-A` appends, `-I` inserts, `-X` deletes) and walks a packet through
//! the built-in chains of each table in kernel order.
//!
//! [`IptablesRuleset`] holds one [`Tables`] per family section (kproxy's
//! combined output separates them with `# IPv4` / `# IPv6` header
//! comments; text without headers is one section for either family).
//! Each rule is parsed into [`IptRule`] (matches and a target); any option
//! the tracer does not know is an error naming the line.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use kproxy_graph::{IpFamily, Protocol};

use crate::{Hook, HookRunner, Node, Packet, State, Trace, TraceError, Tracer, Verdict};

/// One match of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum IptMatch {
    /// `[!] -p PROTO` (`None` = `all`).
    Protocol {
        /// `!`.
        negated: bool,
        /// The protocol number.
        proto: Option<u8>,
    },
    /// `[!] -s NET`.
    Source {
        /// `!`.
        negated: bool,
        /// The network.
        net: IpNet,
    },
    /// `[!] -d NET`.
    Destination {
        /// `!`.
        negated: bool,
        /// The network.
        net: IpNet,
    },
    /// `[!] -i NAME` (`NAME+` = prefix).
    InInterface {
        /// `!`.
        negated: bool,
        /// The name as written.
        name: String,
    },
    /// `[!] --dport LO[:HI]`.
    DestPort {
        /// `!`.
        negated: bool,
        /// First port.
        lo: u16,
        /// Last port.
        hi: u16,
    },
    /// `-m addrtype [!] --src-type/--dst-type LOCAL`.
    AddrTypeLocal {
        /// `--dst-type` rather than `--src-type`.
        dst: bool,
        /// `!`.
        negated: bool,
    },
    /// `-m conntrack [!] --ctstate S1,S2`.
    CtState {
        /// `!`.
        negated: bool,
        /// The states, upper case.
        states: Vec<String>,
    },
    /// `-m mark [!] --mark V[/M]`.
    Mark {
        /// `!`.
        negated: bool,
        /// Value.
        value: u32,
        /// Mask.
        mask: u32,
    },
    /// `-m statistic --mode random --probability P`.
    Probability(f64),
    /// `-m recent --rcheck`/`--update`: the client was seen recently. A
    /// first packet never was.
    RecentCheck(String),
    /// `-m recent --set`: remembers the client; always matches.
    RecentSet(String),
    /// `-m comment --comment TEXT`.
    Comment(String),
    /// `-m nfacct --nfacct-name NAME`: counts; always matches.
    Nfacct(String),
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum IptTarget {
    /// `-j CHAIN`.
    Jump(String),
    /// `-g CHAIN`.
    Goto(String),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j REJECT`.
    Reject,
    /// `-j RETURN`.
    Return,
    /// `-j DNAT --to-destination IP[:PORT]`.
    Dnat {
        /// The address.
        ip: IpAddr,
        /// The port, when given.
        port: Option<u16>,
    },
    /// `-j MASQUERADE`.
    Masquerade,
    /// `-j MARK` in `--set-xmark V/M` form: `mark = (mark & !M) ^ V`.
    Mark {
        /// Value.
        value: u32,
        /// Mask.
        mask: u32,
    },
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct IptRule {
    /// The line as written (without counters).
    pub text: String,
    /// 1-based line number.
    pub line: usize,
    /// The matches.
    pub matches: Vec<IptMatch>,
    /// The target; `None` for a rule that only counts (or comments).
    pub target: Option<IptTarget>,
    /// Why the rule was not understood (another program's rule, say). A
    /// packet that reaches it stops the trace with an error naming it.
    pub unknown: Option<String>,
}

impl IptRule {
    /// A spelling-independent form: what `iptables-save` and
    /// `iptables-restore` input both mean (for diffs).
    pub fn canonical(&self) -> String {
        let mut parts: Vec<String> = self
            .matches
            .iter()
            .map(|m| match m {
                IptMatch::Probability(p) => format!("Probability({p:.8})"),
                other => format!("{other:?}"),
            })
            .collect();
        parts.sort();
        if self.unknown.is_some() {
            // Not understood: compared as written.
            return format!("unknown {}", self.text);
        }
        format!("{} => {:?}", parts.join(" "), self.target)
    }
}

/// A chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IptChain {
    /// Built-in chain policy (`ACCEPT`, `DROP`); `None` for user chains.
    pub policy: Option<String>,
    /// The rules in order.
    pub rules: Vec<IptRule>,
}

/// One family's tables: table name → chain name → chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tables {
    /// The tables.
    pub tables: BTreeMap<String, BTreeMap<String, IptChain>>,
}

impl Tables {
    /// A chain.
    pub fn chain(&self, table: &str, chain: &str) -> Option<&IptChain> {
        self.tables.get(table).and_then(|t| t.get(chain))
    }
}

/// A parsed iptables ruleset, per family section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IptablesRuleset {
    /// `(family, tables)`; the family is `None` for text without
    /// kproxy's family headers.
    pub sections: Vec<(Option<IpFamily>, Tables)>,
}

fn builtin(table: &str, chain: &str) -> bool {
    matches!(
        (table, chain),
        ("filter", "INPUT" | "FORWARD" | "OUTPUT")
            | ("nat", "PREROUTING" | "INPUT" | "OUTPUT" | "POSTROUTING")
            | ("mangle" | "security" | "raw", _)
    ) && matches!(
        chain,
        "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING"
    )
}

/// The protocol number of a [`Protocol`].
pub fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

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
    fn check_targets(&self) -> Result<(), TraceError> {
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

/// Built-in chains per hook, in priority order (raw, mangle, nat
/// destination NAT, filter, security, nat source NAT).
fn hook_chains(hook: Hook) -> &'static [(&'static str, &'static str)] {
    match hook {
        Hook::Prerouting => &[
            ("raw", "PREROUTING"),
            ("mangle", "PREROUTING"),
            ("nat", "PREROUTING"),
        ],
        Hook::Input => &[
            ("mangle", "INPUT"),
            ("filter", "INPUT"),
            ("security", "INPUT"),
            ("nat", "INPUT"),
        ],
        Hook::Forward => &[
            ("mangle", "FORWARD"),
            ("filter", "FORWARD"),
            ("security", "FORWARD"),
        ],
        Hook::Output => &[
            ("raw", "OUTPUT"),
            ("mangle", "OUTPUT"),
            ("nat", "OUTPUT"),
            ("filter", "OUTPUT"),
            ("security", "OUTPUT"),
        ],
        Hook::Postrouting => &[("mangle", "POSTROUTING"), ("nat", "POSTROUTING")],
    }
}

/// How a chain ended.
enum Flow {
    /// Fell off the end or RETURN: back to the caller.
    Return,
    /// A verdict for this base chain (DNAT and MASQUERADE accept).
    Verdict(Verdict),
}

struct Ctx<'a> {
    tables: &'a Tables,
    table: &'a str,
    packet: &'a Packet,
    node: &'a Node,
    hook: Hook,
}

const MAX_DEPTH: usize = 64;

impl Ctx<'_> {
    fn in_iface(&self) -> Option<String> {
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
    fn match_prob(&self, chain: &str, rule: &IptRule, st: &State) -> Result<f64, TraceError> {
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

    fn run_chain(
        &self,
        chain: &str,
        st: State,
        depth: usize,
    ) -> Result<Vec<(State, Flow)>, TraceError> {
        if depth > MAX_DEPTH {
            return Err(TraceError::Invalid(format!(
                "chain {chain}: more than {MAX_DEPTH} nested jumps (a loop?)"
            )));
        }
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
    ) -> Result<Vec<(State, Flow)>, TraceError> {
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
    ) -> Result<Vec<(State, Flow)>, TraceError> {
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

    fn policy(
        &self,
        chain: &str,
        c: &IptChain,
        mut st: State,
    ) -> Result<Vec<(State, Flow)>, TraceError> {
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
    fn run_hook(
        &self,
        hook: Hook,
        packet: &Packet,
        node: &Node,
        state: State,
    ) -> Result<Vec<(State, Verdict)>, TraceError> {
        let tables = self.tables(packet.family()).ok_or_else(|| {
            TraceError::Invalid(format!(
                "the ruleset has no {} section",
                packet.family().as_k8s_str()
            ))
        })?;
        let mut finals = Vec::new();
        let mut states = vec![state];
        for (table, chain) in hook_chains(hook) {
            let Some(c) = tables.chain(table, chain) else {
                continue;
            };
            // An empty chain with policy ACCEPT changes nothing: leave it
            // out of the walk.
            if c.rules.is_empty() && c.policy.as_deref().unwrap_or("ACCEPT") == "ACCEPT" {
                continue;
            }
            let ctx = Ctx {
                tables,
                table,
                packet,
                node,
                hook,
            };
            let mut next = Vec::new();
            for mut st in states {
                st.visits.push(crate::HookVisit {
                    hook,
                    base: format!("{table} {chain}"),
                    events: Vec::new(),
                    stack: vec![chain.to_string()],
                    result: String::new(),
                });
                st.stack = vec![chain.to_string()];
                for (s, flow) in ctx.run_rules(chain, c, 0, st, 0)? {
                    let results = match flow {
                        Flow::Verdict(v) => vec![(s, Flow::Verdict(v))],
                        Flow::Return => ctx.policy(chain, c, s)?,
                    };
                    for (s, f) in results {
                        match f {
                            // Only accepted packets reach the next table.
                            Flow::Verdict(Verdict::Accept) => next.push(s),
                            Flow::Verdict(v) => finals.push((s, v)),
                            Flow::Return => {}
                        }
                    }
                }
            }
            states = next;
        }
        finals.extend(states.into_iter().map(|s| (s, Verdict::Accept)));
        Ok(finals)
    }
}

impl Tracer for IptablesRuleset {
    fn trace(&self, packet: &Packet, node: &Node) -> Result<Trace, TraceError> {
        self.check_targets()?;
        crate::walk("iptables", self, packet, node)
    }

    fn unknown_rules(&self) -> Vec<String> {
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
