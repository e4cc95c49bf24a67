//! The IR compiled to nf_tables netlink objects: the `nft` text of rules,
//! set declarations and elements that the generator writes (see
//! [`crate::ir`]) turned into the expressions, set descriptions and
//! element bytes `nft -f` sends for the same text, user data included, so
//! `nft list ruleset` prints the same ruleset whichever way it was
//! loaded.
//!
//! Only the grammar the generator emits is understood (payload matches on
//! addresses and ports, `meta l4proto`/`mark`/`iifname`, `ct state` and
//! `ct status`, `fib ... type`, `numgen`, concatenations, named and
//! anonymous sets, verdict maps, `dnat ... map`, `dnat to`, `update @set`,
//! `masquerade`, `reject` and verdicts); anything else is an error naming
//! the token, never a guess.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kproxy_netlink::expr::{self, Data, Expr, reg32, verdict};
use kproxy_netlink::obj::{ElemSpec, SetSpec, udata_put, udata_str};

use crate::ir::{Element, Family, Set, SetType};

/// A text the compiler does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct CompileError {
    /// The text compiled (rule, key, type).
    pub what: String,
    /// What is wrong.
    pub reason: String,
}

fn err<T>(what: &str, reason: impl Into<String>) -> Result<T, CompileError> {
    Err(CompileError {
        what: what.to_string(),
        reason: reason.into(),
    })
}

/// `NFPROTO_*` of a family.
pub fn nfproto(f: Family) -> u8 {
    match f {
        Family::Ip => 2,
        Family::Ip6 => 10,
    }
}

/// A datatype of a set key component or map value (nft's `enum datatypes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dt {
    /// `ipv4_addr`.
    Ipv4,
    /// `ipv6_addr`.
    Ipv6,
    /// `inet_proto`.
    Proto,
    /// `inet_service`.
    Service,
    /// `mark`.
    Mark,
    /// `integer` (32 bits, host order).
    Integer,
}

impl Dt {
    fn id(self) -> u32 {
        match self {
            Dt::Ipv4 => 7,
            Dt::Ipv6 => 8,
            Dt::Proto => 12,
            Dt::Service => 13,
            Dt::Mark => 19,
            Dt::Integer => 4,
        }
    }

    fn len(self) -> usize {
        match self {
            Dt::Ipv4 | Dt::Mark | Dt::Integer => 4,
            Dt::Ipv6 => 16,
            Dt::Proto => 1,
            Dt::Service => 2,
        }
    }

    /// nft's `enum byteorder`: 1 host, 2 big endian.
    fn byteorder(self) -> u32 {
        match self {
            Dt::Mark | Dt::Integer => 1,
            _ => 2,
        }
    }

    fn from_name(s: &str) -> Option<Dt> {
        Some(match s {
            "ipv4_addr" => Dt::Ipv4,
            "ipv6_addr" => Dt::Ipv6,
            "inet_proto" => Dt::Proto,
            "inet_service" => Dt::Service,
            "mark" => Dt::Mark,
            "integer" => Dt::Integer,
            _ => return None,
        })
    }
}

/// What a set key or map value is made of: its components' datatypes and
/// the `typeof` expressions' user data, when declared by `typeof`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDesc {
    /// Component datatypes.
    pub dts: Vec<Dt>,
    /// The `typeof` expressions (nft's `NFTNL_UDATA_SET_TYPEOF_*`), or
    /// `None` for `type`.
    typeof_udata: Option<Vec<u8>>,
}

impl KeyDesc {
    fn type_id(&self) -> u32 {
        self.dts.iter().fold(0, |acc, d| (acc << 6) | d.id())
    }

    fn len(&self) -> u32 {
        if self.dts.len() == 1 {
            return self.dts[0].len() as u32;
        }
        self.dts
            .iter()
            .map(|d| d.len().next_multiple_of(4))
            .sum::<usize>() as u32
    }

    fn byteorder(&self) -> u32 {
        if self.dts.len() == 1 {
            self.dts[0].byteorder()
        } else {
            0
        }
    }
}

/// What the compiler knows of one set: enough to encode its elements and
/// the rules that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetInfo {
    /// The key.
    pub key: KeyDesc,
    /// The value: `None` for sets, `Some(None)` for verdict maps.
    pub data: Option<Option<KeyDesc>>,
    /// An interval set.
    pub interval: bool,
}

/// The sets of each table, as declared so far (this transaction and
/// earlier ones).
pub type SetRegistry = HashMap<(Family, String, String), SetInfo>;

/// The netlink description of a set declaration.
pub fn set_spec(f: Family, s: &Set, id: u32) -> Result<(SetSpec, SetInfo), CompileError> {
    let what = format!("set {}", s.name);
    let (key, data) = match &s.set_type {
        SetType::Type(t) => {
            let (k, v) = match t.split_once(" : ") {
                Some((k, v)) => (k, Some(v)),
                None => (t.as_str(), None),
            };
            let key = type_desc(&what, k)?;
            let data = match v {
                None => None,
                Some("verdict") => Some(None),
                Some(v) => Some(Some(type_desc(&what, v)?)),
            };
            (key, data)
        }
        SetType::Typeof(t) => {
            let (k, v) = match t.split_once(" : ") {
                Some((k, v)) => (k, Some(v)),
                None => (t.as_str(), None),
            };
            let key = typeof_desc(&what, f, k)?;
            let data = match v {
                None => None,
                Some(v) => Some(Some(typeof_desc(&what, f, v)?)),
            };
            (key, data)
        }
    };
    let mut flags = 0u32;
    for fl in &s.flags {
        flags |= match *fl {
            "interval" => 0x4,
            "timeout" => 0x10,
            "dynamic" => 0x20,
            "constant" => 0x2,
            other => return err(&what, format!("unknown flag {other:?}")),
        };
    }
    if s.map {
        flags |= 0x8;
    }
    let mut udata = Vec::new();
    udata_put(&mut udata, 0, &key.byteorder().to_ne_bytes());
    if let Some(d) = &data {
        let bo = d.as_ref().map_or(0, KeyDesc::byteorder);
        udata_put(&mut udata, 1, &bo.to_ne_bytes());
    }
    if key.dts.len() > 1 || key.typeof_udata.is_some() {
        put_typeof(&mut udata, 3, &key);
    }
    if let Some(Some(d)) = &data
        && (d.dts.len() > 1 || d.typeof_udata.is_some())
    {
        put_typeof(&mut udata, 4, d);
    }
    if data.is_some() {
        udata_put(&mut udata, 6, &0u32.to_ne_bytes());
    }
    if let Some(c) = &s.comment {
        udata_str(&mut udata, 7, c);
    }
    let spec = SetSpec {
        name: s.name.clone(),
        id,
        flags,
        key_type: key.type_id(),
        key_len: key.len(),
        data: data.as_ref().map(|d| match d {
            None => (0xffff_ff00, 0),
            Some(d) => (d.type_id(), d.len()),
        }),
        size: s.size,
        timeout_ms: s.timeout.map(|t| u64::from(t) * 1000),
        udata,
    };
    let info = SetInfo {
        key,
        data,
        interval: flags & 0x4 != 0,
    };
    Ok((spec, info))
}

