//! The nf_tables messages and attributes kproxy uses, their encoding into
//! requests and attribute lookup in replies. Numbers are from
//! `include/uapi/linux/netfilter/nf_tables.h` and
//! `include/uapi/linux/netfilter/nfnetlink.h`.

use netlink_packet_core::{
    DefaultNla, Emitable as _, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NlaBuffer,
    NlasIterator,
};

/// The nfnetlink subsystem of nf_tables (`NFNL_SUBSYS_NFTABLES`).
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNETLINK_V0`.
const NFNETLINK_V0: u8 = 0;
/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nfgenmsg)`: family, version, resource id.
pub const NFGENMSG_LEN: usize = 4;

/// The nf_tables message types kproxy sends (`enum nf_tables_msg_types`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MsgType {
    /// `NFT_MSG_GETTABLE`.
    GetTable = 1,
    /// `NFT_MSG_GETCHAIN`.
    GetChain = 4,
    /// `NFT_MSG_GETRULE`.
    GetRule = 7,
    /// `NFT_MSG_GETSET`.
    GetSet = 10,
    /// `NFT_MSG_GETSETELEM`.
    GetSetElem = 13,
}

impl MsgType {
    /// The name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            MsgType::GetTable => "nf_tables GETTABLE",
            MsgType::GetChain => "nf_tables GETCHAIN",
            MsgType::GetRule => "nf_tables GETRULE",
            MsgType::GetSet => "nf_tables GETSET",
            MsgType::GetSetElem => "nf_tables GETSETELEM",
        }
    }
}

/// Attributes (`enum nft_*_attributes`), by the object they belong to.
pub mod attr {
    /// `NFTA_TABLE_NAME`.
    pub const TABLE_NAME: u16 = 1;
    /// `NFTA_CHAIN_TABLE`.
    pub const CHAIN_TABLE: u16 = 1;
    /// `NFTA_CHAIN_NAME`.
    pub const CHAIN_NAME: u16 = 3;
    /// `NFTA_CHAIN_HOOK` (present on base chains).
    pub const CHAIN_HOOK: u16 = 4;
    /// `NFTA_RULE_TABLE`.
    pub const RULE_TABLE: u16 = 1;
    /// `NFTA_RULE_CHAIN`.
    pub const RULE_CHAIN: u16 = 2;
    /// `NFTA_RULE_EXPRESSIONS` (nested list of `NFTA_LIST_ELEM`).
    pub const RULE_EXPRESSIONS: u16 = 4;
    /// `NFTA_EXPR_NAME`.
    pub const EXPR_NAME: u16 = 1;
    /// `NFTA_EXPR_DATA`.
    pub const EXPR_DATA: u16 = 2;
    /// `NFTA_IMMEDIATE_DATA` (nested `NFTA_DATA_*`).
    pub const IMMEDIATE_DATA: u16 = 2;
    /// `NFTA_DATA_VERDICT` (nested `NFTA_VERDICT_*`).
    pub const DATA_VERDICT: u16 = 2;
    /// `NFTA_VERDICT_CHAIN`: the target of a jump or goto.
    pub const VERDICT_CHAIN: u16 = 2;
    /// `NFTA_SET_TABLE`.
    pub const SET_TABLE: u16 = 1;
    /// `NFTA_SET_NAME`.
    pub const SET_NAME: u16 = 2;
    /// `NFTA_SET_FLAGS` (big-endian u32, `enum nft_set_flags`).
    pub const SET_FLAGS: u16 = 3;
    /// `NFTA_SET_ELEM_LIST_TABLE`.
    pub const SET_ELEM_LIST_TABLE: u16 = 1;
    /// `NFTA_SET_ELEM_LIST_SET`.
    pub const SET_ELEM_LIST_SET: u16 = 2;
    /// `NFTA_SET_ELEM_LIST_ELEMENTS` (nested list of `NFTA_LIST_ELEM`).
    pub const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    /// `NFTA_LIST_ELEM`.
    pub const LIST_ELEM: u16 = 1;
    /// `NFTA_SET_ELEM_KEY` (nested `NFTA_DATA_*`).
    pub const SET_ELEM_KEY: u16 = 1;
    /// `NFTA_SET_ELEM_FLAGS` (big-endian u32).
    pub const SET_ELEM_FLAGS: u16 = 3;
    /// `NFTA_DATA_VALUE`.
    pub const DATA_VALUE: u16 = 1;
}

