//! The nftables tracer: reads `nft -f` scripts (flat `add table/chain/rule/
//! map/set/element`, `flush`, `delete` commands, as kproxy writes them)
//! and `nft list table` output (nested blocks), and walks a packet through
//! the base chains of every matching table in hook and priority order.
//!
//! [`NftRuleset`] holds [`NftTable`]s of [`NftChain`]s (rules parsed into
//! [`Stmt`]s) and [`NftSet`]s (sets and maps with their elements). The
//! expressions understood are those kproxy's generator writes: `ip`/`ip6`
//! `saddr`/`daddr`, `meta l4proto`, `th dport` (and `tcp dport` ...),
//! marks with bit operations, `ct state`, `ct status`, `fib saddr/daddr
//! type`, `iif`/`iifname`, `numgen random mod N`, concatenations, set and
//! map lookups (named and anonymous), verdict maps, `dnat to` (literal or
//! through a map), `masquerade`, `reject`, `drop`, `accept`, `jump`,
//! `goto`, `return`. Anything else is an error naming the statement.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::iptables::protocol_number;
use crate::{Hook, HookRunner, HookVisit, Node, Packet, State, Trace, TraceError, Tracer, Verdict};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LBrace,
    RBrace,
    Comma,
    Semi,
    Newline,
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Word(w) => w.clone(),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::LBrace => "{".into(),
            Tok::RBrace => "}".into(),
            Tok::Comma => ",".into(),
            Tok::Semi => ";".into(),
            Tok::Newline => "\n".into(),
        }
    }

    fn is(&self, w: &str) -> bool {
        matches!(self, Tok::Word(x) if x == w)
    }
}

fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, TraceError> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let ln = idx + 1;
        let mut chars = line.chars().peekable();
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut Vec<(Tok, usize)>| {
            if !word.is_empty() {
                out.push((Tok::Word(std::mem::take(word)), ln));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' if word.is_empty() => break,
                '"' => {
                    flush(&mut word, &mut out);
                    let mut s = String::new();
                    loop {
                        match chars.next() {
                            Some('\\') => {
                                if let Some(e) = chars.next() {
                                    s.push(e);
                                }
                            }
                            Some('"') => break,
                            Some(o) => s.push(o),
                            None => {
                                return Err(TraceError::Parse {
                                    line: ln,
                                    text: line.to_string(),
                                    reason: "unterminated string".into(),
                                });
                            }
                        }
                    }
                    out.push((Tok::Str(s), ln));
                }
                '{' | '}' | ',' | ';' => {
                    flush(&mut word, &mut out);
                    out.push((
                        match c {
                            '{' => Tok::LBrace,
                            '}' => Tok::RBrace,
                            ',' => Tok::Comma,
                            _ => Tok::Semi,
                        },
                        ln,
                    ));
                }
                c if c.is_whitespace() => flush(&mut word, &mut out),
                c => word.push(c),
            }
        }
        flush(&mut word, &mut out);
        out.push((Tok::Newline, ln));
    }
    Ok(out)
}

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

fn parse_int(s: &str) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        s.parse().ok()
    }
}

fn parse_val(s: &str) -> Val {
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

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    src: Vec<String>,
}

fn is_verdict_word(w: &str) -> bool {
    matches!(
        w,
        "accept" | "drop" | "reject" | "return" | "continue" | "jump" | "goto"
    )
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn line(&self) -> usize {
        self.toks
            .get(self.pos.min(self.toks.len().saturating_sub(1)))
            .map(|t| t.1)
            .unwrap_or(0)
    }

    fn err(&self, reason: impl Into<String>) -> TraceError {
        let line = self.line();
        TraceError::Parse {
            line,
            text: self
                .src
                .get(line.wrapping_sub(1))
                .cloned()
                .unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }

    fn word(&mut self) -> Result<String, TraceError> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w),
            Some(Tok::Str(s)) => Ok(s),
            other => Err(self.err(format!("expected a word, found {other:?}"))),
        }
    }

    fn expect(&mut self, t: Tok) -> Result<(), TraceError> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            other => Err(self.err(format!("expected {}, found {other:?}", t.text()))),
        }
    }

    /// Tokens up to the end of the statement: a newline or `;` outside
    /// braces (or a closing brace of the enclosing block).
    fn statement(&mut self) -> Vec<(Tok, usize)> {
        let mut depth = 0i32;
        let mut out = Vec::new();
        while let Some(t) = self.peek().cloned() {
            match t {
                Tok::Newline | Tok::Semi if depth == 0 => break,
                Tok::RBrace if depth == 0 => break,
                Tok::LBrace => depth += 1,
                Tok::RBrace => depth -= 1,
                Tok::Newline => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            out.push(self.toks[self.pos].clone());
            self.pos += 1;
        }
        out
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(Tok::Newline | Tok::Semi)) {
            self.pos += 1;
        }
    }
}

