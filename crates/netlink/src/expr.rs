//! nf_tables expressions (`NFTA_EXPR_*` of `nf_tables.h`) and their
//! encoding inside a rule's `NFTA_RULE_EXPRESSIONS`. Registers are the
//! kernel's numbers: `NFT_REG_VERDICT` (0), the 128-bit `NFT_REG_1..4`
//! (1..4) and the 32-bit `NFT_REG32_00..15` (8..23); [`reg32`] converts
//! a 32-bit slot index the way nft numbers them.

use crate::batch::AttrWriter;

/// The name nft prints for a 32-bit register slot `k` (0-based): slots on
/// a 128-bit boundary use `NFT_REG_1..4`, the others `NFT_REG32_xx`.
pub const fn reg32(k: u32) -> u32 {
    if k.is_multiple_of(4) {
        1 + k / 4
    } else {
        8 + k
    }
}

/// `NFT_PAYLOAD_NETWORK_HEADER`.
pub const BASE_NETWORK: u32 = 1;
/// `NFT_PAYLOAD_TRANSPORT_HEADER`.
pub const BASE_TRANSPORT: u32 = 2;

/// `enum nft_meta_keys` values used by kproxy.
pub mod meta {
    /// `NFT_META_MARK`.
    pub const MARK: u32 = 3;
    /// `NFT_META_IIFNAME`.
    pub const IIFNAME: u32 = 6;
    /// `NFT_META_OIFNAME`.
    pub const OIFNAME: u32 = 7;
    /// `NFT_META_L4PROTO`.
    pub const L4PROTO: u32 = 16;
}

/// `enum nft_ct_keys` values used by kproxy.
pub mod ct {
    /// `NFT_CT_STATE`.
    pub const STATE: u32 = 0;
    /// `NFT_CT_STATUS`.
    pub const STATUS: u32 = 2;
    /// `NFT_CT_MARK`.
    pub const MARK: u32 = 3;
}

/// `enum nft_cmp_ops`.
pub mod cmp {
    /// `NFT_CMP_EQ`.
    pub const EQ: u32 = 0;
    /// `NFT_CMP_NEQ`.
    pub const NEQ: u32 = 1;
}

/// Verdict codes (`NF_DROP`, `NF_ACCEPT`, `NFT_*`).
pub mod verdict {
    /// `NF_DROP`.
    pub const DROP: i32 = 0;
    /// `NF_ACCEPT`.
    pub const ACCEPT: i32 = 1;
    /// `NFT_CONTINUE`.
    pub const CONTINUE: i32 = -1;
    /// `NFT_RETURN`.
    pub const RETURN: i32 = -5;
    /// `NFT_JUMP`.
    pub const JUMP: i32 = -3;
    /// `NFT_GOTO`.
    pub const GOTO: i32 = -4;
}

/// Immediate or element data: a value or a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// `NFTA_DATA_VALUE`.
    Value(Vec<u8>),
    /// `NFTA_DATA_VERDICT`: code and, for jump and goto, the chain.
    Verdict(i32, Option<String>),
}

impl Data {
    /// Write as the nested `NFTA_DATA_*` of attribute `kind`.
    pub fn put(&self, w: &mut impl AttrWriter, kind: u16) {
        let n = w.nest(kind);
        match self {
            Data::Value(v) => w.put(1, v),
            Data::Verdict(code, chain) => {
                let v = w.nest(2);
                w.put(1, &code.to_be_bytes());
                if let Some(c) = chain {
                    w.put_str(2, c);
                }
                w.end_nest(v);
            }
        }
        w.end_nest(n);
    }
}

