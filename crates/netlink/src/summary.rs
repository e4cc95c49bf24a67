//! [`TableSummary`]: what one table holds, as counts.

use std::collections::BTreeMap;

use crate::msg::{self, MsgType, Request, attr, set_flags};
use crate::{Error, Family, NfSocket};

/// One chain of a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainSummary {
    /// Rules in the chain.
    pub rules: usize,
    /// A base chain (hooked into the packet path).
    pub base: bool,
}

/// One named set or map of a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetSummary {
    /// Elements; in an interval set each range counts once (its closing
    /// element is not counted). A lower bound when not `complete`.
    pub elements: usize,
    /// Every element was counted (not only those of the first reply).
    pub complete: bool,
    /// `enum nft_set_flags` (see [`set_flags`]).
    pub flags: u32,
}

impl SetSummary {
    /// The kernel adds or expires elements on its own (`dynamic`,
    /// `timeout`): the count says nothing about what was applied.
    pub fn is_dynamic(&self) -> bool {
        self.flags & (set_flags::EVAL | set_flags::TIMEOUT) != 0
    }

    /// An interval set, whose ranges nft may store merged or split.
    pub fn is_interval(&self) -> bool {
        self.flags & set_flags::INTERVAL != 0
    }
}

/// A table's chains with their rule counts and its sets with their
/// element counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSummary {
    /// By chain name.
    pub chains: BTreeMap<String, ChainSummary>,
    /// By set name.
    pub sets: BTreeMap<String, SetSummary>,
}

impl TableSummary {
    /// Rules in every chain.
    pub fn rules(&self) -> usize {
        self.chains.values().map(|c| c.rules).sum()
    }
}

/// How often a dump interrupted by a concurrent change is read again.
const ATTEMPTS: usize = 3;

/// Read table `family table` from the kernel: `None` when it does not
/// exist. One `GETTABLE`, one `GETCHAIN` dump (of the family; filtered
/// here), one `GETRULE` dump per chain, one `GETSET` dump and one
/// `GETSETELEM` dump per set; replies are counted as they arrive. The
/// elements of the sets `count` accepts (by name) are all counted; of the
/// others only the first reply datagram is read
/// ([`NfSocket::request_first`]), enough to tell an empty set. A dump
/// that a concurrent transaction interrupted is read again (up to three
/// times), so the counts come from one generation of the ruleset.
pub fn read_table(
    sock: &mut NfSocket,
    family: Family,
    table: &str,
    count: &dyn Fn(&str) -> bool,
) -> Result<Option<TableSummary>, Error> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match read_once(sock, family.nfproto(), table, count) {
            Err(e @ Error::Interrupted { .. }) => last = Some(e),
            other => return other,
        }
    }
    Err(last.unwrap_or(Error::Interrupted {
        request: "GETTABLE",
    }))
}

fn read_once(
    sock: &mut NfSocket,
    nfproto: u8,
    table: &str,
    count: &dyn Fn(&str) -> bool,
) -> Result<Option<TableSummary>, Error> {
    let get_table = Request::get(MsgType::GetTable, nfproto).with(attr::TABLE_NAME, table);
    match sock.request(&get_table, |_| {}) {
        Err(e) if e.is_not_found() => return Ok(None),
        r => r?,
    }
    let mut s = TableSummary::default();
    // The chain dump has no table filter: every chain of the family.
    sock.request(&Request::dump(MsgType::GetChain, nfproto), |r| {
        if r.family == nfproto
            && msg::find_str(r.attrs, attr::CHAIN_TABLE) == Some(table)
            && let Some(name) = msg::find_str(r.attrs, attr::CHAIN_NAME)
        {
            let c = s.chains.entry(name.to_string()).or_default();
            c.base = msg::find(r.attrs, attr::CHAIN_HOOK).is_some();
        }
    })?;
    // Rules chain by chain: a dump of the whole table restarts its walk
    // of the table's rules for every reply datagram (quadratic in the
    // table's rules); a dump filtered to one chain walks only that chain.
    for (name, c) in s.chains.iter_mut() {
        let rules = Request::dump(MsgType::GetRule, nfproto)
            .with(attr::RULE_TABLE, table)
            .with(attr::RULE_CHAIN, name);
        sock.request(&rules, |r| {
            if msg::find_str(r.attrs, attr::RULE_CHAIN) == Some(name.as_str()) {
                c.rules += 1;
            }
        })?;
    }
    let sets = Request::dump(MsgType::GetSet, nfproto).with(attr::SET_TABLE, table);
    sock.request(&sets, |r| {
        if msg::find_str(r.attrs, attr::SET_TABLE) == Some(table)
            && let Some(name) = msg::find_str(r.attrs, attr::SET_NAME)
        {
            // Anonymous sets (`__set%d`) belong to their rule.
            if !name.starts_with("__") {
                s.sets.insert(
                    name.to_string(),
                    SetSummary {
                        elements: 0,
                        complete: false,
                        flags: msg::find_be32(r.attrs, attr::SET_FLAGS).unwrap_or(0),
                    },
                );
            }
        }
    })?;
    for (name, set) in s.sets.iter_mut() {
        let all = count(name);
        (set.elements, set.complete) = count_elements(sock, nfproto, table, name, all)?;
    }
    Ok(Some(s))
}

