//! The parsed ruleset: tables, chains, rules as statements, sets and maps,
//! and the literal values they hold.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::Hook;

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// An address or network (an address is a host network).
    Net(IpNet),
    /// An address range `a-b`.
    IpRange(IpAddr, IpAddr),
    /// A number (port, mark, numgen value, protocol number).
    Int(u64),
    /// A number range `a-b`.
    IntRange(u64, u64),
    /// A symbol (`tcp`, `local`, `new`, `dnat`, an interface name).
    Sym(String),
}

pub(super) fn parse_int(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

pub(super) fn parse_val(s: &str) -> Val {
    if let Ok(n) = s.parse::<IpNet>() {
        return Val::Net(n);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Val::Net(IpNet::from(ip));
    }
    if let Some(n) = parse_int(s) {
        return Val::Int(n);
    }
    if let Some((a, b)) = s.split_once('-') {
        if let (Ok(a), Ok(b)) = (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
            return Val::IpRange(a, b);
        }
        if let (Some(a), Some(b)) = (parse_int(a), parse_int(b)) {
            return Val::IntRange(a, b);
        }
    }
    Val::Sym(s.to_string())
}

/// What an expression reads from the packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Sel {
    /// `ip saddr` / `ip6 saddr`.
    Saddr,
    /// `ip daddr` / `ip6 daddr`.
    Daddr,
    /// `meta l4proto`.
    L4proto,
    /// `th dport`.
    Dport,
    /// `tcp dport` / `udp dport` / `sctp dport` (implies the protocol).
    ProtoDport(u8),
    /// `meta mark`.
    Mark,
    /// `ct state`.
    CtState,
    /// `ct status`.
    CtStatus,
    /// `fib daddr type`.
    FibDaddrType,
    /// `fib saddr type`.
    FibSaddrType,
    /// `iif` / `iifname`.
    Iif,
    /// `numgen random mod N offset O` (or `numgen inc mod 1 offset O`, the
    /// constant O).
    Numgen {
        /// Modulus.
        modulus: u64,
        /// Offset.
        offset: u64,
    },
}

/// A right-hand side.
#[derive(Debug, Clone, PartialEq)]
pub enum Rhs {
    /// Literal values (concatenated), any of several (`a,b`).
    Lit(Vec<Vec<Val>>),
    /// `@set`.
    SetRef(String),
}

/// A map reference: named or anonymous.
#[derive(Debug, Clone, PartialEq)]
pub enum MapRef {
    /// `@name`.
    Named(String),
    /// `{ k : v, ... }`.
    Anon(Vec<SetElem>),
}

/// A verdict statement.
#[derive(Debug, Clone, PartialEq)]
pub enum VerdictStmt {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `reject`.
    Reject,
    /// `return`.
    Return,
    /// `continue`.
    Continue,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

/// A mark operation (`meta mark set meta mark | V`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MarkOp {
    /// `| V`.
    Or(u32),
    /// `^ V`.
    Xor(u32),
    /// `& V`.
    And(u32),
    /// `V`.
    Set(u32),
}

/// Where `dnat` sends the packet.
#[derive(Debug, Clone, PartialEq)]
pub enum DnatTo {
    /// A literal address and optional port.
    Lit(IpAddr, Option<u16>),
    /// A map lookup: key expression and map; values are `addr [. port]`.
    Map(Vec<Sel>, MapRef),
}

/// One statement of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Stmt {
    /// `LHS [op] RHS`.
    Cmp {
        /// The concatenated selectors.
        lhs: Vec<Sel>,
        /// `& MASK` applied first (marks).
        mask: Option<u64>,
        /// `!=`.
        negated: bool,
        /// The value(s).
        rhs: Rhs,
    },
    /// `LHS vmap MAP`.
    Vmap(Vec<Sel>, MapRef),
    /// A verdict.
    Verdict(VerdictStmt),
    /// `meta mark set ...`.
    MarkSet(MarkOp),
    /// `dnat to ...`.
    Dnat(DnatTo),
    /// `masquerade`.
    Masquerade,
}

/// One element of a set or map.
#[derive(Debug, Clone, PartialEq)]
pub struct SetElem {
    /// The element as written (for display).
    pub text: String,
    /// The key (concatenated values).
    pub key: Vec<Val>,
    /// The value of a map element.
    pub value: Option<ElemValue>,
}

/// A map element's value.
#[derive(Debug, Clone, PartialEq)]
pub enum ElemValue {
    /// A verdict.
    Verdict(VerdictStmt),
    /// Data (`10.0.0.1 . 80`).
    Data(Vec<Val>),
}

/// A rule.
#[derive(Debug, Clone, PartialEq)]
pub struct NftRule {
    /// The rule's text (normalised spacing).
    pub text: String,
    /// 1-based line in the input.
    pub line: usize,
    /// The statements.
    pub stmts: Vec<Stmt>,
    /// Why the rule was not understood; a packet that reaches it stops
    /// the trace with an error naming it.
    pub unknown: Option<String>,
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseChain {
    /// `filter`, `nat`, `route`.
    pub kind: String,
    /// The hook.
    pub hook: Hook,
    /// Numeric priority.
    pub priority: i32,
    /// `policy drop`.
    pub policy_drop: bool,
}

/// A chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NftChain {
    /// Set for base chains.
    pub base: Option<BaseChain>,
    /// The rules.
    pub rules: Vec<NftRule>,
}

/// A set or map.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NftSet {
    /// A map.
    pub is_map: bool,
    /// The declaration's text (`type ...`, `flags ...`).
    pub decl: String,
    /// The elements.
    pub elements: Vec<SetElem>,
}

/// A table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NftTable {
    /// `ip`, `ip6` or `inet`.
    pub family: String,
    /// The name.
    pub name: String,
    /// Chains by name.
    pub chains: BTreeMap<String, NftChain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, NftSet>,
}

/// A parsed nftables ruleset.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NftRuleset {
    /// The tables, in the order they were created.
    pub tables: Vec<NftTable>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_values() {
        let net = |s: &str| Val::Net(s.parse().expect("net"));
        assert_eq!(parse_val("10.0.0.0/8"), net("10.0.0.0/8"));
        assert_eq!(parse_val("fd00::1"), net("fd00::1/128"));
        assert_eq!(parse_val("0x4000"), Val::Int(0x4000));
        assert_eq!(parse_val("80"), Val::Int(80));
        assert_eq!(parse_val("30000-32767"), Val::IntRange(30000, 32767));
        assert_eq!(
            parse_val("10.0.0.1-10.0.0.9"),
            Val::IpRange(
                "10.0.0.1".parse().expect("ip"),
                "10.0.0.9".parse().expect("ip")
            )
        );
        assert_eq!(parse_val("tcp"), Val::Sym("tcp".into()));
        assert_eq!(parse_val("eth*"), Val::Sym("eth*".into()));
        assert_eq!(parse_int("0xzz"), None);
        assert_eq!(parse_int("0x10"), Some(16));
    }
}
