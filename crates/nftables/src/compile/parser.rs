//! The expression parser's state and the loads it builds on
//! (addresses, ports, meta and ct keys).

use kproxy_netlink::expr::{self, Expr, reg32};

use crate::ir::Family;

use super::values::num;
use super::{CompileError, err};

/// One loaded value: its length in bytes and its datatype kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sel {
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
    pub(super) fn len(self) -> u32 {
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
pub(super) type Loaded = (Vec<Expr>, Vec<Sel>);

pub(super) struct P<'a> {
    pub(super) toks: Vec<&'a str>,
    pub(super) i: usize,
    pub(super) text: &'a str,
    pub(super) fam: Family,
}

impl<'a> P<'a> {
    pub(super) fn peek(&self) -> Option<&'a str> {
        self.toks.get(self.i).copied()
    }
    pub(super) fn peek_at(&self, n: usize) -> Option<&'a str> {
        self.toks.get(self.i + n).copied()
    }
    pub(super) fn next(&mut self) -> Result<&'a str, CompileError> {
        let t = self.toks.get(self.i).copied();
        self.i += 1;
        t.map_or_else(|| err(self.text, "unexpected end"), Ok)
    }
    pub(super) fn expect(&mut self, want: &str) -> Result<(), CompileError> {
        let t = self.next()?;
        if t == want {
            Ok(())
        } else {
            err(self.text, format!("expected {want:?}, found {t:?}"))
        }
    }
    pub(super) fn bad<T>(&self, t: &str) -> Result<T, CompileError> {
        err(self.text, format!("unsupported token {t:?}"))
    }

    /// A selector at the cursor, if one starts there.
    pub(super) fn selector(&mut self) -> Result<Option<(Sel, Expr)>, CompileError> {
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
    pub(super) fn concat(&mut self) -> Result<Option<Loaded>, CompileError> {
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

pub(super) fn set_dreg(e: &mut Expr, r: u32) {
    match e {
        Expr::Payload { dreg, .. }
        | Expr::Meta { dreg, .. }
        | Expr::Ct { dreg, .. }
        | Expr::Numgen { dreg, .. }
        | Expr::Fib { dreg, .. } => *dreg = r,
        _ => {}
    }
}