fn hook_of(s: &str) -> Option<Hook> {
    Some(match s {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    })
}

fn priority_value(words: &[String]) -> Option<i32> {
    let joined: String = words.concat();
    let named = |n: &str| -> Option<i32> {
        Some(match n {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => return None,
        })
    };
    if let Ok(v) = joined.parse::<i32>() {
        return Some(v);
    }
    for (i, c) in joined.char_indices() {
        if (c == '+' || c == '-') && i > 0 {
            let base = named(&joined[..i])?;
            let off: i32 = joined[i + 1..].parse().ok()?;
            return Some(if c == '+' { base + off } else { base - off });
        }
    }
    named(&joined)
}

/// A cursor over one statement's tokens.
struct Stream<'a> {
    toks: &'a [(Tok, usize)],
    pos: usize,
}

impl<'a> Stream<'a> {
    fn peek(&self) -> Option<&'a Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn peek_at(&self, k: usize) -> Option<&'a Tok> {
        self.toks.get(self.pos + k).map(|t| &t.0)
    }
    fn next(&mut self) -> Option<&'a Tok> {
        let t = self.toks.get(self.pos).map(|t| &t.0);
        self.pos += 1;
        t
    }
    fn word(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w.clone()),
            Some(Tok::Str(s)) => Ok(s.clone()),
            other => Err(format!("expected a word, found {other:?}")),
        }
    }
    fn done(&self) -> bool {
        self.pos >= self.toks.len()
    }
}

fn starts_selector(t: Option<&Tok>) -> bool {
    matches!(t, Some(Tok::Word(w)) if matches!(w.as_str(),
        "ip" | "ip6" | "meta" | "th" | "tcp" | "udp" | "sctp" | "ct" | "fib" | "numgen"
        | "mark" | "iif" | "iifname" | "oif" | "oifname" | "l4proto"))
}

fn parse_sel(s: &mut Stream<'_>) -> Result<Sel, String> {
    let w = s.word()?;
    let field = |s: &mut Stream<'_>| s.word();
    Ok(match w.as_str() {
        "ip" | "ip6" => match field(s)?.as_str() {
            "saddr" => Sel::Saddr,
            "daddr" => Sel::Daddr,
            "protocol" | "nexthdr" => Sel::L4proto,
            f => return Err(format!("unsupported expression {w} {f}")),
        },
        "meta" => match field(s)?.as_str() {
            "l4proto" | "protocol" if true => Sel::L4proto,
            "mark" => Sel::Mark,
            "iif" | "iifname" => Sel::Iif,
            f => return Err(format!("unsupported expression meta {f}")),
        },
        "l4proto" => Sel::L4proto,
        "mark" => Sel::Mark,
        "iif" | "iifname" => Sel::Iif,
        "th" => match field(s)?.as_str() {
            "dport" => Sel::Dport,
            f => return Err(format!("unsupported expression th {f}")),
        },
        "tcp" | "udp" | "sctp" => {
            let p = match w.as_str() {
                "tcp" => 6,
                "udp" => 17,
                _ => 132,
            };
            match field(s)?.as_str() {
                "dport" => Sel::ProtoDport(p),
                f => return Err(format!("unsupported expression {w} {f}")),
            }
        }
        "ct" => match field(s)?.as_str() {
            "state" => Sel::CtState,
            "status" => Sel::CtStatus,
            f => return Err(format!("unsupported expression ct {f}")),
        },
        "fib" => {
            let dir = field(s)?;
            if s.peek().is_some_and(|t| t.is(".")) {
                return Err(format!("unsupported fib key {dir} . ..."));
            }
            let t = field(s)?;
            if t != "type" {
                return Err(format!("unsupported fib result {t}"));
            }
            match dir.as_str() {
                "daddr" => Sel::FibDaddrType,
                "saddr" => Sel::FibSaddrType,
                d => return Err(format!("unsupported fib key {d}")),
            }
        }
        "numgen" => {
            let kind = field(s)?;
            if kind != "random" && kind != "inc" {
                return Err(format!("unsupported numgen {kind}"));
            }
            if field(s)? != "mod" {
                return Err(format!("numgen {kind} without mod"));
            }
            let m = field(s)?;
            let modulus = parse_int(&m)
                .filter(|m| *m > 0)
                .ok_or(format!("bad modulus {m}"))?;
            // `numgen inc mod 1 offset N` is always N: kproxy writes its
            // affinity ids so. A counter with a larger modulus depends on
            // the packets before, which a trace cannot know.
            if kind == "inc" && modulus != 1 {
                return Err(format!(
                    "numgen inc mod {modulus}: only mod 1 (a constant) is supported"
                ));
            }
            let mut offset = 0;
            if s.peek().is_some_and(|t| t.is("offset")) {
                s.next();
                let o = field(s)?;
                offset = parse_int(&o).ok_or(format!("bad offset {o}"))?;
            }
            Sel::Numgen { modulus, offset }
        }
        other => return Err(format!("unsupported expression {other}")),
    })
}