fn put_typeof(out: &mut Vec<u8>, kind: u8, k: &KeyDesc) {
    let mut v = Vec::new();
    match &k.typeof_udata {
        Some(u) => v.extend_from_slice(u),
        None => {
            // A `type` concatenation: a concat with no expressions.
            udata_put(&mut v, 0, &13u32.to_ne_bytes());
            udata_put(&mut v, 1, &[]);
        }
    }
    udata_put(out, kind, &v);
}

fn type_desc(what: &str, t: &str) -> Result<KeyDesc, CompileError> {
    let dts = t
        .split(" . ")
        .map(|c| Dt::from_name(c.trim()).ok_or(c))
        .collect::<Result<Vec<_>, _>>();
    match dts {
        Ok(dts) => Ok(KeyDesc {
            dts,
            typeof_udata: None,
        }),
        Err(c) => err(what, format!("unknown type {c:?}")),
    }
}

/// One `typeof` expression: its datatype and nft's user data for it
/// (`NFTNL_UDATA_SET_TYPEOF_EXPR` = expression type, `_DATA` = fields).
fn typeof_expr(what: &str, f: Family, e: &str) -> Result<(Dt, Vec<u8>), CompileError> {
    let toks: Vec<&str> = e.split_whitespace().collect();
    // Expression types (nft's `enum expr_types`) and protocol ids.
    const PAYLOAD: u32 = 7;
    const META: u32 = 9;
    const NUMGEN: u32 = 23;
    let payload = |desc: u32, field: u32| {
        let mut d = Vec::new();
        udata_put(&mut d, 0, &desc.to_ne_bytes());
        udata_put(&mut d, 1, &field.to_ne_bytes());
        (PAYLOAD, d)
    };
    let (dt, (etype, data)) = match toks.as_slice() {
        ["ip", "saddr"] => (Dt::Ipv4, payload(12, 11)),
        ["ip", "daddr"] => (Dt::Ipv4, payload(12, 12)),
        ["ip6", "saddr"] => (Dt::Ipv6, payload(13, 8)),
        ["ip6", "daddr"] => (Dt::Ipv6, payload(13, 9)),
        ["th", "dport"] => (Dt::Service, payload(11, 2)),
        ["tcp", "dport"] => (Dt::Service, payload(8, 2)),
        ["udp", "dport"] => (Dt::Service, payload(6, 2)),
        ["sctp", "dport"] => (Dt::Service, payload(10, 2)),
        ["meta", "l4proto"] => {
            let mut d = Vec::new();
            udata_put(&mut d, 0, &16u32.to_ne_bytes());
            (Dt::Proto, (META, d))
        }
        ["meta", "mark"] => {
            let mut d = Vec::new();
            udata_put(&mut d, 0, &3u32.to_ne_bytes());
            (Dt::Mark, (META, d))
        }
        ["numgen", kind, "mod", m, rest @ ..] => {
            let kind = match *kind {
                "inc" => 0u32,
                "random" => 1,
                k => return err(what, format!("numgen {k}")),
            };
            let m: u32 = num(what, m)?;
            let off: u32 = match rest {
                [] => 0,
                ["offset", o] => num(what, o)?,
                _ => return err(what, format!("typeof {e:?}")),
            };
            let mut d = Vec::new();
            udata_put(&mut d, 0, &kind.to_ne_bytes());
            udata_put(&mut d, 1, &m.to_ne_bytes());
            udata_put(&mut d, 2, &off.to_ne_bytes());
            (Dt::Integer, (NUMGEN, d))
        }
        _ => return err(what, format!("typeof {e:?} is not supported")),
    };
    let _ = f;
    let mut u = Vec::new();
    udata_put(&mut u, 0, &etype.to_ne_bytes());
    udata_put(&mut u, 1, &data);
    Ok((dt, u))
}

fn typeof_desc(what: &str, f: Family, t: &str) -> Result<KeyDesc, CompileError> {
    let parts: Vec<&str> = t.split(" . ").map(str::trim).collect();
    if parts.len() == 1 {
        let (dt, u) = typeof_expr(what, f, parts[0])?;
        return Ok(KeyDesc {
            dts: vec![dt],
            typeof_udata: Some(u),
        });
    }
    let mut dts = Vec::new();
    let mut subs = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let (dt, u) = typeof_expr(what, f, p)?;
        dts.push(dt);
        udata_put(&mut subs, i as u8, &u);
    }
    let mut u = Vec::new();
    udata_put(&mut u, 0, &13u32.to_ne_bytes());
    udata_put(&mut u, 1, &subs);
    Ok(KeyDesc {
        dts,
        typeof_udata: Some(u),
    })
}

fn num<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, CompileError> {
    s.parse()
        .or_else(|_| err(what, format!("{s:?} is not a number")))
}