/// One expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `payload load LEN @ BASE + OFFSET => DREG`.
    Payload {
        /// Destination register.
        dreg: u32,
        /// Header base.
        base: u32,
        /// Offset in bytes.
        offset: u32,
        /// Length in bytes.
        len: u32,
    },
    /// `meta load KEY => DREG`.
    Meta {
        /// Destination register.
        dreg: u32,
        /// The key ([`meta`]).
        key: u32,
    },
    /// `meta set KEY with SREG`.
    MetaSet {
        /// Source register.
        sreg: u32,
        /// The key ([`meta`]).
        key: u32,
    },
    /// `ct load KEY => DREG`.
    Ct {
        /// Destination register.
        dreg: u32,
        /// The key ([`ct`]).
        key: u32,
    },
    /// `cmp OP SREG DATA`.
    Cmp {
        /// Source register.
        sreg: u32,
        /// [`cmp`].
        op: u32,
        /// The value compared with.
        data: Vec<u8>,
    },
    /// `bitwise DREG = (SREG & MASK) ^ XOR`.
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// Mask.
        mask: Vec<u8>,
        /// Xor.
        xor: Vec<u8>,
    },
    /// `lookup SREG set NAME [dreg DREG]`.
    Lookup {
        /// Key register.
        sreg: u32,
        /// Data register for maps (0 for verdict maps).
        dreg: Option<u32>,
        /// The set's name.
        set: String,
        /// The set's id within this batch (anonymous sets).
        set_id: Option<u32>,
        /// Match when absent.
        invert: bool,
    },
    /// `immediate DREG DATA`.
    Immediate {
        /// Destination register (0: the verdict).
        dreg: u32,
        /// The data.
        data: Data,
    },
    /// `numgen DREG = TYPE mod MODULUS [offset OFFSET]`.
    Numgen {
        /// Destination register.
        dreg: u32,
        /// Modulus.
        modulus: u32,
        /// `NFT_NG_INCREMENTAL` (0) or `NFT_NG_RANDOM` (1).
        kind: u32,
        /// Offset (0: not sent).
        offset: u32,
    },
    /// `dynset OP reg_key SREG set NAME [timeout MS]`.
    Dynset {
        /// `NFT_DYNSET_OP_ADD` (0) or `NFT_DYNSET_OP_UPDATE` (1).
        op: u32,
        /// Key register.
        sreg_key: u32,
        /// The set.
        set: String,
        /// Timeout in milliseconds.
        timeout_ms: Option<u64>,
    },
    /// `nat TYPE FAMILY addr_min REG proto_min REG flags FLAGS`.
    Nat {
        /// `NFT_NAT_SNAT` (0) or `NFT_NAT_DNAT` (1).
        kind: u32,
        /// `NFPROTO_IPV4` / `NFPROTO_IPV6`.
        family: u32,
        /// Address register.
        addr: Option<u32>,
        /// Port register.
        proto: Option<u32>,
        /// `NF_NAT_RANGE_*` flags.
        flags: u32,
    },
    /// `masq flags FLAGS`.
    Masq {
        /// `NF_NAT_RANGE_*` flags.
        flags: u32,
    },
    /// `reject type TYPE code CODE`.
    Reject {
        /// `enum nft_reject_types`.
        kind: u32,
        /// ICMP code.
        code: u8,
    },
    /// `fib FLAGS RESULT => DREG`.
    Fib {
        /// Destination register.
        dreg: u32,
        /// `enum nft_fib_result`.
        result: u32,
        /// `enum nft_fib_flags`.
        flags: u32,
    },
    /// `counter`.
    Counter,
}