/// `enum nft_set_flags` bits.
pub mod set_flags {
    /// `NFT_SET_INTERVAL`: ranges, stored as start and end elements.
    pub const INTERVAL: u32 = 0x4;
    /// `NFT_SET_MAP`.
    pub const MAP: u32 = 0x8;
    /// `NFT_SET_TIMEOUT`: elements expire.
    pub const TIMEOUT: u32 = 0x10;
    /// `NFT_SET_EVAL`: the packet path adds elements (`dynamic`).
    pub const EVAL: u32 = 0x20;
}

/// `NFT_SET_ELEM_INTERVAL_END`.
pub const SET_ELEM_INTERVAL_END: u32 = 0x1;

/// One request: a message type, a family and string attributes (table,
/// chain, set names), as a dump or as a single get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked for.
    pub msg: MsgType,
    /// The family (`nfgenmsg.nfgen_family`).
    pub family: u8,
    /// A dump (`NLM_F_DUMP`) rather than a get with an acknowledgement.
    pub dump: bool,
    /// String attributes, sent NUL-terminated as nf_tables expects.
    pub attrs: Vec<(u16, String)>,
}

impl Request {
    /// A dump of `msg` objects in `family`.
    pub fn dump(msg: MsgType, family: u8) -> Self {
        Request {
            msg,
            family,
            dump: true,
            attrs: Vec::new(),
        }
    }

    /// A get of one object.
    pub fn get(msg: MsgType, family: u8) -> Self {
        Request {
            dump: false,
            ..Request::dump(msg, family)
        }
    }

    /// With a string attribute (table, chain or set name).
    pub fn with(mut self, kind: u16, value: &str) -> Self {
        self.attrs.push((kind, value.to_string()));
        self
    }

    /// The netlink message, header included, with sequence number `seq`.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let nlas: Vec<DefaultNla> = self
            .attrs
            .iter()
            .map(|(k, v)| {
                let mut bytes = v.as_bytes().to_vec();
                bytes.push(0);
                DefaultNla::new(*k, bytes)
            })
            .collect();
        let attrs_len: usize = nlas.iter().map(|n| n.buffer_len()).sum();
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs_len;
        let mut buf = vec![0u8; len];
        {
            let mut nl = NetlinkBuffer::new(&mut buf[..]);
            nl.set_length(len as u32);
            nl.set_message_type((NFNL_SUBSYS_NFTABLES << 8) | self.msg as u16);
            let flags = if self.dump {
                NLM_F_REQUEST | NLM_F_DUMP
            } else {
                NLM_F_REQUEST | NLM_F_ACK
            };
            nl.set_flags(flags);
            nl.set_sequence_number(seq);
            nl.set_port_number(0);
        }
        buf[NLMSG_HDRLEN] = self.family;
        buf[NLMSG_HDRLEN + 1] = NFNETLINK_V0;
        // nfgenmsg.res_id stays 0.
        let mut at = NLMSG_HDRLEN + NFGENMSG_LEN;
        for n in &nlas {
            let l = n.buffer_len();
            n.emit(&mut buf[at..at + l]);
            at += l;
        }
        buf
    }
}

/// The value of the first attribute `kind` among `attrs` (a sequence of
/// netlink attributes), `None` when absent or when `attrs` is malformed.
pub fn find(attrs: &[u8], kind: u16) -> Option<&[u8]> {
    // By hand rather than with `NlasIterator`: a conntrack dump looks up a
    // dozen attributes of every flow, tens of thousands of flows per dump.
    let mut a = attrs;
    while !a.is_empty() {
        let (len, k) = match a {
            [l0, l1, k0, k1, ..] => (
                usize::from(u16::from_ne_bytes([*l0, *l1])),
                u16::from_ne_bytes([*k0, *k1]) & NLA_TYPE_MASK,
            ),
            _ => return None,
        };
        if len < NLA_HEADER_LEN || len > a.len() {
            return None;
        }
        if k == kind {
            return Some(&a[NLA_HEADER_LEN..len]);
        }
        a = &a[len.next_multiple_of(4).min(a.len())..];
    }
    None
}