fn hex_or_dec(what: &str, s: &str) -> Result<u32, CompileError> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).or_else(|_| err(what, format!("bad number {s:?}"))),
        None => num(what, s),
    }
}

fn proto_num(what: &str, s: &str) -> Result<u8, CompileError> {
    Ok(match s {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "icmpv6" => 58,
        n => num(what, n)?,
    })
}

/// One component value's bytes (unpadded).
fn value_bytes(what: &str, dt: Dt, s: &str) -> Result<Vec<u8>, CompileError> {
    Ok(match dt {
        Dt::Ipv4 => s
            .parse::<Ipv4Addr>()
            .or_else(|_| err(what, format!("{s:?} is not an IPv4 address")))?
            .octets()
            .to_vec(),
        Dt::Ipv6 => s
            .parse::<Ipv6Addr>()
            .or_else(|_| err(what, format!("{s:?} is not an IPv6 address")))?
            .octets()
            .to_vec(),
        Dt::Proto => vec![proto_num(what, s)?],
        Dt::Service => num::<u16>(what, s)?.to_be_bytes().to_vec(),
        Dt::Mark | Dt::Integer => hex_or_dec(what, s)?.to_ne_bytes().to_vec(),
    })
}

/// A key or value of components `dts`, padded as a concatenation.
fn concat_bytes(what: &str, dts: &[Dt], s: &str) -> Result<Vec<u8>, CompileError> {
    let parts: Vec<&str> = s.split(" . ").map(str::trim).collect();
    if parts.len() != dts.len() {
        return err(
            what,
            format!("{} components, the set has {}", parts.len(), dts.len()),
        );
    }
    let mut out = Vec::new();
    for (dt, p) in dts.iter().zip(parts) {
        out.extend(value_bytes(what, *dt, p)?);
        if dts.len() > 1 {
            while out.len() % 4 != 0 {
                out.push(0);
            }
        }
    }
    Ok(out)
}

fn verdict_data(what: &str, s: &str) -> Result<Data, CompileError> {
    let t: Vec<&str> = s.split_whitespace().collect();
    Ok(match t.as_slice() {
        ["drop"] => Data::Verdict(verdict::DROP, None),
        ["accept"] => Data::Verdict(verdict::ACCEPT, None),
        ["return"] => Data::Verdict(verdict::RETURN, None),
        ["continue"] => Data::Verdict(verdict::CONTINUE, None),
        ["jump", c] => Data::Verdict(verdict::JUMP, Some((*c).to_string())),
        ["goto", c] => Data::Verdict(verdict::GOTO, Some((*c).to_string())),
        _ => return err(what, format!("{s:?} is not a verdict")),
    })
}

/// An address range `[start, end]` as big-endian bytes.
type Range = (Vec<u8>, Vec<u8>);

fn cidr_range(what: &str, s: &str) -> Result<(IpAddr, Range), CompileError> {
    let (addr, plen) = match s.split_once('/') {
        Some((a, p)) => (a, Some(num::<u32>(what, p)?)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .or_else(|_| err(what, format!("{addr:?} is not an address")))?;
    let bytes = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let bits = bytes.len() as u32 * 8;
    let plen = plen.unwrap_or(bits).min(bits);
    let mut start = bytes.clone();
    let mut end = bytes;
    for i in plen..bits {
        let (byte, bit) = ((i / 8) as usize, 7 - (i % 8));
        start[byte] &= !(1 << bit);
        end[byte] |= 1 << bit;
    }
    Ok((ip, (start, end)))
}

/// `x + 1` for a big-endian number; `None` on overflow.
fn succ(x: &[u8]) -> Option<Vec<u8>> {
    let mut v = x.to_vec();
    for b in v.iter_mut().rev() {
        if *b == 0xff {
            *b = 0;
        } else {
            *b += 1;
            return Some(v);
        }
    }
    None
}

/// Interval elements for ranges (sorted, adjacent ones merged when
/// `merge`): nft's encoding, an end element (`NFT_SET_ELEM_INTERVAL_END`)
/// after each range and one at zero when the first range starts above it.
fn interval_elems(mut ranges: Vec<(Range, Vec<u8>)>, merge: bool) -> Vec<ElemSpec> {
    ranges.sort();
    let mut merged: Vec<(Range, Vec<u8>)> = Vec::new();
    for (r, udata) in ranges {
        if let Some(((_, last_end), _)) = merged.last_mut()
            && merge
            && succ(last_end).as_deref() == Some(r.0.as_slice())
        {
            *last_end = r.1;
            continue;
        }
        merged.push((r, udata));
    }
    let mut out = Vec::new();
    if let Some(((first, _), _)) = merged.first()
        && first.iter().any(|b| *b != 0)
    {
        out.push(ElemSpec {
            key: vec![0; first.len()],
            flags: 1,
            ..ElemSpec::default()
        });
    }
    for ((start, end), mut udata) in merged {
        let next = succ(&end);
        if next.is_none() {
            // A range open to the top: no end element, and nft marks the
            // start (`NFTNL_UDATA_SET_ELEM_FLAGS` = interval open).
            udata_put(&mut udata, 1, &1u32.to_ne_bytes());
        }
        out.push(ElemSpec {
            key: start,
            udata,
            ..ElemSpec::default()
        });
        if let Some(next) = next {
            out.push(ElemSpec {
                key: next,
                flags: 1,
                ..ElemSpec::default()
            });
        }
    }
    out
}

fn elem_udata(comment: Option<&str>) -> Vec<u8> {
    let mut u = Vec::new();
    if let Some(c) = comment {
        udata_str(&mut u, 0, c);
    }
    u
}

/// The elements of `add element` (values included) or `delete element`
/// (keys only) for a set described by `info`.
pub fn elements<'a>(
    set: &str,
    info: &SetInfo,
    items: impl IntoIterator<Item = (&'a str, Option<&'a Element>)>,
) -> Result<Vec<ElemSpec>, CompileError> {
    let what = |k: &str| format!("element {k} of {set}");
    if info.interval {
        let mut ranges = Vec::new();
        for (k, e) in items {
            if info.key.dts.len() != 1 {
                return err(&what(k), "interval concatenations are not supported");
            }
            let (_, r) = cidr_range(&what(k), k)?;
            ranges.push((r, elem_udata(e.and_then(|e| e.comment.as_deref()))));
        }
        return Ok(interval_elems(ranges, false));
    }
    let mut out = Vec::new();
    for (k, e) in items {
        let w = what(k);
        // `key timeout Ns` (elements of sets with timeouts).
        let (k, timeout_ms) = match k.rsplit_once(" timeout ") {
            Some((k, t)) => {
                let secs: u64 = num(&w, t.strip_suffix('s').unwrap_or(t))?;
                (k, Some(secs * 1000))
            }
            None => (k, None),
        };
        let key = concat_bytes(&w, &info.key.dts, k)?;
        let data = match (e.and_then(|e| e.value.as_deref()), &info.data) {
            (None, _) => None,
            (Some(v), Some(None)) => Some(verdict_data(&w, v)?),
            (Some(v), Some(Some(d))) => Some(Data::Value(concat_bytes(&w, &d.dts, v)?)),
            (Some(_), None) => return err(&w, "a value for a set"),
        };
        if e.is_some() && data.is_none() && info.data.is_some() {
            return err(&w, "a map element without value");
        }
        out.push(ElemSpec {
            key,
            data,
            flags: 0,
            udata: elem_udata(e.and_then(|e| e.comment.as_deref())),
            timeout_ms,
        });
    }
    Ok(out)
}

/// An anonymous set a rule needs (`ip saddr != { A, B }`), created in the
/// same batch just before the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnonSet {
    /// Its declaration (`__set%d`, constant, interval).
    pub spec: SetSpec,
    /// Its elements.
    pub elems: Vec<ElemSpec>,
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompiledRule {
    /// The expressions.
    pub exprs: Vec<Expr>,
    /// Anonymous sets to create first.
    pub anon: Vec<AnonSet>,
}

/// One loaded value: its length in bytes and its datatype kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sel {
    Addr(Family),
    L4proto,
    Mark,
    Dport,
    Numgen,
    CtState,
    CtStatus,
    FibType,
    Ifname,
}

