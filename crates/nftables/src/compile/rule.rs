//! One rule's text compiled into nf_tables expressions.

use std::net::IpAddr;

use kproxy_netlink::expr::{self, Data, Expr, reg32, verdict};
use kproxy_netlink::obj::{SetSpec, udata_put};

use crate::ir::Family;

use super::elements::interval_elems;
use super::lexer::tokens;
use super::parser::{P, Sel};
use super::values::{cidr_range, hex_or_dec, num, proto_num, value_bytes, verdict_data};
use super::{
    AnonSet, BatchCtx, CompileError, CompiledRule, Dt, SetInfo, SetRegistry, err, nfproto,
};

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
pub(super) fn out_load(out: &mut CompiledRule) -> Option<Expr> {
    out.exprs.pop()
}

/// An address or prefix compared with what `load` loads: a byte-aligned
/// prefix loads and compares only its bytes; another prefix masks the
/// address first.
pub(super) fn addr_match(
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
pub(super) fn l4_of_typeof(u: &[u8]) -> Option<u8> {
    // Payload user data is `00 04 <desc u32> 01 04 <field u32>`.
    u.windows(6).find_map(|w| match w {
        [0, 4, 8, 0, 0, 0] => Some(6),
        [0, 4, 6, 0, 0, 0] => Some(17),
        [0, 4, 10, 0, 0, 0] => Some(132),
        _ => None,
    })
}