impl Expr {
    /// The expression's name (`NFTA_EXPR_NAME`).
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Immediate { .. } => "immediate",
            Expr::Numgen { .. } => "numgen",
            Expr::Dynset { .. } => "dynset",
            Expr::Nat { .. } => "nat",
            Expr::Masq { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::Fib { .. } => "fib",
            Expr::Counter => "counter",
        }
    }

    /// Write as one `NFTA_LIST_ELEM` of a rule's expression list.
    pub fn put(&self, w: &mut impl AttrWriter) {
        let elem = w.nest(1);
        w.put_str(1, self.name());
        let d = w.nest(2);
        match self {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => {
                w.put_be32(1, *dreg);
                w.put_be32(2, *base);
                w.put_be32(3, *offset);
                w.put_be32(4, *len);
            }
            Expr::Meta { dreg, key } => {
                w.put_be32(2, *key);
                w.put_be32(1, *dreg);
            }
            Expr::MetaSet { sreg, key } => {
                w.put_be32(2, *key);
                w.put_be32(3, *sreg);
            }
            Expr::Ct { dreg, key } => {
                w.put_be32(2, *key);
                w.put_be32(1, *dreg);
            }
            Expr::Cmp { sreg, op, data } => {
                w.put_be32(1, *sreg);
                w.put_be32(2, *op);
                Data::Value(data.clone()).put(w, 3);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                w.put_be32(1, *sreg);
                w.put_be32(2, *dreg);
                w.put_be32(3, mask.len() as u32);
                Data::Value(mask.clone()).put(w, 4);
                Data::Value(xor.clone()).put(w, 5);
            }
            Expr::Lookup {
                sreg,
                dreg,
                set,
                set_id,
                invert,
            } => {
                w.put_be32(2, *sreg);
                if let Some(d) = dreg {
                    w.put_be32(3, *d);
                }
                w.put_str(1, set);
                if let Some(id) = set_id {
                    w.put_be32(4, *id);
                }
                if *invert {
                    w.put_be32(5, 1);
                }
            }
            Expr::Immediate { dreg, data } => {
                w.put_be32(1, *dreg);
                data.put(w, 2);
            }
            Expr::Numgen {
                dreg,
                modulus,
                kind,
                offset,
            } => {
                w.put_be32(1, *dreg);
                w.put_be32(2, *modulus);
                w.put_be32(3, *kind);
                if *offset != 0 {
                    w.put_be32(4, *offset);
                }
            }
            Expr::Dynset {
                op,
                sreg_key,
                set,
                timeout_ms,
            } => {
                w.put_be32(4, *sreg_key);
                w.put_be32(3, *op);
                if let Some(t) = timeout_ms {
                    w.put_be64(6, *t);
                }
                w.put_str(1, set);
            }
            Expr::Nat {
                kind,
                family,
                addr,
                proto,
                flags,
            } => {
                w.put_be32(1, *kind);
                w.put_be32(2, *family);
                if let Some(r) = addr {
                    w.put_be32(3, *r);
                }
                if let Some(r) = proto {
                    w.put_be32(5, *r);
                }
                if *flags != 0 {
                    w.put_be32(7, *flags);
                }
            }
            Expr::Masq { flags } => {
                if *flags != 0 {
                    w.put_be32(1, *flags);
                }
            }
            Expr::Reject { kind, code } => {
                w.put_be32(1, *kind);
                w.put(2, &[*code]);
            }
            Expr::Fib {
                dreg,
                result,
                flags,
            } => {
                w.put_be32(1, *dreg);
                w.put_be32(2, *result);
                w.put_be32(3, *flags);
            }
            Expr::Counter => {
                w.put_be64(1, 0);
                w.put_be64(2, 0);
            }
        }
        w.end_nest(d);
        w.end_nest(elem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_as_nft_numbers_them() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5].map(reg32),
            [1, 9, 10, 11, 2, 13],
            "ip6 daddr . meta l4proto . th dport uses reg 1, 2, 13"
        );
    }

    #[test]
    fn encodes_a_verdict() {
        let mut v = Vec::new();
        Expr::Immediate {
            dreg: 0,
            data: Data::Verdict(verdict::JUMP, Some("services".into())),
        }
        .put(&mut v);
        let name = crate::msg::find(&v[4..], 1).expect("name");
        assert_eq!(name, b"immediate\0");
        assert!(v.windows(9).any(|w| w == b"services\0"));
    }
}
