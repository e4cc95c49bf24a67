//! Literal values (numbers, addresses, protocols, verdicts, CIDRs) as
//! key and data bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kproxy_netlink::expr::{Data, verdict};

use super::{CompileError, Dt, err};

pub(super) fn num<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, CompileError> {
    s.parse()
        .or_else(|_| err(what, format!("{s:?} is not a number")))
}

pub(super) fn hex_or_dec(what: &str, s: &str) -> Result<u32, CompileError> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).or_else(|_| err(what, format!("bad number {s:?}"))),
        None => num(what, s),
    }
}

pub(super) fn proto_num(what: &str, s: &str) -> Result<u8, CompileError> {
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
pub(super) fn value_bytes(what: &str, dt: Dt, s: &str) -> Result<Vec<u8>, CompileError> {
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

/// A key or value of components `dts`, padded as a concatenation,
/// appended to `out`; the error is the reason only (the caller names the
/// element, so nothing is formatted on success).
pub(super) fn concat_into(out: &mut Vec<u8>, dts: &[Dt], s: &str) -> Result<(), String> {
    let n = s.split(" . ").count();
    if n != dts.len() {
        return Err(format!("{n} components, the set has {}", dts.len()));
    }
    for (dt, p) in dts.iter().zip(s.split(" . ")) {
        value_into(out, *dt, p.trim())?;
        if dts.len() > 1 {
            while !out.len().is_multiple_of(4) {
                out.push(0);
            }
        }
    }
    Ok(())
}

/// One component value's bytes appended to `out`.
fn value_into(out: &mut Vec<u8>, dt: Dt, s: &str) -> Result<(), String> {
    match dt {
        Dt::Ipv4 => out.extend_from_slice(
            &s.parse::<Ipv4Addr>()
                .map_err(|_| format!("{s:?} is not an IPv4 address"))?
                .octets(),
        ),
        Dt::Ipv6 => out.extend_from_slice(
            &s.parse::<Ipv6Addr>()
                .map_err(|_| format!("{s:?} is not an IPv6 address"))?
                .octets(),
        ),
        Dt::Proto => out.push(match s {
            "tcp" => 6,
            "udp" => 17,
            "sctp" => 132,
            "icmp" => 1,
            "icmpv6" => 58,
            n => n.parse().map_err(|_| format!("{s:?} is not a number"))?,
        }),
        Dt::Service => out.extend_from_slice(
            &s.parse::<u16>()
                .map_err(|_| format!("{s:?} is not a number"))?
                .to_be_bytes(),
        ),
        Dt::Mark | Dt::Integer => {
            let v = match s.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16).map_err(|_| format!("bad number {s:?}"))?,
                None => s.parse().map_err(|_| format!("{s:?} is not a number"))?,
            };
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
    Ok(())
}

pub(super) fn verdict_data(what: &str, s: &str) -> Result<Data, CompileError> {
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
pub(super) type Range = (Vec<u8>, Vec<u8>);

pub(super) fn cidr_range(what: &str, s: &str) -> Result<(IpAddr, Range), CompileError> {
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
pub(super) fn succ(x: &[u8]) -> Option<Vec<u8>> {
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
