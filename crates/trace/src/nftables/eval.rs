//! The evaluator: walks a packet through the base chains of every
//! matching table in hook and priority order.

use std::net::{IpAddr, SocketAddr};

use super::ast::*;
use crate::iptables::protocol_number;
use crate::{Flow, Flows};
use crate::{Hook, HookRunner, Hooked, Node, Packet, State, TraceError, Verdict};

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Rt {
    Ip(IpAddr),
    Int(u64),
    Proto(u8),
    Flags(Vec<&'static str>),
    Name(String),
    /// The field does not exist for this packet (`tcp dport` of UDP).
    Absent,
}

pub(super) fn sym_proto(s: &str) -> Option<u8> {
    Some(match s {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmpv6" | "ipv6-icmp" => 58,
        _ => return None,
    })
}

pub(super) fn val_matches(v: &Val, rt: &Rt) -> Result<bool, String> {
    Ok(match (v, rt) {
        (_, Rt::Absent) => false,
        (Val::Net(n), Rt::Ip(ip)) => n.contains(ip),
        (Val::IpRange(a, b), Rt::Ip(ip)) => a <= ip && ip <= b,
        (Val::Int(a), Rt::Int(b)) => a == b,
        (Val::Int(a), Rt::Proto(b)) => *a == u64::from(*b),
        (Val::IntRange(a, b), Rt::Int(x)) => a <= x && x <= b,
        (Val::Sym(s), Rt::Proto(p)) => sym_proto(s).ok_or(format!("unknown protocol {s}"))? == *p,
        (Val::Sym(s), Rt::Flags(f)) => f.contains(&s.as_str()),
        (Val::Sym(s), Rt::Name(n)) => match s.strip_suffix('*') {
            Some(prefix) => n.starts_with(prefix),
            None => s == n,
        },
        (v, rt) => return Err(format!("cannot compare {v:?} with {rt:?}")),
    })
}

pub(super) fn key_matches(key: &[Val], rt: &[Rt]) -> Result<bool, String> {
    if key.len() != rt.len() {
        return Err(format!(
            "key has {} parts, expression {} parts",
            key.len(),
            rt.len()
        ));
    }
    for (k, r) in key.iter().zip(rt) {
        if !val_matches(k, r)? {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) struct Ctx<'a> {
    table: &'a NftTable,
    packet: &'a Packet,
    node: &'a Node,
    hook: Hook,
    base_kind: &'a str,
}

impl Ctx<'_> {
    /// Evaluate a concatenation: every combination with its probability
    /// (only `numgen` has more than one).
    fn eval(&self, sels: &[Sel], st: &State) -> Vec<(Vec<Rt>, f64)> {
        let mut out: Vec<(Vec<Rt>, f64)> = vec![(Vec::new(), 1.0)];
        for sel in sels {
            let choices: Vec<(Rt, f64)> = match sel {
                Sel::Saddr => vec![(Rt::Ip(self.packet.src), 1.0)],
                Sel::Daddr => vec![(Rt::Ip(st.dst), 1.0)],
                Sel::L4proto => vec![(Rt::Proto(protocol_number(self.packet.proto)), 1.0)],
                Sel::Dport => vec![(Rt::Int(u64::from(st.dport)), 1.0)],
                Sel::ProtoDport(p) => {
                    if *p == protocol_number(self.packet.proto) {
                        vec![(Rt::Int(u64::from(st.dport)), 1.0)]
                    } else {
                        vec![(Rt::Absent, 1.0)]
                    }
                }
                Sel::Mark => vec![(Rt::Int(u64::from(st.mark)), 1.0)],
                Sel::CtState => vec![(Rt::Flags(vec!["new"]), 1.0)],
                Sel::CtStatus => vec![(
                    Rt::Flags(if st.dnat.is_some() {
                        vec!["dnat"]
                    } else {
                        vec![]
                    }),
                    1.0,
                )],
                Sel::FibDaddrType => vec![(Rt::Flags(vec![self.addr_type(&st.dst)]), 1.0)],
                Sel::FibSaddrType => vec![(Rt::Flags(vec![self.addr_type(&self.packet.src)]), 1.0)],
                Sel::Iif => vec![(Rt::Name(self.in_iface()), 1.0)],
                Sel::Numgen { modulus, offset } => (0..*modulus)
                    .map(|i| (Rt::Int(i + offset), 1.0 / *modulus as f64))
                    .collect(),
            };
            let mut next = Vec::with_capacity(out.len() * choices.len());
            for (prefix, p) in &out {
                for (c, q) in &choices {
                    let mut v = prefix.clone();
                    v.push(c.clone());
                    next.push((v, p * q));
                }
            }
            out = next;
        }
        out
    }

    fn addr_type(&self, ip: &IpAddr) -> &'static str {
        if self.node.is_local(ip) {
            "local"
        } else {
            "unicast"
        }
    }

    fn in_iface(&self) -> String {
        match (self.node.origin(&self.packet.src), self.hook) {
            (crate::Origin::Local, Hook::Input) => "lo".into(),
            (crate::Origin::Local, _) => String::new(),
            (crate::Origin::Remote, _) => self.packet.iif.clone().unwrap_or_else(|| "eth0".into()),
        }
    }

    fn set(&self, name: &str) -> Result<&NftSet, String> {
        self.table
            .sets
            .get(name)
            .ok_or_else(|| format!("no set or map @{name}"))
    }

    fn lookup<'m>(&'m self, map: &'m MapRef, key: &[Rt]) -> Result<Option<&'m ElemValue>, String> {
        let elems: &[SetElem] = match map {
            MapRef::Named(n) => &self.set(n)?.elements,
            MapRef::Anon(e) => e,
        };
        for e in elems {
            if key_matches(&e.key, key)? {
                return Ok(e.value.as_ref());
            }
        }
        Ok(None)
    }

    fn run_chain(&self, chain: &str, st: State, depth: usize) -> Flows {
        crate::check_depth(chain, depth)?;
        let c = self.table.chains.get(chain).ok_or_else(|| {
            TraceError::Invalid(format!(
                "table {} {}: no chain {chain}",
                self.table.family, self.table.name
            ))
        })?;
        self.run_rules(chain, c, 0, st, depth)
    }

    fn run_rules(&self, chain: &str, c: &NftChain, start: usize, st: State, depth: usize) -> Flows {
        let Some(rule) = c.rules.get(start) else {
            return Ok(vec![(st, Flow::Return)]);
        };
        let mut out = Vec::new();
        for (s, r) in self.eval_rule(chain, rule, st, depth)? {
            match r {
                RuleEnd::Next => out.extend(self.run_rules(chain, c, start + 1, s, depth)?),
                RuleEnd::Flow(f) => out.push((s, f)),
            }
        }
        Ok(out)
    }

    fn eval_rule(
        &self,
        chain: &str,
        rule: &NftRule,
        st: State,
        depth: usize,
    ) -> Result<Vec<(State, RuleEnd)>, TraceError> {
        let unsupported = |reason: String| TraceError::Unsupported {
            chain: chain.to_string(),
            rule: rule.text.clone(),
            reason,
        };
        if let Some(why) = &rule.unknown {
            // The comparisons before the statement not understood are
            // ANDed with it: when one fails for every random value, the
            // rule cannot match and the trace passes it by.
            for stmt in &rule.stmts {
                let Stmt::Cmp {
                    lhs,
                    mask,
                    negated,
                    rhs,
                } = stmt
                else {
                    break;
                };
                let mut any = false;
                for (vals, _) in self.eval(lhs, &st) {
                    let vals: Vec<Rt> = vals
                        .into_iter()
                        .map(|v| match (v, mask) {
                            (Rt::Int(x), Some(m)) => Rt::Int(x & m),
                            (o, _) => o,
                        })
                        .collect();
                    let hit = match rhs {
                        Rhs::Lit(alts) => {
                            let mut h = false;
                            for a in alts {
                                h |= key_matches(a, &vals).map_err(&unsupported)?;
                            }
                            h
                        }
                        Rhs::SetRef(n) => {
                            let set = self.set(n).map_err(&unsupported)?;
                            let mut h = false;
                            for e in &set.elements {
                                h |= key_matches(&e.key, &vals).map_err(&unsupported)?;
                            }
                            h
                        }
                    };
                    any |= hit != *negated;
                }
                if !any {
                    return Ok(vec![(st, RuleEnd::Next)]);
                }
            }
            return Err(unsupported(format!("rule not understood ({why})")));
        }
        // States still evaluating this rule, with notes gathered so far.
        let mut live: Vec<(State, Vec<String>)> = vec![(st, Vec::new())];
        let mut out: Vec<(State, RuleEnd)> = Vec::new();
        let record = |s: &mut State, notes: &[String]| {
            let note = if notes.is_empty() {
                None
            } else {
                Some(notes.join("; "))
            };
            s.event(chain, &rule.text, note);
        };
        for stmt in &rule.stmts {
            let mut next: Vec<(State, Vec<String>)> = Vec::new();
            for (mut s, notes) in live {
                match stmt {
                    Stmt::Cmp {
                        lhs,
                        mask,
                        negated,
                        rhs,
                    } => {
                        for (vals, p) in self.eval(lhs, &s) {
                            let vals: Vec<Rt> = match mask {
                                Some(m) => vals
                                    .into_iter()
                                    .map(|v| match v {
                                        Rt::Int(x) => Rt::Int(x & m),
                                        o => o,
                                    })
                                    .collect(),
                                None => vals,
                            };
                            let hit = match rhs {
                                Rhs::Lit(alts) => {
                                    let mut any = false;
                                    for a in alts {
                                        any |= key_matches(a, &vals).map_err(&unsupported)?;
                                    }
                                    any
                                }
                                Rhs::SetRef(n) => {
                                    let set = self.set(n).map_err(&unsupported)?;
                                    let mut any = false;
                                    for e in &set.elements {
                                        any |= key_matches(&e.key, &vals).map_err(&unsupported)?;
                                    }
                                    any
                                }
                            };
                            let mut b = s.clone();
                            b.prob = s.prob * p;
                            let mut n = notes.clone();
                            if p < 1.0 {
                                n.push(format!(
                                    "numgen gave {vals:?} ({})",
                                    crate::format_percent(p)
                                ));
                            }
                            if hit != *negated {
                                next.push((b, n));
                            } else {
                                out.push((b, RuleEnd::Next));
                            }
                        }
                    }
                    Stmt::Vmap(lhs, map) => {
                        for (vals, p) in self.eval(lhs, &s) {
                            let mut b = s.clone();
                            b.prob = s.prob * p;
                            let mut n = notes.clone();
                            if p < 1.0 {
                                n.push(format!("numgen {}", crate::format_percent(p)));
                            }
                            match self.lookup(map, &vals).map_err(&unsupported)? {
                                None => out.push((b, RuleEnd::Next)),
                                Some(ElemValue::Verdict(v)) => {
                                    n.push(format!("vmap: {}", verdict_text(v)));
                                    record(&mut b, &n);
                                    out.extend(self.verdict(v, b, depth)?);
                                }
                                Some(ElemValue::Data(_)) => {
                                    return Err(unsupported(
                                        "vmap element without a verdict".into(),
                                    ));
                                }
                            }
                        }
                    }
                    Stmt::Verdict(v) => {
                        record(&mut s, &notes);
                        out.extend(self.verdict(v, s, depth)?);
                    }
                    Stmt::MarkSet(op) => {
                        s.mark = match op {
                            MarkOp::Or(v) => s.mark | v,
                            MarkOp::Xor(v) => s.mark ^ v,
                            MarkOp::And(v) => s.mark & v,
                            MarkOp::Set(v) => *v,
                        };
                        let mut n = notes;
                        n.push(format!("mark is now {:#x}", s.mark));
                        next.push((s, n));
                    }
                    Stmt::Dnat(to) => {
                        if self.base_kind != "nat" {
                            return Err(unsupported("dnat outside a nat chain".into()));
                        }
                        let targets: Vec<(IpAddr, Option<u16>, f64)> = match to {
                            DnatTo::Lit(ip, port) => vec![(*ip, *port, 1.0)],
                            DnatTo::Map(key, map) => {
                                let mut v = Vec::new();
                                for (vals, p) in self.eval(key, &s) {
                                    match self.lookup(map, &vals).map_err(&unsupported)? {
                                        Some(ElemValue::Data(d)) => {
                                            let (ip, port) = dnat_value(d).map_err(&unsupported)?;
                                            v.push((ip, port, p));
                                        }
                                        // No element: the expression fails and
                                        // the rule stops (no NAT).
                                        None => v.push((s.dst, None, -p)),
                                        Some(ElemValue::Verdict(_)) => {
                                            return Err(unsupported(
                                                "dnat map holds verdicts".into(),
                                            ));
                                        }
                                    }
                                }
                                v
                            }
                        };
                        for (ip, port, p) in targets {
                            let mut b = s.clone();
                            b.prob = s.prob * p.abs();
                            let mut n = notes.clone();
                            if p < 0.0 {
                                n.push("dnat map has no element: rule stops".into());
                                out.push((b, RuleEnd::Next));
                                continue;
                            }
                            let to = SocketAddr::new(ip, port.unwrap_or(b.dport));
                            if p < 1.0 {
                                n.push(format!("numgen: {to} ({})", crate::format_percent(p)));
                            }
                            b.apply_dnat(to);
                            record(&mut b, &n);
                            b.decide(format!("DNAT to {to}"));
                            out.push((b, RuleEnd::Flow(Flow::Verdict(Verdict::Accept))));
                        }
                    }
                    Stmt::Masquerade => {
                        if self.base_kind != "nat" || self.hook != Hook::Postrouting {
                            return Err(unsupported("masquerade outside nat postrouting".into()));
                        }
                        s.masq = true;
                        record(&mut s, &notes);
                        s.decide("masquerade".into());
                        out.push((s, RuleEnd::Flow(Flow::Verdict(Verdict::Accept))));
                    }
                }
            }
            live = next;
        }
        // Every statement passed without a verdict: the next rule runs.
        for (mut s, notes) in live {
            record(&mut s, &notes);
            out.push((s, RuleEnd::Next));
        }
        Ok(out)
    }

    fn verdict(
        &self,
        v: &VerdictStmt,
        mut st: State,
        depth: usize,
    ) -> Result<Vec<(State, RuleEnd)>, TraceError> {
        let end = |mut st: State, v: Verdict, what: &str| {
            st.decide(what.to_string());
            Ok(vec![(st, RuleEnd::Flow(Flow::Verdict(v)))])
        };
        match v {
            VerdictStmt::Accept => end(st, Verdict::Accept, "accept"),
            VerdictStmt::Drop => end(st, Verdict::Drop, "drop"),
            VerdictStmt::Reject => end(st, Verdict::Reject, "reject"),
            VerdictStmt::Continue => Ok(vec![(st, RuleEnd::Next)]),
            VerdictStmt::Return => Ok(vec![(st, RuleEnd::Flow(Flow::Return))]),
            VerdictStmt::Jump(target) | VerdictStmt::Goto(target) => {
                let goto = matches!(v, VerdictStmt::Goto(_));
                st.stack.push(target.clone());
                let mut out = Vec::new();
                for (mut s, flow) in self.run_chain(target, st, depth + 1)? {
                    match flow {
                        Flow::Verdict(v) => out.push((s, RuleEnd::Flow(Flow::Verdict(v)))),
                        Flow::Return => {
                            s.stack.pop();
                            if goto {
                                out.push((s, RuleEnd::Flow(Flow::Return)));
                            } else {
                                out.push((s, RuleEnd::Next));
                            }
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

pub(super) enum RuleEnd {
    /// Continue with the next rule of the chain.
    Next,
    /// The chain ends this way.
    Flow(Flow),
}

pub(super) fn dnat_value(d: &[Val]) -> Result<(IpAddr, Option<u16>), String> {
    let ip = match d.first() {
        Some(Val::Net(n)) if n.prefix_len() == n.max_prefix_len() => n.addr(),
        other => return Err(format!("dnat map value {other:?} is not an address")),
    };
    let port = match d.get(1) {
        None => None,
        Some(Val::Int(p)) => Some(u16::try_from(*p).map_err(|_| format!("bad port {p}"))?),
        Some(other) => return Err(format!("dnat map port {other:?}")),
    };
    Ok((ip, port))
}

pub(super) fn verdict_text(v: &VerdictStmt) -> String {
    match v {
        VerdictStmt::Accept => "accept".into(),
        VerdictStmt::Drop => "drop".into(),
        VerdictStmt::Reject => "reject".into(),
        VerdictStmt::Return => "return".into(),
        VerdictStmt::Continue => "continue".into(),
        VerdictStmt::Jump(c) => format!("jump {c}"),
        VerdictStmt::Goto(c) => format!("goto {c}"),
    }
}

impl NftRuleset {
    fn tables_for(&self, packet: &Packet) -> impl Iterator<Item = &NftTable> {
        let fam = match packet.family() {
            kproxy_graph::IpFamily::V4 => "ip",
            kproxy_graph::IpFamily::V6 => "ip6",
        };
        self.tables
            .iter()
            .filter(move |t| t.family == fam || t.family == "inet")
    }

    fn check(&self) -> Result<(), TraceError> {
        for t in &self.tables {
            for (cname, c) in &t.chains {
                for r in &c.rules {
                    for s in &r.stmts {
                        let mut names = Vec::new();
                        match s {
                            Stmt::Verdict(VerdictStmt::Jump(x) | VerdictStmt::Goto(x)) => {
                                names.push(("chain", x.clone()));
                            }
                            Stmt::Vmap(_, MapRef::Named(m))
                            | Stmt::Dnat(DnatTo::Map(_, MapRef::Named(m)))
                            | Stmt::Cmp {
                                rhs: Rhs::SetRef(m),
                                ..
                            } => names.push(("set", m.clone())),
                            _ => {}
                        }
                        for (kind, n) in names {
                            let ok = match kind {
                                "chain" => t.chains.contains_key(&n),
                                _ => t.sets.contains_key(&n),
                            };
                            if !ok {
                                return Err(TraceError::Unsupported {
                                    chain: cname.clone(),
                                    rule: r.text.clone(),
                                    reason: format!(
                                        "no {kind} {n} in table {} {}",
                                        t.family, t.name
                                    ),
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl HookRunner for NftRuleset {
    fn run_hook(&self, hook: Hook, packet: &Packet, node: &Node, state: State) -> Hooked {
        // Every base chain on this hook, by priority (stable across tables).
        let mut bases: Vec<(&NftTable, &String, &NftChain, &BaseChain)> = Vec::new();
        for t in self.tables_for(packet) {
            for (name, c) in &t.chains {
                if let Some(b) = &c.base
                    && b.hook == hook
                {
                    bases.push((t, name, c, b));
                }
            }
        }
        bases.sort_by_key(|(_, _, _, b)| b.priority);
        crate::through_chains(state, bases, |&(table, name, chain, base), mut st| {
            let ctx = Ctx {
                table,
                packet,
                node,
                hook,
                base_kind: &base.kind,
            };
            let shown = format!(
                "{name} ({} {}, priority {})",
                base.kind,
                hook.as_str(),
                base.priority
            );
            st.enter_base(hook, shown, name);
            let mut out = Vec::new();
            for (mut s, flow) in ctx.run_rules(name, chain, 0, st, 0)? {
                let v = match flow {
                    Flow::Verdict(v) => v,
                    Flow::Return => {
                        let (v, what) = if base.policy_drop {
                            (Verdict::Drop, "policy drop")
                        } else {
                            (Verdict::Accept, "policy accept")
                        };
                        s.decide(what.into());
                        v
                    }
                };
                out.push((s, v));
            }
            Ok(out)
        })
    }
}

hook_tracer!(NftRuleset, "nftables", check);

impl NftRuleset {
    /// Rules the tracer did not understand, as [`crate::Tracer::unknown_rules`] lists them.
    fn unknown(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in &self.tables {
            for (name, c) in &t.chains {
                for r in &c.rules {
                    if let Some(why) = &r.unknown {
                        out.push(format!(
                            "{} {} {name}: {} ({why})",
                            t.family, t.name, r.text
                        ));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Trace, Tracer};
    use kproxy_graph::Protocol;

    const RULES: &str = "\
add table ip kube-proxy
add chain ip kube-proxy nat-output { type nat hook output priority dstnat; policy accept; }
add chain ip kube-proxy filter-input { type filter hook input priority filter; policy accept; }
add chain ip kube-proxy svc-x
add rule ip kube-proxy nat-output ip daddr 10.96.0.1 tcp dport 80 jump svc-x
add rule ip kube-proxy nat-output ip daddr 10.96.0.2 reject
add rule ip kube-proxy svc-x numgen random mod 2 vmap { 0 : goto ep-a, 1 : goto ep-b }
add chain ip kube-proxy ep-a
add chain ip kube-proxy ep-b
add rule ip kube-proxy ep-a dnat to 10.0.0.5:8080
add rule ip kube-proxy ep-b dnat to 10.0.0.6:8080
";

    fn trace(rules: &str, dst: &str, proto: Protocol) -> Result<Trace, TraceError> {
        let rs = NftRuleset::parse(rules).expect("parses");
        let node = Node::new(vec!["192.168.0.10".parse().expect("ip")]);
        let packet = Packet::new(
            "192.168.0.10".parse().expect("ip"),
            dst.parse().expect("ip"),
            80,
            proto,
        );
        rs.trace(&packet, &node)
    }

    #[test]
    fn numgen_splits_between_endpoints() {
        let out = trace(RULES, "10.96.0.1", Protocol::Tcp)
            .expect("traces")
            .outcome();
        let dnats: Vec<(String, f64)> = out
            .parts
            .iter()
            .map(|p| (format!("{:?} {:?}", p.verdict, p.dnat), p.probability))
            .collect();
        assert_eq!(
            dnats,
            [
                ("Accept Some(10.0.0.5:8080)".to_string(), 0.5),
                ("Accept Some(10.0.0.6:8080)".to_string(), 0.5)
            ]
        );
        // `tcp dport` does not match UDP: no DNAT.
        let out = trace(RULES, "10.96.0.1", Protocol::Udp)
            .expect("traces")
            .outcome();
        assert!(out.is_not_handled(), "{out:?}");
        let out = trace(RULES, "10.96.0.2", Protocol::Tcp)
            .expect("traces")
            .outcome();
        assert_eq!(out.only().map(|p| p.verdict), Some(Verdict::Reject));
    }

    #[test]
    fn missing_chains_and_loops_are_errors() {
        let missing = format!("{RULES}add rule ip kube-proxy ep-a jump nowhere\n");
        let err = trace(&missing, "10.96.0.1", Protocol::Tcp).expect_err("no such chain");
        assert!(err.to_string().contains("no chain nowhere"), "{err}");
        let looping = format!(
            "{RULES}add rule ip kube-proxy nat-output jump loop\nadd chain ip kube-proxy loop\nadd rule ip kube-proxy loop jump loop\n"
        );
        let err = trace(&looping, "10.96.0.3", Protocol::Tcp).expect_err("loop");
        assert!(err.to_string().contains("nested jumps"), "{err}");
    }

    #[test]
    fn values_against_runtime_fields() {
        let ip = |s: &str| Rt::Ip(s.parse().expect("ip"));
        assert_eq!(
            val_matches(&parse_val("10.0.0.0/8"), &ip("10.1.2.3")),
            Ok(true)
        );
        assert_eq!(
            val_matches(&parse_val("10.0.0.1-10.0.0.5"), &ip("10.0.0.6")),
            Ok(false)
        );
        assert_eq!(
            val_matches(&Val::Sym("tcp".into()), &Rt::Proto(6)),
            Ok(true)
        );
        assert_eq!(
            val_matches(&Val::Sym("veth*".into()), &Rt::Name("veth0".into())),
            Ok(true)
        );
        assert_eq!(val_matches(&Val::IntRange(1, 5), &Rt::Absent), Ok(false));
        assert!(val_matches(&Val::Sym("gre".into()), &Rt::Proto(47)).is_err());
        assert!(val_matches(&Val::Int(1), &ip("10.0.0.1")).is_err());
        assert_eq!(
            key_matches(
                &[Val::Int(80), Val::Sym("tcp".into())],
                &[Rt::Int(80), Rt::Proto(6)]
            ),
            Ok(true)
        );
        assert!(key_matches(&[Val::Int(80)], &[Rt::Int(80), Rt::Proto(6)]).is_err());
        assert_eq!(verdict_text(&VerdictStmt::Goto("x".into())), "goto x");
        assert_eq!(
            dnat_value(&[parse_val("10.0.0.1"), Val::Int(53)]),
            Ok(("10.0.0.1".parse().expect("ip"), Some(53)))
        );
        assert!(dnat_value(&[parse_val("10.0.0.0/24")]).is_err());
    }
}
