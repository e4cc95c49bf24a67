//! Set declarations: key and data types, `typeof` expressions, flags
//! and user data as `nft` encodes them.

use kproxy_netlink::obj::{SetSpec, udata_put, udata_str};

use crate::ir::{Family, Set, SetType};

use super::values::num;
use super::{CompileError, Dt, KeyDesc, SetInfo, err};

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

pub(super) fn put_typeof(out: &mut Vec<u8>, kind: u8, k: &KeyDesc) {
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

pub(super) fn type_desc(what: &str, t: &str) -> Result<KeyDesc, CompileError> {
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
pub(super) fn typeof_expr(what: &str, f: Family, e: &str) -> Result<(Dt, Vec<u8>), CompileError> {
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

pub(super) fn typeof_desc(what: &str, f: Family, t: &str) -> Result<KeyDesc, CompileError> {
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
