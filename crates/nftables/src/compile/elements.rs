//! Set elements: keys, values, comments and interval encoding.

use kproxy_netlink::expr::Data;
use kproxy_netlink::obj::{ElemSpec, udata_put, udata_str};

use crate::ir::Element;

use super::values::{Range, cidr_range, concat_into, num, succ, verdict_data};
use super::{CompileError, SetInfo, err};

/// Interval elements for ranges (sorted, adjacent ones merged when
/// `merge`): nft's encoding, an end element (`NFT_SET_ELEM_INTERVAL_END`)
/// after each range and one at zero when the first range starts above it.
pub(super) fn interval_elems(mut ranges: Vec<(Range, Vec<u8>)>, merge: bool) -> Vec<ElemSpec> {
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

pub(super) fn elem_udata(comment: Option<&str>) -> Vec<u8> {
    let mut u = Vec::new();
    if let Some(c) = comment {
        u.reserve(c.len().min(254) + 3);
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
    // The element's name for errors, built only when there is one.
    let what = |k: &str| format!("element {k} of {set}");
    let items = items.into_iter();
    if info.interval {
        let mut ranges = Vec::with_capacity(items.size_hint().0);
        for (k, e) in items {
            if info.key.dts.len() != 1 {
                return err(&what(k), "interval concatenations are not supported");
            }
            let (_, r) = cidr_range(&what(k), k)?;
            ranges.push((r, elem_udata(e.and_then(|e| e.comment.as_deref()))));
        }
        return Ok(interval_elems(ranges, false));
    }
    let key_len = info.key.len() as usize;
    let data_len = match &info.data {
        Some(Some(d)) => d.len() as usize,
        _ => 0,
    };
    let mut out = Vec::with_capacity(items.size_hint().0);
    for (k, e) in items {
        out.push(element(&what, info, key_len, data_len, k, e)?);
    }
    Ok(out)
}

/// One element of a set that is not an interval set.
fn element(
    what: &impl Fn(&str) -> String,
    info: &SetInfo,
    key_len: usize,
    data_len: usize,
    k: &str,
    e: Option<&Element>,
) -> Result<ElemSpec, CompileError> {
    // `key timeout Ns` (elements of sets with timeouts): such a key ends
    // in `s`, no other key does.
    let (key_text, timeout_ms) = match k.ends_with('s').then(|| k.rsplit_once(" timeout ")) {
        Some(Some((key, t))) => {
            let secs: u64 = num(&what(k), t.strip_suffix('s').unwrap_or(t))?;
            (key, Some(secs * 1000))
        }
        _ => (k, None),
    };
    let mut key = Vec::with_capacity(key_len);
    concat_into(&mut key, &info.key.dts, key_text).map_err(|r| bad(what(k), r))?;
    let data = match (e.and_then(|e| e.value.as_deref()), &info.data) {
        (None, _) => None,
        (Some(v), Some(None)) => Some(verdict_data(&what(k), v)?),
        (Some(v), Some(Some(d))) => {
            let mut b = Vec::with_capacity(data_len);
            concat_into(&mut b, &d.dts, v).map_err(|r| bad(what(k), r))?;
            Some(Data::Value(b))
        }
        (Some(_), None) => return err(&what(k), "a value for a set"),
    };
    if e.is_some() && data.is_none() && info.data.is_some() {
        return err(&what(k), "a map element without value");
    }
    Ok(ElemSpec {
        key,
        data,
        flags: 0,
        udata: elem_udata(e.and_then(|e| e.comment.as_deref())),
        timeout_ms,
    })
}

fn bad(what: String, reason: String) -> CompileError {
    CompileError { what, reason }
}