impl Sel {
    fn len(self) -> u32 {
        match self {
            Sel::Addr(Family::Ip) => 4,
            Sel::Addr(Family::Ip6) => 16,
            Sel::L4proto => 1,
            Sel::Dport => 2,
            Sel::Ifname => 16,
            _ => 4,
        }
    }
}

/// The loads of a concatenation and what each loads.
type Loaded = (Vec<Expr>, Vec<Sel>);

struct P<'a> {
    toks: Vec<&'a str>,
    i: usize,
    text: &'a str,
    fam: Family,
}

impl<'a> P<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.toks.get(self.i).copied()
    }
    fn peek_at(&self, n: usize) -> Option<&'a str> {
        self.toks.get(self.i + n).copied()
    }
    fn next(&mut self) -> Result<&'a str, CompileError> {
        let t = self.toks.get(self.i).copied();
        self.i += 1;
        t.map_or_else(|| err(self.text, "unexpected end"), Ok)
    }
    fn expect(&mut self, want: &str) -> Result<(), CompileError> {
        let t = self.next()?;
        if t == want {
            Ok(())
        } else {
            err(self.text, format!("expected {want:?}, found {t:?}"))
        }
    }
    fn bad<T>(&self, t: &str) -> Result<T, CompileError> {
        err(self.text, format!("unsupported token {t:?}"))
    }

    /// A selector at the cursor, if one starts there.
    fn selector(&mut self) -> Result<Option<(Sel, Expr)>, CompileError> {
        let (a, b) = (self.peek(), self.peek_at(1));
        let fam = self.fam;
        let (sel, e, n) = match (a, b) {
            (Some("ip"), Some(f @ ("saddr" | "daddr")))
            | (Some("ip6"), Some(f @ ("saddr" | "daddr"))) => {
                let ff = if a == Some("ip") {
                    Family::Ip
                } else {
                    Family::Ip6
                };
                if ff != fam {
                    return err(
                        self.text,
                        format!("{} in a {} table", a.unwrap_or(""), fam.as_str()),
                    );
                }
                let off = match (ff, f) {
                    (Family::Ip, "saddr") => 12,
                    (Family::Ip, _) => 16,
                    (Family::Ip6, "saddr") => 8,
                    (Family::Ip6, _) => 24,
                };
                let len = Sel::Addr(ff).len();
                (
                    Sel::Addr(ff),
                    Expr::Payload {
                        dreg: 0,
                        base: expr::BASE_NETWORK,
                        offset: off,
                        len,
                    },
                    2,
                )
            }
            (Some("th"), Some("dport")) => (
                Sel::Dport,
                Expr::Payload {
                    dreg: 0,
                    base: expr::BASE_TRANSPORT,
                    offset: 2,
                    len: 2,
                },
                2,
            ),
            (Some("meta"), Some("l4proto")) => (
                Sel::L4proto,
                Expr::Meta {
                    dreg: 0,
                    key: expr::meta::L4PROTO,
                },
                2,
            ),
            (Some("meta"), Some("mark")) if self.peek_at(2) != Some("set") => (
                Sel::Mark,
                Expr::Meta {
                    dreg: 0,
                    key: expr::meta::MARK,
                },
                2,
            ),
            (Some("iifname"), _) => (
                Sel::Ifname,
                Expr::Meta {
                    dreg: 0,
                    key: expr::meta::IIFNAME,
                },
                1,
            ),
            (Some("oifname"), _) => (
                Sel::Ifname,
                Expr::Meta {
                    dreg: 0,
                    key: expr::meta::OIFNAME,
                },
                1,
            ),
            (Some("ct"), Some("state")) => (
                Sel::CtState,
                Expr::Ct {
                    dreg: 0,
                    key: expr::ct::STATE,
                },
                2,
            ),
            (Some("ct"), Some("status")) => (
                Sel::CtStatus,
                Expr::Ct {
                    dreg: 0,
                    key: expr::ct::STATUS,
                },
                2,
            ),
            (Some("fib"), Some(f @ ("saddr" | "daddr"))) => {
                if self.peek_at(2) != Some("type") {
                    return self.bad("fib");
                }
                let flags = if f == "saddr" { 1 } else { 2 };
                (
                    Sel::FibType,
                    Expr::Fib {
                        dreg: 0,
                        result: 3,
                        flags,
                    },
                    3,
                )
            }
            (Some("numgen"), Some(kind @ ("random" | "inc"))) => {
                if self.peek_at(2) != Some("mod") {
                    return self.bad("numgen");
                }
                let m: u32 = num(self.text, self.peek_at(3).unwrap_or(""))?;
                let (offset, n) = if self.peek_at(4) == Some("offset") {
                    (num(self.text, self.peek_at(5).unwrap_or(""))?, 6)
                } else {
                    (0, 4)
                };
                let kind = if kind == "inc" { 0 } else { 1 };
                (
                    Sel::Numgen,
                    Expr::Numgen {
                        dreg: 0,
                        modulus: m,
                        kind,
                        offset,
                    },
                    n,
                )
            }
            _ => return Ok(None),
        };
        self.i += n;
        Ok(Some((sel, e)))
    }

    /// A concatenation of selectors, loaded from slot 0: the expressions
    /// and the selectors.
    fn concat(&mut self) -> Result<Option<Loaded>, CompileError> {
        let Some(first) = self.selector()? else {
            return Ok(None);
        };
        let mut sels = vec![first];
        while self.peek() == Some(".") {
            self.i += 1;
            match self.selector()? {
                Some(s) => sels.push(s),
                None => return self.bad(self.peek().unwrap_or("end")),
            }
        }
        let mut slot = 0u32;
        let mut exprs = Vec::new();
        let mut kinds = Vec::new();
        for (sel, mut e) in sels {
            set_dreg(&mut e, reg32(slot));
            slot += sel.len().div_ceil(4);
            exprs.push(e);
            kinds.push(sel);
        }
        Ok(Some((exprs, kinds)))
    }
}