fn elements_request(nfproto: u8, table: &str, set: &str) -> Request {
    Request::dump(MsgType::GetSetElem, nfproto)
        .with(attr::SET_ELEM_LIST_TABLE, table)
        .with(attr::SET_ELEM_LIST_SET, set)
}

/// The elements of one set (closing elements of ranges not counted), all
/// of them or those of the first reply datagram; and whether that was all.
fn count_elements(
    sock: &mut NfSocket,
    nfproto: u8,
    table: &str,
    set: &str,
    all: bool,
) -> Result<(usize, bool), Error> {
    let mut n = 0;
    let req = elements_request(nfproto, table, set);
    let each = |r: crate::socket::Reply<'_>| {
        if let Some(list) = msg::find(r.attrs, attr::SET_ELEM_LIST_ELEMENTS) {
            n += msg::each(list, attr::LIST_ELEM)
                .filter(|e| {
                    msg::find_be32(e, attr::SET_ELEM_FLAGS)
                        .is_none_or(|f| f & msg::SET_ELEM_INTERVAL_END == 0)
                })
                .count();
        }
    };
    let complete = if all {
        sock.request(&req, each)?;
        true
    } else {
        sock.request_first(&req, each)?
    };
    Ok((n, complete))
}

/// The keys (`NFTA_DATA_VALUE` bytes) of every element of a small set, in
/// the kernel's order.
pub fn set_keys(
    sock: &mut NfSocket,
    family: Family,
    table: &str,
    set: &str,
) -> Result<Vec<Vec<u8>>, Error> {
    let elements = set_elements_expiring(sock, family, table, set)?;
    Ok(elements.into_iter().map(|(key, _)| key).collect())
}

/// A set element's key bytes and its remaining time in milliseconds.
pub type ExpiringKey = (Vec<u8>, Option<u64>);

/// The elements of a set with their remaining time: each key's bytes and
/// `NFTA_SET_ELEM_EXPIRATION` in milliseconds, when the element expires.
pub fn set_elements_expiring(
    sock: &mut NfSocket,
    family: Family,
    table: &str,
    set: &str,
) -> Result<Vec<ExpiringKey>, Error> {
    let mut out = Vec::new();
    let req = elements_request(family.nfproto(), table, set);
    sock.request(&req, |r| {
        if let Some(list) = msg::find(r.attrs, attr::SET_ELEM_LIST_ELEMENTS) {
            for e in msg::each(list, attr::LIST_ELEM) {
                if let Some(v) =
                    msg::find(e, attr::SET_ELEM_KEY).and_then(|k| msg::find(k, attr::DATA_VALUE))
                {
                    let exp = msg::find(e, SET_ELEM_EXPIRATION)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_be_bytes);
                    out.push((v.to_vec(), exp));
                }
            }
        }
    })?;
    Ok(out)
}

/// `NFTA_SET_ELEM_EXPIRATION`.
const SET_ELEM_EXPIRATION: u16 = 5;

/// One chain's rules: how many, and the chains they jump or go to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainRules {
    /// Rules in the chain.
    pub rules: usize,
    /// The target chain of each rule whose verdict is a jump or goto, in
    /// rule order.
    pub jumps: Vec<String>,
}

/// Read one chain (`GETCHAIN`, then a `GETRULE` dump of that chain only):
/// `None` when the table or the chain does not exist. Costs one message
/// per rule of that chain, whatever the size of the rest of the table
/// (what iptables-nft keeps, `ip nat KUBE-SERVICES` say, is read this way).
pub fn read_chain(
    sock: &mut NfSocket,
    family: Family,
    table: &str,
    chain: &str,
) -> Result<Option<ChainRules>, Error> {
    let nfproto = family.nfproto();
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let get = Request::get(MsgType::GetChain, nfproto)
            .with(attr::CHAIN_TABLE, table)
            .with(attr::CHAIN_NAME, chain);
        match sock.request(&get, |_| {}) {
            Err(e) if e.is_not_found() => return Ok(None),
            r => r?,
        }
        let mut out = ChainRules::default();
        let rules = Request::dump(MsgType::GetRule, nfproto)
            .with(attr::RULE_TABLE, table)
            .with(attr::RULE_CHAIN, chain);
        let res = sock.request(&rules, |r| {
            if msg::find_str(r.attrs, attr::RULE_TABLE) != Some(table)
                || msg::find_str(r.attrs, attr::RULE_CHAIN) != Some(chain)
            {
                return;
            }
            out.rules += 1;
            if let Some(exprs) = msg::find(r.attrs, attr::RULE_EXPRESSIONS) {
                out.jumps.extend(
                    msg::each(exprs, attr::LIST_ELEM)
                        .filter_map(verdict_chain)
                        .map(str::to_string),
                );
            }
        });
        match res {
            Ok(()) => return Ok(Some(out)),
            Err(e @ Error::Interrupted { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(Error::Interrupted { request: "GETRULE" }))
}

/// The chain an `immediate` expression jumps or goes to.
fn verdict_chain(expr: &[u8]) -> Option<&str> {
    if msg::find_str(expr, attr::EXPR_NAME)? != "immediate" {
        return None;
    }
    let data = msg::find(expr, attr::EXPR_DATA)?;
    let verdict = msg::find(msg::find(data, attr::IMMEDIATE_DATA)?, attr::DATA_VERDICT)?;
    msg::find_str(verdict, attr::VERDICT_CHAIN)
}
