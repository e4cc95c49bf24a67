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

use kproxy_netlink::expr::Expr;
use kproxy_netlink::obj::{ElemSpec, SetSpec};

use crate::ir::Family;

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

mod elements;
mod lexer;
mod parser;
mod rule;
mod sets;
mod values;

pub use elements::elements;
pub use rule::rule;
pub use sets::set_spec;

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

#[cfg(test)]
mod tests {
    use super::elements::interval_elems;
    use super::values::cidr_range;
    use super::*;
    use crate::ir::{Set, SetType};
    use kproxy_netlink::expr;

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
