//! nf_tables object messages for a [`Batch`]: tables, chains, rules, sets
//! and set elements, added, flushed and deleted. Attribute numbers are
//! `enum nft_table_attributes`, `nft_chain_attributes`,
//! `nft_rule_attributes`, `nft_set_attributes` and
//! `nft_set_elem_attributes`.

use crate::batch::{ADD, AttrWriter, Batch, NLM_F_APPEND, msg_type};
use crate::expr::{Data, Expr};

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHook {
    /// `filter` or `nat`.
    pub chain_type: &'static str,
    /// `NF_INET_PRE_ROUTING` (0) .. `NF_INET_POST_ROUTING` (4).
    pub hooknum: u32,
    /// The priority.
    pub priority: i32,
}

/// A set or map declaration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetSpec {
    /// The name (`__set%d` for an anonymous set).
    pub name: String,
    /// The id that rules and elements of the same batch refer to it by.
    pub id: u32,
    /// `enum nft_set_flags`.
    pub flags: u32,
    /// The key's datatype (concatenations: 6 bits per component).
    pub key_type: u32,
    /// The key's length in bytes.
    pub key_len: u32,
    /// The data's datatype and length, for maps.
    pub data: Option<(u32, u32)>,
    /// `NFTA_SET_DESC_SIZE`.
    pub size: Option<u32>,
    /// The default timeout.
    pub timeout_ms: Option<u64>,
    /// `NFTA_SET_USERDATA` (nft's `NFTNL_UDATA_SET_*`).
    pub udata: Vec<u8>,
}

/// One element.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElemSpec {
    /// The key.
    pub key: Vec<u8>,
    /// The data, for maps.
    pub data: Option<Data>,
    /// `NFT_SET_ELEM_INTERVAL_END` and friends.
    pub flags: u32,
    /// `NFTA_SET_ELEM_USERDATA` (nft's `NFTNL_UDATA_SET_ELEM_*`).
    pub udata: Vec<u8>,
    /// `NFTA_SET_ELEM_TIMEOUT`, for sets with timeouts.
    pub timeout_ms: Option<u64>,
}

impl ElemSpec {
    /// About the bytes this element takes in a message.
    pub fn wire_len(&self) -> usize {
        let data = match &self.data {
            None => 0,
            Some(Data::Value(v)) => 12 + v.len(),
            Some(Data::Verdict(_, c)) => 24 + c.as_ref().map_or(0, |c| c.len() + 8),
        };
        4 + 12 + self.key.len() + data + 8 + self.udata.len() + 8
    }
}

/// How elements name their set.
#[derive(Debug, Clone, Copy)]
pub enum SetRef<'a> {
    /// By name.
    Name(&'a str),
    /// An anonymous set of this batch, by id.
    Id(u32),
}

/// What [`Batch::remove`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// `flush chain`: every rule of the chain.
    FlushChain,
    /// `delete chain`.
    DeleteChain,
    /// `flush set`: every element.
    FlushSet,
    /// `delete set`.
    DeleteSet,
}

/// Objects written into a batch.
impl Batch {
    /// `add table` (`NEWTABLE`, create if absent).
    pub fn add_table(&mut self, family: u8, name: &str, udata: &[u8]) -> u32 {
        let seq = self.begin(msg_type::NEWTABLE, ADD, family);
        self.put_str(1, name);
        self.put_be32(2, 0);
        if !udata.is_empty() {
            self.put(6, udata);
        }
        self.end();
        seq
    }

    /// `delete table`.
    pub fn delete_table(&mut self, family: u8, name: &str) -> u32 {
        let seq = self.begin(msg_type::DELTABLE, 0, family);
        self.put_str(1, name);
        self.end();
        seq
    }

    /// `flush chain`, `delete chain`, `flush set` or `delete set` of
    /// `name` in `table`: a message (no flags) that names only the table
    /// (attribute 1) and the object.
    pub fn remove(&mut self, what: Removal, family: u8, table: &str, name: &str) -> u32 {
        // The object's attribute: NFTA_RULE_CHAIN, NFTA_CHAIN_NAME,
        // NFTA_SET_ELEM_LIST_SET, NFTA_SET_NAME.
        let (kind, attr) = match what {
            Removal::FlushChain => (msg_type::DELRULE, 2),
            Removal::DeleteChain => (msg_type::DELCHAIN, 3),
            Removal::FlushSet => (msg_type::DELSETELEM, 2),
            Removal::DeleteSet => (msg_type::DELSET, 2),
        };
        let seq = self.begin(kind, 0, family);
        self.put_str(1, table);
        self.put_str(attr, name);
        self.end();
        seq
    }