fn parse_concat(s: &mut Stream<'_>) -> Result<Vec<Sel>, String> {
    let mut v = vec![parse_sel(s)?];
    while s.peek().is_some_and(|t| t.is(".")) && starts_selector(s.peek_at(1)) {
        s.next();
        v.push(parse_sel(s)?);
    }
    if v.len() > 1 {
        // Inside a concatenation nft adds no protocol dependency, and
        // `nft list` prints a plain transport-header port load as `tcp
        // dport` even for UDP traffic (seen with nft 1.0.x listing kproxy's
        // `meta l4proto . th dport` keys): read it as `th dport`.
        for sel in &mut v {
            if matches!(sel, Sel::ProtoDport(_)) {
                *sel = Sel::Dport;
            }
        }
    }
    Ok(v)
}

fn val_of(t: &Tok) -> Result<Val, String> {
    match t {
        Tok::Word(w) => Ok(parse_val(w)),
        Tok::Str(s) => Ok(Val::Sym(s.clone())),
        other => Err(format!("expected a value, found {}", other.text())),
    }
}

/// A concatenated literal: `v [. v]*`.
fn parse_lit_concat(s: &mut Stream<'_>) -> Result<Vec<Val>, String> {
    let first = s.next().ok_or("missing value")?;
    let mut v = vec![val_of(first)?];
    while s.peek().is_some_and(|t| t.is(".")) {
        s.next();
        let t = s.next().ok_or("missing value after .")?;
        v.push(val_of(t)?);
    }
    Ok(v)
}

fn parse_verdict(s: &mut Stream<'_>) -> Result<VerdictStmt, String> {
    let w = s.word()?;
    Ok(match w.as_str() {
        "accept" => VerdictStmt::Accept,
        "drop" => VerdictStmt::Drop,
        "return" => VerdictStmt::Return,
        "continue" => VerdictStmt::Continue,
        "reject" => VerdictStmt::Reject,
        "jump" => VerdictStmt::Jump(s.word()?),
        "goto" => VerdictStmt::Goto(s.word()?),
        other => return Err(format!("expected a verdict, found {other}")),
    })
}

/// Elements inside `{ ... }` (the opening brace already consumed).
fn parse_elements(s: &mut Stream<'_>, map: bool) -> Result<Vec<SetElem>, String> {
    let mut out = Vec::new();
    loop {
        match s.peek() {
            Some(Tok::RBrace) => {
                s.next();
                return Ok(out);
            }
            Some(Tok::Comma) => {
                s.next();
                continue;
            }
            None => return Err("unterminated element list".into()),
            _ => {}
        }
        let start = s.pos;
        let key = parse_lit_concat(s)?;
        // Per-element options.
        loop {
            match s.peek() {
                Some(t) if t.is("comment") => {
                    s.next();
                    s.next();
                }
                Some(t) if t.is("timeout") || t.is("expires") => {
                    s.next();
                    s.next();
                }
                Some(t) if t.is("counter") => {
                    s.next();
                    if s.peek().is_some_and(|t| t.is("packets")) {
                        s.pos += 4;
                    }
                }
                _ => break,
            }
        }
        let value = if s.peek().is_some_and(|t| t.is(":")) {
            s.next();
            if matches!(s.peek(), Some(Tok::Word(w)) if is_verdict_word(w)) {
                Some(ElemValue::Verdict(parse_verdict(s)?))
            } else {
                Some(ElemValue::Data(parse_lit_concat(s)?))
            }
        } else {
            None
        };
        if map && value.is_none() {
            return Err("map element without a value".into());
        }
        let end = s.pos.min(s.toks.len());
        let text = join_tokens(&s.toks[start..end]);
        out.push(SetElem { text, key, value });
    }
}

fn parse_map_ref(s: &mut Stream<'_>) -> Result<MapRef, String> {
    match s.next() {
        Some(Tok::Word(w)) if w.starts_with('@') => Ok(MapRef::Named(w[1..].to_string())),
        Some(Tok::LBrace) => Ok(MapRef::Anon(parse_elements(s, true)?)),
        other => Err(format!("expected @map or {{...}}, found {other:?}")),
    }
}

