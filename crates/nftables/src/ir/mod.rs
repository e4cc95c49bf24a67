//! The typed nftables IR: [`Table`]s holding [`Chain`]s (with [`Rule`]s)
//! and [`Set`]s (sets and maps, with [`Element`]s), and the [`Op`]s of a
//! [`Transaction`] that renders to `nft -f` text, one statement per line.
//!
//! nft 1.0.6 rejects quoted chain names and wants one statement per line
//! rather than `;`-joined chain bodies, so every object is written as a
//! flat `add ...` command and every name is a bare identifier (see
//! [`crate::names`], which guarantees that).

use std::collections::BTreeMap;
use std::fmt::Write as _;

mod elements;
mod render;
mod transaction;

pub use elements::parse_rendered_element;
pub use render::ChunkWriter;
pub(crate) use render::render_op;

/// An nftables address family. kproxy writes one table per IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `ip` (IPv4).
    Ip,
    /// `ip6` (IPv6).
    Ip6,
}

impl Family {
    /// The keyword (`ip` / `ip6`).
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    /// The address data type (`ipv4_addr` / `ipv6_addr`).
    pub fn addr_type(self) -> &'static str {
        match self {
            Family::Ip => "ipv4_addr",
            Family::Ip6 => "ipv6_addr",
        }
    }
}

/// The nftables family of an IP family.
impl From<kproxy_graph::IpFamily> for Family {
    fn from(f: kproxy_graph::IpFamily) -> Self {
        match f {
            kproxy_graph::IpFamily::V4 => Family::Ip,
            kproxy_graph::IpFamily::V6 => Family::Ip6,
        }
    }
}

/// The same family for the netlink reader (the drift check).
impl From<Family> for kproxy_netlink::Family {
    fn from(f: Family) -> Self {
        match f {
            Family::Ip => kproxy_netlink::Family::Ip,
            Family::Ip6 => kproxy_netlink::Family::Ip6,
        }
    }
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChainType {
    /// `type filter`.
    Filter,
    /// `type nat`.
    Nat,
}

/// A netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookPoint {
    /// `prerouting`.
    Prerouting,
    /// `input`.
    Input,
    /// `forward`.
    Forward,
    /// `output`.
    Output,
    /// `postrouting`.
    Postrouting,
}

impl HookPoint {
    fn as_str(self) -> &'static str {
        match self {
            HookPoint::Prerouting => "prerouting",
            HookPoint::Input => "input",
            HookPoint::Forward => "forward",
            HookPoint::Output => "output",
            HookPoint::Postrouting => "postrouting",
        }
    }
}

/// A base chain's priority: a standard name (`filter`, `dstnat`, `srcnat`)
/// plus an offset, as nft writes it, so other software can order itself
/// relative to kproxy by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority {
    /// The standard priority name.
    pub name: &'static str,
    /// The offset from it.
    pub offset: i32,
}

impl Priority {
    /// The numeric value for the `ip`/`ip6` families (`dstnat` = -100,
    /// `filter` = 0, `srcnat` = 100).
    pub fn value(self) -> i32 {
        Self::standard(self.name).unwrap_or(0) + self.offset
    }

    /// The value of a standard priority name for the `ip`/`ip6` families,
    /// as nft defines them; `None` for any other name.
    pub fn standard(name: &str) -> Option<i32> {
        Some(match name {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => return None,
        })
    }

    /// Rendered as a number: nft 1.0.6 refuses the names for some
    /// family/hook pairs (`dstnat` in `ip6` output), numbers always work.
    fn render(self) -> String {
        self.value().to_string()
    }
}

/// What makes a chain a base chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hook {
    /// `filter` or `nat`.
    pub chain_type: ChainType,
    /// Where it hooks in.
    pub hook: HookPoint,
    /// Its priority.
    pub priority: Priority,
}

/// One rule: a statement list, plus an optional comment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The rule's text, without comment (`ip daddr @cluster-ips reject`).
    pub expr: String,
    /// A comment (already sanitised, see [`crate::names::comment`]).
    pub comment: Option<String>,
}

impl Rule {
    /// A rule without comment.
    pub fn new(expr: impl Into<String>) -> Self {
        Rule {
            expr: expr.into(),
            comment: None,
        }
    }