    /// `add chain`, with a hook (policy accept) for base chains.
    pub fn add_chain(
        &mut self,
        family: u8,
        table: &str,
        name: &str,
        hook: Option<&ChainHook>,
    ) -> u32 {
        let seq = self.begin(msg_type::NEWCHAIN, ADD, family);
        self.put_str(1, table);
        self.put_str(3, name);
        if let Some(h) = hook {
            let n = self.nest(4);
            self.put_be32(1, h.hooknum);
            self.put_be32(2, h.priority as u32);
            self.end_nest(n);
            self.put_be32(5, 1);
            self.put_str(7, h.chain_type);
        }
        self.end();
        seq
    }

    /// `add rule` (appended).
    pub fn add_rule(
        &mut self,
        family: u8,
        table: &str,
        chain: &str,
        exprs: &[Expr],
        udata: &[u8],
    ) -> u32 {
        let seq = self.begin(msg_type::NEWRULE, ADD | NLM_F_APPEND, family);
        self.put_str(1, table);
        self.put_str(2, chain);
        let n = self.nest(4);
        for e in exprs {
            e.put(self);
        }
        self.end_nest(n);
        if !udata.is_empty() {
            self.put(7, udata);
        }
        self.end();
        seq
    }

    /// `add set` / `add map`.
    pub fn add_set(&mut self, family: u8, table: &str, s: &SetSpec) -> u32 {
        let seq = self.begin(msg_type::NEWSET, ADD, family);
        self.put_str(1, table);
        self.put_str(2, &s.name);
        self.put_be32(3, s.flags);
        self.put_be32(4, s.key_type);
        self.put_be32(5, s.key_len);
        if let Some((t, l)) = s.data {
            self.put_be32(6, t);
            self.put_be32(7, l);
        }
        if let Some(size) = s.size {
            let n = self.nest(9);
            self.put_be32(1, size);
            self.end_nest(n);
        }
        self.put_be32(10, s.id);
        if let Some(t) = s.timeout_ms {
            self.put_be64(11, t);
        }
        if !s.udata.is_empty() {
            self.put(13, &s.udata);
        }
        self.end();
        seq
    }

    /// `add element` (`add`) or `delete element` for `elems`, as one
    /// message. Callers keep a message's elements under
    /// [`ELEMS_MAX_BYTES`] (the element list's length is 16 bits).
    pub fn set_elems(
        &mut self,
        add: bool,
        family: u8,
        table: &str,
        set: SetRef<'_>,
        elems: &[ElemSpec],
    ) -> u32 {
        let (kind, flags) = if add {
            (msg_type::NEWSETELEM, ADD)
        } else {
            (msg_type::DELSETELEM, 0)
        };
        let seq = self.begin(kind, flags, family);
        self.put_str(1, table);
        match set {
            SetRef::Name(n) => self.put_str(2, n),
            SetRef::Id(id) => {
                self.put_str(2, "__set%d");
                self.put_be32(4, id);
            }
        }
        let list = self.nest(3);
        for e in elems {
            let el = self.nest(1);
            let k = self.nest(1);
            self.put(1, &e.key);
            self.end_nest(k);
            if let Some(d) = &e.data {
                d.put(self, 2);
            }
            if e.flags != 0 {
                self.put_be32(3, e.flags);
            }
            if let Some(t) = e.timeout_ms {
                self.put_be64(4, t);
            }
            if !e.udata.is_empty() {
                self.put(6, &e.udata);
            }
            self.end_nest(el);
        }
        self.end_nest(list);
        self.end();
        seq
    }
}

/// The most element bytes one `NEWSETELEM` message carries.
pub const ELEMS_MAX_BYTES: usize = 60 * 1024;

/// nft's user data (`struct nftnl_udata`: type, length, value) appended
/// to `out`.
pub fn udata_put(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// A NUL-terminated string as user data (comments), cut to fit.
pub fn udata_str(out: &mut Vec<u8>, kind: u8, s: &str) {
    let b = &s.as_bytes()[..s.len().min(254)];
    out.push(kind);
    out.push((b.len() + 1) as u8);
    out.extend_from_slice(b);
    out.push(0);
}