fn parse_mark_value(s: &mut Stream<'_>) -> Result<MarkOp, String> {
    let num = |w: String| -> Result<u32, String> {
        parse_int(&w)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(format!("bad mark {w}"))
    };
    if s.peek().is_some_and(|t| t.is("meta") || t.is("mark")) {
        if s.peek().is_some_and(|t| t.is("meta")) {
            s.next();
        }
        if s.word()? != "mark" {
            return Err("expected mark".into());
        }
        let op = s.word()?;
        let v = num(s.word()?)?;
        return Ok(match op.as_str() {
            "|" | "or" => MarkOp::Or(v),
            "^" | "xor" => MarkOp::Xor(v),
            "&" | "and" => MarkOp::And(v),
            other => return Err(format!("unsupported mark operator {other}")),
        });
    }
    Ok(MarkOp::Set(num(s.word()?)?))
}

/// Parse a rule's statements into `out`; on error, `out` holds the
/// statements before the one not understood.
fn parse_rule_stmts(toks: &[(Tok, usize)], out: &mut Vec<Stmt>) -> Result<(), String> {
    let mut s = Stream { toks, pos: 0 };
    while !s.done() {
        let t = s.peek().ok_or("unexpected end")?;
        if starts_selector(Some(t)) {
            let lhs = parse_concat(&mut s)?;
            match s.peek() {
                Some(t) if t.is("set") => {
                    s.next();
                    if lhs != [Sel::Mark] {
                        return Err(format!("unsupported assignment to {lhs:?}"));
                    }
                    out.push(Stmt::MarkSet(parse_mark_value(&mut s)?));
                    continue;
                }
                Some(t) if t.is("vmap") => {
                    s.next();
                    out.push(Stmt::Vmap(lhs, parse_map_ref(&mut s)?));
                    continue;
                }
                _ => {}
            }
            let mut mask = None;
            if s.peek().is_some_and(|t| t.is("&") || t.is("and")) {
                s.next();
                let m = s.word()?;
                mask = Some(parse_int(&m).ok_or(format!("bad mask {m}"))?);
            }
            let mut negated = false;
            match s.peek() {
                Some(t) if t.is("!=") || t.is("ne") => {
                    negated = true;
                    s.next();
                }
                Some(t) if t.is("==") || t.is("eq") => {
                    s.next();
                }
                Some(Tok::Word(w))
                    if matches!(w.as_str(), "<" | ">" | "<=" | ">=" | "lt" | "gt") =>
                {
                    return Err(format!("unsupported comparison {w}"));
                }
                _ => {}
            }
            let rhs = match s.peek() {
                Some(Tok::Word(w)) if w.starts_with('@') => {
                    s.next();
                    Rhs::SetRef(w[1..].to_string())
                }
                Some(Tok::LBrace) => {
                    s.next();
                    let elems = parse_elements(&mut s, false)?;
                    Rhs::Lit(elems.into_iter().map(|e| e.key).collect())
                }
                _ => {
                    let mut alts = vec![parse_lit_concat(&mut s)?];
                    while matches!(s.peek(), Some(Tok::Comma)) {
                        s.next();
                        alts.push(parse_lit_concat(&mut s)?);
                    }
                    Rhs::Lit(alts)
                }
            };
            out.push(Stmt::Cmp {
                lhs,
                mask,
                negated,
                rhs,
            });
            continue;
        }
        let w = match t {
            Tok::Word(w) => w.clone(),
            other => return Err(format!("unexpected {}", other.text())),
        };
        match w.as_str() {
            "accept" | "drop" | "return" | "continue" | "jump" | "goto" => {
                out.push(Stmt::Verdict(parse_verdict(&mut s)?));
            }
            "reject" => {
                s.next();
                if s.peek().is_some_and(|t| t.is("with")) {
                    s.next();
                    let kind = s.word()?;
                    if kind != "tcp" && s.peek().is_some_and(|t| t.is("type")) {
                        s.next();
                    }
                    s.word()?;
                }
                out.push(Stmt::Verdict(VerdictStmt::Reject));
            }
            "counter" => {
                s.next();
                if s.peek().is_some_and(|t| t.is("packets")) {
                    s.pos += 4;
                }
            }
            "comment" => {
                s.next();
                s.next();
            }
            "log" => {
                s.next();
                while s.peek().is_some_and(|t| t.is("prefix") || t.is("level")) {
                    s.pos += 2;
                }
            }
            "masquerade" => {
                s.next();
                while matches!(s.peek(), Some(Tok::Word(w)) if matches!(w.as_str(), "fully-random" | "random" | "persistent"))
                    || matches!(s.peek(), Some(Tok::Comma))
                {
                    s.next();
                }
                out.push(Stmt::Masquerade);
            }
            "dnat" => {
                s.next();
                if s.peek().is_some_and(|t| t.is("ip") || t.is("ip6")) {
                    s.next();
                }
                if s.peek().is_some_and(|t| t.is("addr")) {
                    // `addr . port to ...`: the map yields address . port.
                    s.pos += 3;
                }
                if s.word()? != "to" {
                    return Err("dnat without to".into());
                }
                if starts_selector(s.peek()) {
                    let key = parse_concat(&mut s)?;
                    if s.word()? != "map" {
                        return Err("dnat to EXPR without map".into());
                    }
                    out.push(Stmt::Dnat(DnatTo::Map(key, parse_map_ref(&mut s)?)));
                } else {
                    let a = s.word()?;
                    let lit = parse_dnat_lit(&a).ok_or(format!("bad dnat target {a}"))?;
                    let lit = match lit {
                        (ip, None) if s.peek().is_some_and(|t| t.is(".")) => {
                            s.next();
                            let p = s.word()?;
                            (ip, Some(p.parse().map_err(|_| format!("bad port {p}"))?))
                        }
                        (ip, None) if s.peek().is_some_and(|t| t.is(":")) => {
                            s.next();
                            let p = s.word()?;
                            (ip, Some(p.parse().map_err(|_| format!("bad port {p}"))?))
                        }
                        other => other,
                    };
                    out.push(Stmt::Dnat(DnatTo::Lit(lit.0, lit.1)));
                }
                while matches!(s.peek(), Some(Tok::Word(w)) if matches!(w.as_str(), "fully-random" | "random" | "persistent"))
                {
                    s.next();
                }
            }
            "update" | "add" => {
                // `update @set { ip saddr }`: remembers the client for
                // affinity; no effect on the first packet.
                s.next();
                s.next();
                if !matches!(s.next(), Some(Tok::LBrace)) {
                    return Err(format!("{w} @set without {{ ... }}"));
                }
                let mut depth = 1;
                while depth > 0 {
                    match s.next() {
                        Some(Tok::LBrace) => depth += 1,
                        Some(Tok::RBrace) => depth -= 1,
                        None => return Err("unterminated set update".into()),
                        _ => {}
                    }
                }
            }
            other => return Err(format!("unsupported statement {other:?}")),
        }
    }
    Ok(())
}