    /// A rule with a comment; the comment is sanitised and bounded here.
    pub fn commented(expr: impl Into<String>, comment: &str) -> Self {
        Rule {
            expr: expr.into(),
            comment: Some(crate::names::comment(comment)),
        }
    }

    fn render(&self, out: &mut String) {
        out.push_str(&self.expr);
        if let Some(c) = &self.comment {
            let _ = write!(out, " comment \"{c}\"");
        }
    }
}

/// A chain: base (with a [`Hook`]) or regular.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// The name (a bare nft identifier).
    pub name: String,
    /// Set for base chains.
    pub hook: Option<Hook>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A regular chain with these rules.
    pub fn new(name: impl Into<String>, rules: Vec<Rule>) -> Self {
        Chain {
            name: name.into(),
            hook: None,
            rules,
        }
    }
}

/// The key (and value) type of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SetType {
    /// `type <datatypes>` (`ipv4_addr . inet_proto . inet_service : verdict`).
    Type(String),
    /// `typeof <expressions>`, for keys nft has no named type for
    /// (`numgen random mod 1` is a 32-bit integer).
    Typeof(String),
}

/// One element's value and comment (the key is the map key in [`Set::elements`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Element {
    /// The value for maps (`goto cluster-2`, `10.1.0.4 . 80`); `None` for sets.
    pub value: Option<String>,
    /// A sanitised comment.
    pub comment: Option<String>,
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Set {
    /// The name.
    pub name: String,
    /// A map (key : value) rather than a set.
    pub map: bool,
    /// Key (and value) types.
    pub set_type: SetType,
    /// Flags (`interval`, `dynamic`, `timeout`).
    pub flags: Vec<&'static str>,
    /// Default element timeout, in seconds.
    pub timeout: Option<u32>,
    /// The maximum number of elements (`size`); nft's default when `None`
    /// (65,535 for a set filled from the packet path).
    pub size: Option<u32>,
    /// A comment.
    pub comment: Option<String>,
    /// The elements, by key text. Sorted, so rendering is deterministic.
    pub elements: BTreeMap<String, Element>,
}

impl Set {
    /// The declaration, without elements: `{ type ... ; flags ... ; }`.
    fn render_decl(&self, out: &mut String) {
        out.push_str("{ ");
        match &self.set_type {
            SetType::Type(t) => {
                let _ = write!(out, "type {t} ; ");
            }
            SetType::Typeof(t) => {
                let _ = write!(out, "typeof {t} ; ");
            }
        }
        if let Some(n) = self.size {
            let _ = write!(out, "size {n} ; ");
        }
        if !self.flags.is_empty() {
            let _ = write!(out, "flags {} ; ", self.flags.join(","));
        }
        if let Some(t) = self.timeout {
            let _ = write!(out, "timeout {t}s ; ");
        }
        if let Some(c) = &self.comment {
            let _ = write!(out, "comment \"{c}\" ; ");
        }
        out.push('}');
    }

    /// Same declaration (type, flags, timeout, comment), elements ignored.
    pub fn same_decl(&self, other: &Set) -> bool {
        self.name == other.name
            && self.map == other.map
            && self.set_type == other.set_type
            && self.flags == other.flags
            && self.timeout == other.timeout
            && self.size == other.size
            && self.comment == other.comment
    }

    /// This set's declaration with no elements.
    pub fn decl_only(&self) -> Set {
        // Field by field: cloning the whole set would copy its elements
        // (tens of thousands in a large cluster) only to drop them.
        Set {
            name: self.name.clone(),
            map: self.map,
            set_type: self.set_type.clone(),
            flags: self.flags.clone(),
            timeout: self.timeout,
            size: self.size,
            comment: self.comment.clone(),
            elements: BTreeMap::new(),
        }
    }
}

/// One table: `table ip kproxy` or `table ip6 kproxy`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// The family.
    pub family: Option<Family>,
    /// The table's name.
    pub name: String,
    /// The table's comment.
    pub comment: Option<String>,
    /// Chains by name.
    pub chains: BTreeMap<String, Chain>,
    /// Sets and maps by name.
    pub sets: BTreeMap<String, Set>,
}

impl Table {
    /// An empty table.
    pub fn new(family: Family, name: &str, comment: Option<&str>) -> Self {
        Table {
            family: Some(family),
            name: name.to_string(),
            comment: comment.map(crate::names::comment),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
        }
    }