/// `NLA_TYPE_MASK`: the type without `NLA_F_NESTED` and
/// `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

/// An attribute's value, borrowed from the buffer it was read from
/// (`NlasIterator` has checked the length against that buffer).
fn value(nla: NlaBuffer<&[u8]>) -> &[u8] {
    let len = usize::from(nla.length());
    let inner = nla.into_inner();
    inner.get(NLA_HEADER_LEN..len).unwrap_or_default()
}

/// `NLA_HDRLEN`.
const NLA_HEADER_LEN: usize = 4;

/// A string attribute without its NUL terminator.
pub fn find_str(attrs: &[u8], kind: u16) -> Option<&str> {
    let v = find(attrs, kind)?;
    let v = v.strip_suffix(&[0]).unwrap_or(v);
    std::str::from_utf8(v).ok()
}

/// A big-endian u32 attribute.
pub fn find_be32(attrs: &[u8], kind: u16) -> Option<u32> {
    let v: [u8; 4] = find(attrs, kind)?.try_into().ok()?;
    Some(u32::from_be_bytes(v))
}

/// Each value of attribute `kind` in `attrs`, in order; stops at the
/// first malformed attribute.
pub fn each(attrs: &[u8], kind: u16) -> impl Iterator<Item = &[u8]> {
    NlasIterator::new(attrs)
        .map_while(Result::ok)
        .filter(move |nla| nla.kind() == kind)
        .map(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_filtered_dump() {
        let req = Request::dump(MsgType::GetRule, 2).with(attr::RULE_TABLE, "kproxy");
        let b = req.encode(7);
        // nlmsghdr: length, type (subsystem 10 << 8 | GETRULE), flags
        // (REQUEST | DUMP), seq 7, port 0; nfgenmsg: AF 2, v0, res 0;
        // NFTA_RULE_TABLE "kproxy\0" padded to 4 bytes.
        let mut want = Vec::new();
        want.extend(32u32.to_ne_bytes());
        want.extend(((10u16 << 8) | 7).to_ne_bytes());
        want.extend((1u16 | 0x300).to_ne_bytes());
        want.extend(7u32.to_ne_bytes());
        want.extend(0u32.to_ne_bytes());
        want.extend([2, 0, 0, 0]);
        want.extend(11u16.to_ne_bytes());
        want.extend(1u16.to_ne_bytes());
        want.extend(b"kproxy\0\0");
        assert_eq!(b, want);
    }

    #[test]
    fn finds_attributes() {
        let req = Request::get(MsgType::GetSet, 10)
            .with(attr::SET_TABLE, "kproxy")
            .with(attr::SET_NAME, "service-ips");
        let b = req.encode(1);
        let attrs = &b[NLMSG_HDRLEN + NFGENMSG_LEN..];
        assert_eq!(find_str(attrs, attr::SET_TABLE), Some("kproxy"));
        assert_eq!(find_str(attrs, attr::SET_NAME), Some("service-ips"));
        assert_eq!(find(attrs, attr::SET_FLAGS), None);
        assert_eq!(each(attrs, attr::SET_NAME).count(), 1);
        assert_eq!(find(&attrs[..3], attr::SET_TABLE), None, "truncated");
        // A nested attribute is found by its type without NLA_F_NESTED;
        // a length past the end is malformed.
        let mut v: Vec<u8> = Vec::new();
        v.extend_from_slice(&8u16.to_ne_bytes());
        v.extend_from_slice(&(3u16 | 0x8000).to_ne_bytes());
        v.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(find(&v, 3), Some(&[1u8, 2, 3, 4][..]));
        v[0] = 12;
        assert_eq!(find(&v, 3), None, "longer than the buffer");
    }
}