fn parse_dnat_lit(a: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return Some((sa.ip(), Some(sa.port())));
    }
    if let Ok(ip) = a.parse::<IpAddr>() {
        return Some((ip, None));
    }
    if let Some((ip, port)) = a.rsplit_once(':')
        && let (Ok(ip), Ok(port)) = (ip.parse::<std::net::Ipv4Addr>(), port.parse::<u16>())
    {
        return Some((IpAddr::V4(ip), Some(port)));
    }
    None
}

fn join_tokens(toks: &[(Tok, usize)]) -> String {
    let mut out = String::new();
    for (t, _) in toks {
        let s = t.text();
        if !out.is_empty() && !matches!(t, Tok::Comma) {
            out.push(' ');
        }
        out.push_str(&s);
    }
    out
}

impl NftRuleset {
    /// Parse an `nft -f` script or `nft list` output.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let toks = tokenize(text)?;
        let mut p = Parser {
            toks,
            pos: 0,
            src: text.lines().map(str::to_string).collect(),
        };
        let mut rs = NftRuleset::default();
        loop {
            p.skip_separators();
            let Some(t) = p.peek().cloned() else { break };
            let w = match t {
                Tok::Word(w) => w,
                other => return Err(p.err(format!("unexpected {}", other.text()))),
            };
            p.pos += 1;
            match w.as_str() {
                "table" => {
                    let (fam, name) = (p.word()?, p.word()?);
                    rs.table_mut(&fam, &name);
                    p.expect(Tok::LBrace)?;
                    rs.parse_table_block(&mut p, &fam, &name)?;
                }
                "add" | "create" | "insert" => {
                    let insert = w == "insert";
                    let kind = p.word()?;
                    rs.parse_add(&mut p, &kind, insert)?;
                }
                "flush" => {
                    let kind = p.word()?;
                    if kind == "ruleset" {
                        rs.tables.clear();
                        continue;
                    }
                    let (fam, table) = (p.word()?, p.word()?);
                    let t = rs.table_mut(&fam, &table);
                    match kind.as_str() {
                        "table" => {
                            for c in t.chains.values_mut() {
                                c.rules.clear();
                            }
                            for s in t.sets.values_mut() {
                                s.elements.clear();
                            }
                        }
                        "chain" => {
                            let n = p.word()?;
                            if let Some(c) = t.chains.get_mut(&n) {
                                c.rules.clear();
                            }
                        }
                        "set" | "map" => {
                            let n = p.word()?;
                            if let Some(s) = t.sets.get_mut(&n) {
                                s.elements.clear();
                            }
                        }
                        other => return Err(p.err(format!("unsupported flush {other}"))),
                    }
                }
                "delete" | "destroy" => {
                    let kind = p.word()?;
                    let (fam, table) = (p.word()?, p.word()?);
                    match kind.as_str() {
                        "table" => rs.tables.retain(|t| !(t.family == fam && t.name == table)),
                        "chain" => {
                            let n = p.word()?;
                            rs.table_mut(&fam, &table).chains.remove(&n);
                        }
                        "set" | "map" => {
                            let n = p.word()?;
                            rs.table_mut(&fam, &table).sets.remove(&n);
                        }
                        "element" => {
                            let n = p.word()?;
                            let stmt = p.statement();
                            let mut s = Stream {
                                toks: &stmt,
                                pos: 0,
                            };
                            if !matches!(s.next(), Some(Tok::LBrace)) {
                                return Err(p.err("delete element without { ... }"));
                            }
                            let gone = parse_elements(&mut s, false).map_err(|e| p.err(e))?;
                            if let Some(set) = rs.table_mut(&fam, &table).sets.get_mut(&n) {
                                set.elements
                                    .retain(|e| !gone.iter().any(|g| g.key == e.key));
                            }
                        }
                        other => return Err(p.err(format!("unsupported delete {other}"))),
                    }
                }
                other => return Err(p.err(format!("unsupported command {other:?}"))),
            }
            let rest = p.statement();
            if !rest.is_empty() {
                return Err(p.err(format!("unexpected {}", join_tokens(&rest))));
            }
        }
        Ok(rs)
    }

    fn table_mut(&mut self, fam: &str, name: &str) -> &mut NftTable {
        let idx = match self
            .tables
            .iter()
            .position(|t| t.family == fam && t.name == name)
        {
            Some(i) => i,
            None => {
                self.tables.push(NftTable {
                    family: fam.to_string(),
                    name: name.to_string(),
                    ..NftTable::default()
                });
                self.tables.len() - 1
            }
        };
        &mut self.tables[idx]
    }

    fn parse_add(&mut self, p: &mut Parser, kind: &str, insert: bool) -> Result<(), TraceError> {
        let (fam, table) = (p.word()?, p.word()?);
        match kind {
            "table" => {
                self.table_mut(&fam, &table);
                if matches!(p.peek(), Some(Tok::LBrace)) {
                    p.pos += 1;
                    let _ = p.statement();
                    p.skip_separators();
                    p.expect(Tok::RBrace)?;
                }
            }
            "chain" => {
                let name = p.word()?;
                let mut chain = NftChain::default();
                if matches!(p.peek(), Some(Tok::LBrace)) {
                    p.pos += 1;
                    loop {
                        p.skip_separators();
                        if matches!(p.peek(), Some(Tok::RBrace)) {
                            p.pos += 1;
                            break;
                        }
                        let stmt = p.statement();
                        if stmt.is_empty() {
                            return Err(p.err("unterminated chain declaration"));
                        }
                        apply_chain_decl(&mut chain, &stmt).map_err(|e| p.err(e))?;
                    }
                }
                let t = self.table_mut(&fam, &table);
                let c = t.chains.entry(name).or_default();
                if chain.base.is_some() {
                    c.base = chain.base;
                }
            }
            "rule" => {
                let chain = p.word()?;
                let line = p.line();
                let stmt = p.statement();
                if stmt
                    .iter()
                    .any(|t| t.0.is("position") || t.0.is("index") || t.0.is("handle"))
                {
                    return Err(p.err("rule positions are not supported"));
                }
                if !balanced(&stmt) {
                    return Err(p.err("unbalanced braces"));
                }
                let rule = make_rule(&stmt, line);
                let t = self.table_mut(&fam, &table);
                let c = t.chains.entry(chain).or_default();
                if insert {
                    c.rules.insert(0, rule);
                } else {
                    c.rules.push(rule);
                }
            }
            "set" | "map" => {
                let name = p.word()?;
                p.expect(Tok::LBrace)?;
                let mut set = NftSet {
                    is_map: kind == "map",
                    ..NftSet::default()
                };
                self.parse_set_body(p, &mut set)?;
                let t = self.table_mut(&fam, &table);
                let e = t.sets.entry(name).or_default();
                e.is_map = set.is_map;
                e.decl = set.decl;
                e.elements.extend(set.elements);
            }
            "element" => {
                let name = p.word()?;
                let stmt = p.statement();
                let t = self.table_mut(&fam, &table);
                let Some(set) = t.sets.get_mut(&name) else {
                    return Err(p.err(format!("element for undeclared set {name}")));
                };
                let mut s = Stream {
                    toks: &stmt,
                    pos: 0,
                };
                if !matches!(s.next(), Some(Tok::LBrace)) {
                    return Err(p.err("add element without { ... }"));
                }
                let is_map = set.is_map;
                let elems = parse_elements(&mut s, is_map).map_err(|e| p.err(e))?;
                set.elements.extend(elems);
            }
            other => return Err(p.err(format!("unsupported add {other}"))),
        }
        Ok(())
    }

    /// The body of `set NAME { ... }` / `map NAME { ... }` after the brace.
    fn parse_set_body(&mut self, p: &mut Parser, set: &mut NftSet) -> Result<(), TraceError> {
        let mut decl = Vec::new();
        loop {
            p.skip_separators();
            match p.peek() {
                Some(Tok::RBrace) => {
                    p.pos += 1;
                    break;
                }
                None => return Err(p.err("unterminated set")),
                _ => {}
            }
            let stmt = p.statement();
            if stmt.is_empty() {
                return Err(p.err("unexpected token in set"));
            }
            if stmt[0].0.is("elements") {
                let mut s = Stream {
                    toks: &stmt[1..],
                    pos: 0,
                };
                if s.peek().is_some_and(|t| t.is("=")) {
                    s.next();
                }
                if !matches!(s.next(), Some(Tok::LBrace)) {
                    return Err(p.err("elements without { ... }"));
                }
                set.elements
                    .extend(parse_elements(&mut s, set.is_map).map_err(|e| p.err(e))?);
            } else {
                decl.push(join_tokens(&stmt));
            }
        }
        set.decl = decl.join("; ");
        Ok(())
    }

    fn parse_table_block(
        &mut self,
        p: &mut Parser,
        fam: &str,
        name: &str,
    ) -> Result<(), TraceError> {
        loop {
            p.skip_separators();
            let t = p.next();
            match t {
                Some(Tok::RBrace) => return Ok(()),
                Some(Tok::Word(w)) if w == "chain" => {
                    let cname = p.word()?;
                    p.expect(Tok::LBrace)?;
                    let mut chain = NftChain::default();
                    loop {
                        p.skip_separators();
                        if matches!(p.peek(), Some(Tok::RBrace)) {
                            p.pos += 1;
                            break;
                        }
                        let line = p.line();
                        let stmt = p.statement();
                        if stmt.is_empty() {
                            return Err(p.err("unexpected token in chain"));
                        }
                        if stmt[0].0.is("type") || stmt[0].0.is("policy") || stmt[0].0.is("comment")
                        {
                            apply_chain_decl(&mut chain, &stmt).map_err(|e| p.err(e))?;
                        } else {
                            if !balanced(&stmt) {
                                return Err(p.err("unbalanced braces"));
                            }
                            chain.rules.push(make_rule(&stmt, line));
                        }
                    }
                    self.table_mut(fam, name).chains.insert(cname, chain);
                }
                Some(Tok::Word(w)) if w == "set" || w == "map" => {
                    let sname = p.word()?;
                    p.expect(Tok::LBrace)?;
                    let mut set = NftSet {
                        is_map: w == "map",
                        ..NftSet::default()
                    };
                    self.parse_set_body(p, &mut set)?;
                    self.table_mut(fam, name).sets.insert(sname, set);
                }
                Some(Tok::Word(w)) if w == "comment" || w == "flags" => {
                    let _ = p.statement();
                }
                other => return Err(p.err(format!("unexpected {other:?} in table"))),
            }
        }
    }
}