fn set_dreg(e: &mut Expr, r: u32) {
    match e {
        Expr::Payload { dreg, .. }
        | Expr::Meta { dreg, .. }
        | Expr::Ct { dreg, .. }
        | Expr::Numgen { dreg, .. }
        | Expr::Fib { dreg, .. } => *dreg = r,
        _ => {}
    }
}

/// Split a rule into tokens: whitespace-separated, with braces and
/// commas on their own and quoted strings kept whole.
fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' => i += 1,
            b'{' | b'}' | b',' => {
                out.push(&text[i..i + 1]);
                i += 1;
            }
            b'"' => {
                let end = text[i + 1..].find('"').map_or(b.len(), |e| i + 1 + e + 1);
                out.push(&text[i..end]);
                i = end;
            }
            _ => {
                let s = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'{' | b'}' | b',') {
                    i += 1;
                }
                out.push(&text[s..i]);
            }
        }
    }
    out
}

/// What rule compilation carries from one rule to the next within one
/// batch.
#[derive(Debug, Default)]
pub struct BatchCtx {
    /// The next set id (anonymous sets and declarations).
    pub next_id: u32,
    /// Maps a `dnat ... map` rule already used in this batch. nft 1.0.6
    /// adds the transport protocol match (`meta l4proto tcp`) only to the
    /// first such rule per map in one run; later ones go without.
    pub dnat_maps: std::collections::HashSet<(Family, String, String)>,
}