    /// The family (tables are always built with one).
    pub fn fam(&self) -> Family {
        self.family.unwrap_or(Family::Ip)
    }

    /// Number of rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// Number of elements in all sets and maps.
    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `add table` (idempotent).
    AddTable {
        /// The table's comment.
        comment: Option<String>,
    },
    /// `delete table`.
    DeleteTable,
    /// `add chain` (idempotent; with a hook for base chains).
    AddChain {
        /// The chain's name.
        name: String,
        /// The hook for base chains.
        hook: Option<Hook>,
    },
    /// `flush chain`.
    FlushChain(String),
    /// `delete chain`.
    DeleteChain(String),
    /// `add rule`.
    AddRule {
        /// The chain.
        chain: String,
        /// The rule.
        rule: Rule,
    },
    /// `add set` / `add map` (declaration only).
    AddSet(Set),
    /// `flush set` / `flush map`.
    FlushSet {
        /// The set's name.
        name: String,
        /// A map rather than a set.
        map: bool,
    },
    /// `delete set` / `delete map`.
    DeleteSet {
        /// The set's name.
        name: String,
        /// A map rather than a set.
        map: bool,
    },
    /// `add element` (several elements, one statement).
    AddElements {
        /// The set.
        set: String,
        /// Keys and elements.
        elements: Vec<(String, Element)>,
    },
    /// `delete element` (several keys, one statement).
    DeleteElements {
        /// The set.
        set: String,
        /// Keys.
        keys: Vec<String>,
    },
}

/// Elements per `add element` / `delete element` statement. Bounds the
/// length of one line (and of the statement an error points at).
pub const ELEMENTS_PER_STATEMENT: usize = 256;

/// An ordered list of operations on tables, applied as one `nft -f` run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transaction {
    /// (family, table, operation), in order.
    pub ops: Vec<(Family, String, Op)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_statement_per_line() {
        let mut t = Table::new(Family::Ip, "kproxy", Some("rules for kproxy"));
        t.chains.insert(
            "nat-output".into(),
            Chain {
                name: "nat-output".into(),
                hook: Some(Hook {
                    chain_type: ChainType::Nat,
                    hook: HookPoint::Output,
                    priority: Priority {
                        name: "dstnat",
                        offset: -10,
                    },
                }),
                rules: vec![Rule::commented("jump services", "x\"; drop")],
            },
        );
        let text = Transaction::create_table(&t).render();
        assert_eq!(
            text,
            "add table ip kproxy { comment \"rules for kproxy\" ; }\n\
             add chain ip kproxy nat-output { type nat hook output priority -110 ; policy accept ; }\n\
             add rule ip kproxy nat-output jump services comment \"x_; drop\"\n"
        );
    }

    #[test]
    fn split_bounds_elements() {
        let mut tx = Transaction::new();
        tx.add_elements(
            Family::Ip,
            "t",
            "s",
            (0..1000).map(|i| (i.to_string(), Element::default())),
        );
        let parts = tx.split(300);
        assert!(parts.iter().all(|p| p.weight() <= 300));
        assert_eq!(parts.iter().map(Transaction::weight).sum::<usize>(), 1000);
    }

    #[test]
    fn rendered_elements_parse_back() {
        for (k, e) in [
            ("10.0.0.1 . tcp . 80", Element::default()),
            (
                "10.0.0.1 . tcp . 80",
                Element {
                    value: Some("goto x".into()),
                    comment: Some("ns : a/b: c".into()),
                },
            ),
            (
                "tcp . 3001 . 0",
                Element {
                    value: Some("10.1.0.1 . 80".into()),
                    comment: None,
                },
            ),
        ] {
            let mut text = String::new();
            let mut w = ChunkWriter::new(usize::MAX);
            w.elements(Family::Ip, "t", "s", [(k, &e)]);
            text.push_str(&w.finish().concat());
            let inner = text
                .trim_end()
                .strip_prefix("add element ip t s { ")
                .and_then(|t| t.strip_suffix(" }"))
                .expect("one element");
            assert_eq!(parse_rendered_element(inner), (k.to_string(), e));
        }
    }

    #[test]
    fn priority_values() {
        let p = Priority {
            name: "dstnat",
            offset: -10,
        };
        assert_eq!(p.value(), -110);
        assert_eq!(p.render(), "-110");
    }
}