fn apply_chain_decl(chain: &mut NftChain, stmt: &[(Tok, usize)]) -> Result<(), String> {
    let mut s = Stream { toks: stmt, pos: 0 };
    while !s.done() {
        let w = s.word()?;
        match w.as_str() {
            "type" => {
                let kind = s.word()?;
                if s.word()? != "hook" {
                    return Err("chain type without hook".into());
                }
                let h = s.word()?;
                let hook = hook_of(&h).ok_or(format!("unsupported hook {h}"))?;
                let mut priority = 0;
                if s.peek().is_some_and(|t| t.is("priority")) {
                    s.next();
                    let mut words = Vec::new();
                    while let Some(Tok::Word(w)) = s.peek() {
                        if w == "policy" {
                            break;
                        }
                        words.push(w.clone());
                        s.next();
                    }
                    priority = priority_value(&words)
                        .ok_or(format!("bad priority {}", words.join(" ")))?;
                }
                chain.base = Some(BaseChain {
                    kind,
                    hook,
                    priority,
                    policy_drop: false,
                });
            }
            "policy" => {
                let pol = s.word()?;
                if let Some(b) = chain.base.as_mut() {
                    b.policy_drop = pol == "drop";
                }
            }
            "comment" => {
                s.next();
            }
            "device" | "devices" => return Err("netdev chains are not supported".into()),
            other => return Err(format!("unexpected {other} in chain declaration")),
        }
        while matches!(s.peek(), Some(Tok::Semi)) {
            s.next();
        }
    }
    Ok(())
}