/// Compile one rule's text for a table of family `fam`; `sets` describes
/// the named sets it refers to.
pub fn rule(
    fam: Family,
    table: &str,
    text: &str,
    sets: &SetRegistry,
    ctx: &mut BatchCtx,
) -> Result<CompiledRule, CompileError> {
    let mut p = P {
        toks: tokens(text),
        i: 0,
        text,
        fam,
    };
    let mut out = CompiledRule::default();
    let set_info = |name: &str| -> Result<&SetInfo, CompileError> {
        sets.get(&(fam, table.to_string(), name.to_string()))
            .map_or_else(|| err(text, format!("set {name} is not declared")), Ok)
    };
    let set_name = |t: &str| -> Result<String, CompileError> {
        t.strip_prefix('@')
            .map(str::to_string)
            .map_or_else(|| err(text, format!("expected @set, found {t:?}")), Ok)
    };
    while let Some(t) = p.peek() {
        // Statements.
        match t {
            "jump" | "goto" => {
                p.i += 1;
                let chain = p.next()?;
                let code = if t == "jump" {
                    verdict::JUMP
                } else {
                    verdict::GOTO
                };
                out.exprs.push(Expr::Immediate {
                    dreg: 0,
                    data: Data::Verdict(code, Some(chain.to_string())),
                });
                continue;
            }
            "drop" | "accept" | "return" | "continue" => {
                p.i += 1;
                out.exprs.push(Expr::Immediate {
                    dreg: 0,
                    data: verdict_data(text, t)?,
                });
                continue;
            }
            "reject" => {
                p.i += 1;
                let code = match fam {
                    Family::Ip => 3,
                    Family::Ip6 => 4,
                };
                out.exprs.push(Expr::Reject { kind: 0, code });
                continue;
            }
            "counter" => {
                p.i += 1;
                out.exprs.push(Expr::Counter);
                continue;
            }
            "masquerade" => {
                p.i += 1;
                let mut flags = 0;
                while let Some(f) = p.peek() {
                    match f {
                        "fully-random" => flags |= 0x10,
                        "random" => flags |= 0x4,
                        "persistent" => flags |= 0x8,
                        _ => break,
                    }
                    p.i += 1;
                }
                out.exprs.push(Expr::Masq { flags });
                continue;
            }
            "meta" if p.peek_at(1) == Some("mark") && p.peek_at(2) == Some("set") => {
                p.i += 3;
                p.expect("meta")?;
                p.expect("mark")?;
                let op = p.next()?;
                let v = hex_or_dec(text, p.next()?)?;
                let (mask, xor) = match op {
                    "|" => (!v, v),
                    "^" => (u32::MAX, v),
                    o => return p.bad(o),
                };
                out.exprs.push(Expr::Meta {
                    dreg: 1,
                    key: expr::meta::MARK,
                });
                out.exprs.push(Expr::Bitwise {
                    sreg: 1,
                    dreg: 1,
                    mask: mask.to_ne_bytes().to_vec(),
                    xor: xor.to_ne_bytes().to_vec(),
                });
                out.exprs.push(Expr::MetaSet {
                    sreg: 1,
                    key: expr::meta::MARK,
                });
                continue;
            }
            "update" => {
                p.i += 1;
                let name = set_name(p.next()?)?;
                p.expect("{")?;
                let Some((exprs, _)) = p.concat()? else {
                    return p.bad(p.peek().unwrap_or("end"));
                };
                let mut timeout_ms = None;
                if p.peek() == Some("timeout") {
                    p.i += 1;
                    let t = p.next()?;
                    let secs: u64 = num(text, t.strip_suffix('s').unwrap_or(t))?;
                    timeout_ms = Some(secs * 1000);
                }
                p.expect("}")?;
                out.exprs.extend(exprs);
                out.exprs.push(Expr::Dynset {
                    op: 1,
                    sreg_key: 1,
                    set: name,
                    timeout_ms,
                });
                continue;
            }
            "dnat" => {
                p.i += 1;
                let f = p.next()?;
                if f != fam.as_str() {
                    return err(text, format!("dnat {f} in a {} table", fam.as_str()));
                }
                let nfp = u32::from(nfproto(fam));
                if p.peek() == Some("to") {
                    p.i += 1;
                    let dst = p.next()?;
                    let (addr, port) = match fam {
                        Family::Ip => dst.rsplit_once(':'),
                        Family::Ip6 => dst.strip_prefix('[').and_then(|d| d.split_once("]:")),
                    }
                    .map_or_else(|| err(text, format!("bad dnat target {dst:?}")), Ok)?;
                    let dt = if fam == Family::Ip {
                        Dt::Ipv4
                    } else {
                        Dt::Ipv6
                    };
                    out.exprs.push(Expr::Immediate {
                        dreg: 1,
                        data: Data::Value(value_bytes(text, dt, addr)?),
                    });
                    out.exprs.push(Expr::Immediate {
                        dreg: 2,
                        data: Data::Value(value_bytes(text, Dt::Service, port)?),
                    });
                    out.exprs.push(Expr::Nat {
                        kind: 1,
                        family: nfp,
                        addr: Some(1),
                        proto: Some(2),
                        flags: 0x2,
                    });
                    continue;
                }
                p.expect("addr")?;
                p.expect(".")?;
                p.expect("port")?;
                p.expect("to")?;
                let Some((exprs, _)) = p.concat()? else {
                    return p.bad(p.peek().unwrap_or("end"));
                };
                p.expect("map")?;
                let name = set_name(p.next()?)?;
                let info = set_info(&name)?;
                // The map's value names the transport protocol
                // (`ip daddr . tcp dport`); nft matches it first.
                let proto = info
                    .data
                    .as_ref()
                    .and_then(|d| d.as_ref())
                    .and_then(|d| d.typeof_udata.as_ref())
                    .and_then(|u| l4_of_typeof(u));
                let first = ctx.dnat_maps.insert((fam, table.to_string(), name.clone()));
                if let Some(proto) = proto.filter(|_| first) {
                    out.exprs.push(Expr::Meta {
                        dreg: 1,
                        key: expr::meta::L4PROTO,
                    });
                    out.exprs.push(Expr::Cmp {
                        sreg: 1,
                        op: expr::cmp::EQ,
                        data: vec![proto],
                    });
                }
                out.exprs.extend(exprs);
                out.exprs.push(Expr::Lookup {
                    sreg: 1,
                    dreg: Some(1),
                    set: name,
                    set_id: None,
                    invert: false,
                });
                let addr_slots = Sel::Addr(fam).len().div_ceil(4);
                out.exprs.push(Expr::Nat {
                    kind: 1,
                    family: nfp,
                    addr: Some(1),
                    proto: Some(reg32(addr_slots)),
                    flags: 0,
                });
                continue;
            }
            _ => {}
        }
        // A match: selector(s), then a relation.
        let Some((exprs, sels)) = p.concat()? else {
            return p.bad(t);
        };
        out.exprs.extend(exprs);
        let t = p.next()?;
        if let Some(name) = t.strip_prefix('@') {
            set_info(name)?;
            out.exprs.push(Expr::Lookup {
                sreg: 1,
                dreg: None,
                set: name.to_string(),
                set_id: None,
                invert: false,
            });
            continue;
        }
        if t == "vmap" {
            let name = set_name(p.next()?)?;
            set_info(&name)?;
            out.exprs.push(Expr::Lookup {
                sreg: 1,
                dreg: Some(0),
                set: name,
                set_id: None,
                invert: false,
            });
            continue;
        }
        if sels.len() != 1 {
            return err(
                text,
                format!("unsupported relation {t:?} on a concatenation"),
            );
        }
        let sel = sels[0];
        let (neg, t) = if t == "!=" {
            (true, p.next()?)
        } else {
            (false, t)
        };
        let op = if neg { expr::cmp::NEQ } else { expr::cmp::EQ };
        if t == "&" {
            let mask = hex_or_dec(text, p.next()?)?;
            let (op2, v) = match p.next()? {
                "!=" => (expr::cmp::NEQ, p.next()?),
                "==" => (expr::cmp::EQ, p.next()?),
                v => (expr::cmp::EQ, v),
            };
            let v = hex_or_dec(text, v)?;
            out.exprs.push(Expr::Bitwise {
                sreg: 1,
                dreg: 1,
                mask: mask.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            });
            out.exprs.push(Expr::Cmp {
                sreg: 1,
                op: op2,
                data: v.to_ne_bytes().to_vec(),
            });
            continue;
        }
        if t == "{" {
            let mut items = Vec::new();
            loop {
                let v = p.next()?;
                match v {
                    "}" => break,
                    "," => {}
                    v => items.push(v),
                }
            }
            let Sel::Addr(_) = sel else {
                return err(text, "anonymous sets only of addresses");
            };
            if items.len() == 1 {
                let mut load = out_load(&mut out);
                let exprs = addr_match(text, fam, items[0], op, &mut load)?;
                out.exprs.extend(exprs);
                continue;
            }
            let mut ranges = Vec::new();
            for it in &items {
                ranges.push((cidr_range(text, it)?.1, Vec::new()));
            }
            let elems = interval_elems(ranges, true);
            let id = ctx.next_id;
            ctx.next_id += 1;
            let dt = if fam == Family::Ip {
                Dt::Ipv4
            } else {
                Dt::Ipv6
            };
            let mut udata = Vec::new();
            udata_put(&mut udata, 0, &2u32.to_ne_bytes());
            udata_put(&mut udata, 2, &1u32.to_ne_bytes());
            let field = match (fam, &out.exprs.last()) {
                (Family::Ip, Some(Expr::Payload { offset: 12, .. })) => (12, 11),
                (Family::Ip, _) => (12, 12),
                (Family::Ip6, Some(Expr::Payload { offset: 8, .. })) => (13, 8),
                (Family::Ip6, _) => (13, 9),
            };
            let mut pd = Vec::new();
            udata_put(&mut pd, 0, &(field.0 as u32).to_ne_bytes());
            udata_put(&mut pd, 1, &(field.1 as u32).to_ne_bytes());
            let mut te = Vec::new();
            udata_put(&mut te, 0, &7u32.to_ne_bytes());
            udata_put(&mut te, 1, &pd);
            udata_put(&mut udata, 3, &te);
            out.anon.push(AnonSet {
                spec: SetSpec {
                    name: "__set%d".into(),
                    id,
                    flags: 0x1 | 0x2 | 0x4,
                    key_type: dt.id(),
                    key_len: dt.len() as u32,
                    data: None,
                    size: Some(elems.len() as u32),
                    timeout_ms: None,
                    udata,
                },
                elems,
            });
            out.exprs.push(Expr::Lookup {
                sreg: 1,
                dreg: None,
                set: "__set%d".into(),
                set_id: Some(id),
                invert: neg,
            });
            continue;
        }
        match sel {
            Sel::Addr(_) => {
                let mut load = out_load(&mut out);
                let exprs = addr_match(text, fam, t, op, &mut load)?;
                out.exprs.extend(exprs);
            }
            Sel::L4proto => out.exprs.push(Expr::Cmp {
                sreg: 1,
                op,
                data: vec![proto_num(text, t)?],
            }),
            Sel::Dport => out.exprs.push(Expr::Cmp {
                sreg: 1,
                op,
                data: num::<u16>(text, t)?.to_be_bytes().to_vec(),
            }),
            Sel::Mark | Sel::Numgen => out.exprs.push(Expr::Cmp {
                sreg: 1,
                op,
                data: hex_or_dec(text, t)?.to_ne_bytes().to_vec(),
            }),
            Sel::CtState | Sel::CtStatus => {
                let mut bits = 0u32;
                for name in t.split(',') {
                    bits |= match (sel, name) {
                        (Sel::CtState, "invalid") => 1,
                        (Sel::CtState, "established") => 2,
                        (Sel::CtState, "related") => 4,
                        (Sel::CtState, "new") => 8,
                        (Sel::CtState, "untracked") => 64,
                        (Sel::CtStatus, "expected") => 1,
                        (Sel::CtStatus, "seen-reply") => 2,
                        (Sel::CtStatus, "assured") => 4,
                        (Sel::CtStatus, "confirmed") => 8,
                        (Sel::CtStatus, "snat") => 16,
                        (Sel::CtStatus, "dnat") => 32,
                        _ => return err(text, format!("unknown ct value {name:?}")),
                    };
                }
                out.exprs.push(Expr::Bitwise {
                    sreg: 1,
                    dreg: 1,
                    mask: bits.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                });
                let op = if neg { expr::cmp::EQ } else { expr::cmp::NEQ };
                out.exprs.push(Expr::Cmp {
                    sreg: 1,
                    op,
                    data: vec![0; 4],
                });
            }
            Sel::FibType => {
                let v: u32 = match t {
                    "unicast" => 1,
                    "local" => 2,
                    "broadcast" => 3,
                    "anycast" => 4,
                    "multicast" => 5,
                    "blackhole" => 6,
                    "unreachable" => 7,
                    "prohibit" => 8,
                    _ => return err(text, format!("unknown address type {t:?}")),
                };
                out.exprs.push(Expr::Cmp {
                    sreg: 1,
                    op,
                    data: v.to_ne_bytes().to_vec(),
                });
            }
            Sel::Ifname => {
                let name = t.trim_matches('"');
                let data = match name.strip_suffix('*') {
                    Some(prefix) => prefix.as_bytes().to_vec(),
                    None => {
                        let mut v = name.as_bytes().to_vec();
                        v.resize(16, 0);
                        v
                    }
                };
                out.exprs.push(Expr::Cmp { sreg: 1, op, data });
            }
        }
    }
    Ok(out)
}

/// The load of the address just parsed, taken back so a prefix match can
/// shorten it.
fn out_load(out: &mut CompiledRule) -> Option<Expr> {
    out.exprs.pop()
}

/// An address or prefix compared with what `load` loads: a byte-aligned
/// prefix loads and compares only its bytes; another prefix masks the
/// address first.
fn addr_match(
    text: &str,
    fam: Family,
    v: &str,
    op: u32,
    load: &mut Option<Expr>,
) -> Result<Vec<Expr>, CompileError> {
    let Some(Expr::Payload { offset, base, .. }) = load.take() else {
        return err(text, "an address match without a load");
    };
    let (ip, (start, _)) = cidr_range(text, v)?;
    if matches!(
        (fam, ip),
        (Family::Ip, IpAddr::V6(_)) | (Family::Ip6, IpAddr::V4(_))
    ) {
        return err(text, format!("{v} is not an {} address", fam.as_str()));
    }
    let bits = start.len() as u32 * 8;
    let plen = match v.split_once('/') {
        Some((_, p)) => num::<u32>(text, p)?.min(bits),
        None => bits,
    };
    let mut out = Vec::new();
    if plen % 8 == 0 && plen > 0 {
        let n = plen / 8;
        out.push(Expr::Payload {
            dreg: 1,
            base,
            offset,
            len: n,
        });
        out.push(Expr::Cmp {
            sreg: 1,
            op,
            data: start[..n as usize].to_vec(),
        });
    } else {
        let len = start.len() as u32;
        out.push(Expr::Payload {
            dreg: 1,
            base,
            offset,
            len,
        });
        let mut mask = vec![0u8; start.len()];
        for i in 0..plen {
            mask[(i / 8) as usize] |= 1 << (7 - i % 8);
        }
        out.push(Expr::Bitwise {
            sreg: 1,
            dreg: 1,
            mask,
            xor: vec![0; start.len()],
        });
        out.push(Expr::Cmp {
            sreg: 1,
            op,
            data: start,
        });
    }
    Ok(out)
}