/// Braces open and close within the statement (a missing `}` would
/// otherwise swallow the rest of the file into one rule).
fn balanced(stmt: &[(Tok, usize)]) -> bool {
    let mut depth = 0i32;
    for (t, _) in stmt {
        match t {
            Tok::LBrace => depth += 1,
            Tok::RBrace => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

fn make_rule(stmt: &[(Tok, usize)], line: usize) -> NftRule {
    let mut stmts = Vec::new();
    let unknown = parse_rule_stmts(stmt, &mut stmts).err();
    NftRule {
        text: join_tokens(stmt),
        line,
        stmts,
        unknown,
    }
}

/// A runtime value.
#[derive(Debug, Clone, PartialEq)]
enum Rt {
    Ip(IpAddr),
    Int(u64),
    Proto(u8),
    Flags(Vec<&'static str>),
    Name(String),
    /// The field does not exist for this packet (`tcp dport` of UDP).
    Absent,
}

fn sym_proto(s: &str) -> Option<u8> {
    Some(match s {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmpv6" | "ipv6-icmp" => 58,
        _ => return None,
    })
}

fn val_matches(v: &Val, rt: &Rt) -> Result<bool, String> {
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

fn key_matches(key: &[Val], rt: &[Rt]) -> Result<bool, String> {
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

struct Ctx<'a> {
    table: &'a NftTable,
    packet: &'a Packet,
    node: &'a Node,
    hook: Hook,
    base_kind: &'a str,
}

enum Flow {
    /// Back to the caller (end of chain or `return`).
    Return,
    Verdict(Verdict),
}

const MAX_DEPTH: usize = 64;

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
        let c = self.table.chains.get(chain).ok_or_else(|| {
            TraceError::Invalid(format!(
                "table {} {}: no chain {chain}",
                self.table.family, self.table.name
            ))
        })?;
        self.run_rules(chain, c, 0, st, depth)
    }

    fn run_rules(
        &self,
        chain: &str,
        c: &NftChain,
        start: usize,
        st: State,
        depth: usize,
    ) -> Result<Vec<(State, Flow)>, TraceError> {
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

enum RuleEnd {
    /// Continue with the next rule of the chain.
    Next,
    /// The chain ends this way.
    Flow(Flow),
}

fn dnat_value(d: &[Val]) -> Result<(IpAddr, Option<u16>), String> {
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

fn verdict_text(v: &VerdictStmt) -> String {
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
    fn run_hook(
        &self,
        hook: Hook,
        packet: &Packet,
        node: &Node,
        state: State,
    ) -> Result<Vec<(State, Verdict)>, TraceError> {
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
        let mut finals = Vec::new();
        let mut states = vec![state];
        for (table, name, chain, base) in bases {
            let ctx = Ctx {
                table,
                packet,
                node,
                hook,
                base_kind: &base.kind,
            };
            let mut next = Vec::new();
            for mut st in states {
                st.visits.push(HookVisit {
                    hook,
                    base: format!(
                        "{name} ({} {}, priority {})",
                        base.kind,
                        hook.as_str(),
                        base.priority
                    ),
                    events: Vec::new(),
                    stack: vec![name.clone()],
                    result: String::new(),
                });
                st.stack = vec![name.clone()];
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
                    if v == Verdict::Accept {
                        next.push(s);
                    } else {
                        finals.push((s, v));
                    }
                }
            }
            states = next;
        }
        finals.extend(states.into_iter().map(|s| (s, Verdict::Accept)));
        Ok(finals)
    }
}

impl Tracer for NftRuleset {
    fn trace(&self, packet: &Packet, node: &Node) -> Result<Trace, TraceError> {
        self.check()?;
        crate::walk("nftables", self, packet, node)
    }

    fn unknown_rules(&self) -> Vec<String> {
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