/// The protocol a `typeof` value names (`tcp dport` → 6), from its user
/// data: the last payload with protocol id tcp (8), udp (6) or sctp (10).
fn l4_of_typeof(u: &[u8]) -> Option<u8> {
    // Payload user data is `00 04 <desc u32> 01 04 <field u32>`.
    u.windows(6).find_map(|w| match w {
        [0, 4, 8, 0, 0, 0] => Some(6),
        [0, 4, 6, 0, 0, 0] => Some(17),
        [0, 4, 10, 0, 0, 0] => Some(132),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> SetRegistry {
        let mut r = SetRegistry::new();
        let s = Set {
            name: "m".into(),
            map: true,
            set_type: SetType::Typeof(
                "ip daddr . meta l4proto . th dport . numgen random mod 1 : ip daddr . tcp dport"
                    .into(),
            ),
            flags: vec![],
            timeout: None,
            size: None,
            comment: None,
            elements: Default::default(),
        };
        let (_, info) = set_spec(Family::Ip, &s, 1).expect("spec");
        r.insert((Family::Ip, "t".into(), "m".into()), info);
        r
    }

    #[test]
    fn dnat_through_a_map_matches_the_protocol_first() {
        let mut id = BatchCtx::default();
        let text = "dnat ip addr . port to ip daddr . meta l4proto . th dport . numgen random mod 2 map @m";
        let r = rule(Family::Ip, "t", text, &reg(), &mut id).expect("compiles");
        let again = rule(Family::Ip, "t", text, &reg(), &mut id).expect("compiles");
        assert_eq!(
            again.exprs.len() + 2,
            r.exprs.len(),
            "as nft: only the first rule per map"
        );
        assert_eq!(
            r.exprs[0],
            Expr::Meta {
                dreg: 1,
                key: expr::meta::L4PROTO
            }
        );
        assert_eq!(
            r.exprs[1],
            Expr::Cmp {
                sreg: 1,
                op: 0,
                data: vec![6]
            }
        );
        assert_eq!(
            r.exprs.last(),
            Some(&Expr::Nat {
                kind: 1,
                family: 2,
                addr: Some(1),
                proto: Some(9),
                flags: 0
            })
        );
    }

    #[test]
    fn prefixes_load_only_their_bytes() {
        let mut id = BatchCtx::default();
        let r = rule(
            Family::Ip,
            "t",
            "ip saddr != 10.244.0.0/16 drop",
            &reg(),
            &mut id,
        )
        .expect("ok");
        assert_eq!(
            r.exprs[0],
            Expr::Payload {
                dreg: 1,
                base: 1,
                offset: 12,
                len: 2
            }
        );
        assert_eq!(
            r.exprs[1],
            Expr::Cmp {
                sreg: 1,
                op: 1,
                data: vec![10, 244]
            }
        );
        let r = rule(
            Family::Ip,
            "t",
            "ip saddr != 203.0.113.0/25 drop",
            &reg(),
            &mut id,
        )
        .expect("ok");
        assert!(
            matches!(&r.exprs[1], Expr::Bitwise { mask, .. } if mask == &vec![255, 255, 255, 128])
        );
    }

    #[test]
    fn unknown_text_is_an_error() {
        let mut id = BatchCtx::default();
        let e =
            rule(Family::Ip, "t", "ip saddr @nope drop", &reg(), &mut id).expect_err("unknown set");
        assert!(e.to_string().contains("set nope is not declared"), "{e}");
        let e = rule(Family::Ip, "t", "tcp flags syn drop", &reg(), &mut id).expect_err("grammar");
        assert!(e.to_string().contains("unsupported token \"tcp\""), "{e}");
    }

    #[test]
    fn intervals_as_nft_sends_them() {
        let r = |s: &str| cidr_range("x", s).expect("cidr").1;
        let e = interval_elems(
            vec![(r("9.9.9.9/32"), vec![]), (r("1.2.3.0/24"), vec![])],
            true,
        );
        let keys: Vec<(Vec<u8>, u32)> = e.iter().map(|e| (e.key.clone(), e.flags)).collect();
        assert_eq!(
            keys,
            vec![
                (vec![0, 0, 0, 0], 1),
                (vec![1, 2, 3, 0], 0),
                (vec![1, 2, 4, 0], 1),
                (vec![9, 9, 9, 9], 0),
                (vec![9, 9, 9, 10], 1),
            ]
        );
    }
}
