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
        let base = match self.name {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => 0,
        };
        base + self.offset
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
        Set {
            elements: BTreeMap::new(),
            ..self.clone()
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

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Transaction::default()
    }

    /// Append one operation.
    pub fn push(&mut self, family: Family, table: &str, op: Op) {
        self.ops.push((family, table.to_string(), op));
    }

    /// No operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Append every operation of `other`.
    pub fn extend(&mut self, other: Transaction) {
        self.ops.extend(other.ops);
    }

    /// The operations that replace whatever table of this name exists with
    /// `table` (atomically, as one transaction): add (so the delete cannot
    /// fail), delete, then recreate chains, sets, rules and elements.
    pub fn replace_table(table: &Table) -> Transaction {
        let mut tx = Transaction::new();
        let (f, n) = (table.fam(), table.name.as_str());
        tx.push(
            f,
            n,
            Op::AddTable {
                comment: table.comment.clone(),
            },
        );
        tx.push(f, n, Op::DeleteTable);
        tx.extend(Transaction::create_table(table));
        tx
    }

    /// The operations that create `table` from nothing. Chains come first
    /// (map elements jump to them), then sets, rules and elements; the
    /// verdict maps' elements come last so a service is only routed once
    /// its endpoints are in place (this matters when the load is split
    /// into several transactions).
    pub fn create_table(table: &Table) -> Transaction {
        let mut tx = Transaction::new();
        let (f, n) = (table.fam(), table.name.as_str());
        tx.push(
            f,
            n,
            Op::AddTable {
                comment: table.comment.clone(),
            },
        );
        for c in table.chains.values() {
            tx.push(
                f,
                n,
                Op::AddChain {
                    name: c.name.clone(),
                    hook: c.hook.clone(),
                },
            );
        }
        for s in table.sets.values() {
            tx.push(f, n, Op::AddSet(s.decl_only()));
        }
        for c in table.chains.values() {
            for r in &c.rules {
                tx.push(
                    f,
                    n,
                    Op::AddRule {
                        chain: c.name.clone(),
                        rule: r.clone(),
                    },
                );
            }
        }
        let verdict_last =
            |s: &&Set| matches!(&s.set_type, SetType::Type(t) if t.ends_with(": verdict"));
        let (verdict, data): (Vec<&Set>, Vec<&Set>) = table.sets.values().partition(verdict_last);
        for s in data.into_iter().chain(verdict) {
            tx.add_elements(
                f,
                n,
                &s.name,
                s.elements.iter().map(|(k, e)| (k.clone(), e.clone())),
            );
        }
        tx
    }

    /// `add element` statements for `elements`, [`ELEMENTS_PER_STATEMENT`]
    /// per statement.
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elements: impl IntoIterator<Item = (String, Element)>,
    ) {
        let mut batch = Vec::new();
        for e in elements {
            batch.push(e);
            if batch.len() == ELEMENTS_PER_STATEMENT {
                self.push(
                    family,
                    table,
                    Op::AddElements {
                        set: set.to_string(),
                        elements: std::mem::take(&mut batch),
                    },
                );
            }
        }
        if !batch.is_empty() {
            self.push(
                family,
                table,
                Op::AddElements {
                    set: set.to_string(),
                    elements: batch,
                },
            );
        }
    }

    /// `delete element` statements for `keys`.
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        keys: impl IntoIterator<Item = String>,
    ) {
        let mut batch = Vec::new();
        for k in keys {
            batch.push(k);
            if batch.len() == ELEMENTS_PER_STATEMENT {
                self.push(
                    family,
                    table,
                    Op::DeleteElements {
                        set: set.to_string(),
                        keys: std::mem::take(&mut batch),
                    },
                );
            }
        }
        if !batch.is_empty() {
            self.push(
                family,
                table,
                Op::DeleteElements {
                    set: set.to_string(),
                    keys: batch,
                },
            );
        }
    }

    /// Split into transactions of at most `max_elements` elements each
    /// (operations are never reordered; a statement is never split).
    pub fn split(self, max_elements: usize) -> Vec<Transaction> {
        let mut out = Vec::new();
        let mut cur = Transaction::new();
        let mut n = 0usize;
        for (f, t, op) in self.ops {
            let weight = match &op {
                Op::AddElements { elements, .. } => elements.len(),
                Op::DeleteElements { keys, .. } => keys.len(),
                _ => 1,
            };
            if n + weight > max_elements && !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
            n += weight;
            cur.ops.push((f, t, op));
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// Number of element additions and deletions plus other statements:
    /// what the kernel has to process.
    pub fn weight(&self) -> usize {
        self.ops
            .iter()
            .map(|(_, _, op)| match op {
                Op::AddElements { elements, .. } => elements.len(),
                Op::DeleteElements { keys, .. } => keys.len(),
                _ => 1,
            })
            .sum()
    }

    /// The `nft -f` text: one statement per line.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.ops.len() * 64);
        for (f, t, op) in &self.ops {
            render_op(&mut out, *f, t, op);
            out.push('\n');
        }
        out
    }
}

/// Renders statements straight into `nft -f` texts of bounded size: a new
/// text starts before a statement that would take the current one past
/// `max_elements` (elements count one each, other statements one). This is
/// the full-sync path: no intermediate table or operation list is built,
/// which keeps memory and time linear and small at 50,000 services.
pub struct ChunkWriter<'s> {
    chunks: Vec<String>,
    cur: String,
    weight: usize,
    max: usize,
    /// Where finished texts go when streaming (else they are kept).
    sink: Option<&'s mut dyn FnMut(String)>,
    /// Operations mode: statements are collected as [`Transaction`]s of
    /// the same bounds and handed here instead of being rendered (the
    /// netlink transport's full load).
    ops_sink: Option<&'s mut dyn FnMut(Transaction)>,
    cur_tx: Transaction,
}

impl std::fmt::Debug for ChunkWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkWriter")
            .field("chunks", &self.chunks.len())
            .field("weight", &self.weight)
            .field("max", &self.max)
            .finish()
    }
}

impl<'s> ChunkWriter<'s> {
    /// A writer that starts a new text every `max_elements` elements
    /// (`usize::MAX`: one text).
    pub fn new(max_elements: usize) -> Self {
        ChunkWriter {
            chunks: Vec::new(),
            cur: String::new(),
            weight: 0,
            max: max_elements.max(1),
            sink: None,
            ops_sink: None,
            cur_tx: Transaction::new(),
        }
    }

    /// A writer that collects operations instead of text and hands each
    /// bounded [`Transaction`] to `sink` as soon as it is complete.
    pub fn streaming_ops(max_elements: usize, sink: &'s mut dyn FnMut(Transaction)) -> Self {
        ChunkWriter {
            ops_sink: Some(sink),
            ..ChunkWriter::new(max_elements)
        }
    }

    /// A writer that hands each finished text to `sink` as soon as it is
    /// complete, so only one text is in memory at a time.
    pub fn streaming(max_elements: usize, sink: &'s mut dyn FnMut(String)) -> Self {
        ChunkWriter {
            sink: Some(sink),
            ..ChunkWriter::new(max_elements)
        }
    }

    fn emit(&mut self, text: String) {
        match self.sink.as_mut() {
            Some(sink) => sink(text),
            None => self.chunks.push(text),
        }
    }

    fn begin(&mut self, weight: usize) {
        let pending = !self.cur.is_empty() || !self.cur_tx.is_empty();
        if self.weight.saturating_add(weight) > self.max && pending {
            self.flush_current();
            self.weight = 0;
        }
        self.weight = self.weight.saturating_add(weight);
    }

    fn flush_current(&mut self) {
        if let Some(sink) = self.ops_sink.as_mut() {
            if !self.cur_tx.is_empty() {
                sink(std::mem::take(&mut self.cur_tx));
            }
        } else if !self.cur.is_empty() {
            let text = std::mem::take(&mut self.cur);
            self.emit(text);
        }
    }

    /// One operation.
    pub fn op(&mut self, f: Family, table: &str, op: &Op) {
        self.begin(1);
        if self.ops_sink.is_some() {
            self.cur_tx.push(f, table, op.clone());
            return;
        }
        render_op(&mut self.cur, f, table, op);
        self.cur.push('\n');
    }

    /// `add element` statements, [`ELEMENTS_PER_STATEMENT`] per line.
    pub fn elements<'a>(
        &mut self,
        f: Family,
        table: &str,
        set: &str,
        elements: impl IntoIterator<Item = (&'a str, &'a Element)>,
    ) {
        let mut batch: Vec<(&str, &Element)> = Vec::with_capacity(ELEMENTS_PER_STATEMENT);
        let flush = |w: &mut ChunkWriter, batch: &mut Vec<(&str, &Element)>| {
            if batch.is_empty() {
                return;
            }
            w.begin(batch.len());
            if w.ops_sink.is_some() {
                let elements = batch
                    .drain(..)
                    .map(|(k, e)| (k.to_string(), e.clone()))
                    .collect();
                w.cur_tx.push(
                    f,
                    table,
                    Op::AddElements {
                        set: set.to_string(),
                        elements,
                    },
                );
                return;
            }
            let _ = write!(w.cur, "add element {} {table} {set} {{ ", f.as_str());
            for (i, (k, e)) in batch.iter().enumerate() {
                if i > 0 {
                    w.cur.push_str(", ");
                }
                w.cur.push_str(k);
                if let Some(c) = &e.comment {
                    let _ = write!(w.cur, " comment \"{c}\"");
                }
                if let Some(v) = &e.value {
                    w.cur.push_str(" : ");
                    w.cur.push_str(v);
                }
            }
            w.cur.push_str(" }\n");
            batch.clear();
        };
        for e in elements {
            batch.push(e);
            if batch.len() == ELEMENTS_PER_STATEMENT {
                flush(self, &mut batch);
            }
        }
        flush(self, &mut batch);
    }

    /// `add element` statements from elements already in their rendered
    /// form (`key [comment "c"] [: value]`).
    pub fn rendered_elements<'a>(
        &mut self,
        f: Family,
        table: &str,
        set: &str,
        elements: impl IntoIterator<Item = &'a str>,
    ) {
        if self.ops_sink.is_some() {
            let mut batch = Vec::with_capacity(ELEMENTS_PER_STATEMENT);
            let flush = |w: &mut ChunkWriter, batch: &mut Vec<(String, Element)>| {
                if batch.is_empty() {
                    return;
                }
                w.begin(batch.len());
                w.cur_tx.push(
                    f,
                    table,
                    Op::AddElements {
                        set: set.to_string(),
                        elements: std::mem::take(batch),
                    },
                );
            };
            for e in elements {
                batch.push(parse_rendered_element(e));
                if batch.len() == ELEMENTS_PER_STATEMENT {
                    flush(self, &mut batch);
                }
            }
            flush(self, &mut batch);
            return;
        }
        let mut n = 0usize;
        let mut line = String::new();
        let flush = |w: &mut ChunkWriter, line: &mut String, n: &mut usize| {
            if *n == 0 {
                return;
            }
            w.begin(*n);
            let _ = write!(w.cur, "add element {} {table} {set} {{ ", f.as_str());
            w.cur.push_str(line);
            w.cur.push_str(" }\n");
            line.clear();
            *n = 0;
        };
        for e in elements {
            if n > 0 {
                line.push_str(", ");
            }
            line.push_str(e);
            n += 1;
            if n == ELEMENTS_PER_STATEMENT {
                flush(self, &mut line, &mut n);
            }
        }
        flush(self, &mut line, &mut n);
    }

    /// The texts written (none when streaming: the last one goes to the
    /// sink).
    pub fn finish(mut self) -> Vec<String> {
        self.flush_current();
        self.chunks
    }
}

/// An element as written inside `add element ... { }` (`key [comment "c"]
/// [: value]`) split back into key and [`Element`]. Keys never contain
/// ` comment "` or ` : `, and sanitised comments never contain a quote.
pub fn parse_rendered_element(e: &str) -> (String, Element) {
    let key_end = [e.find(" comment \""), e.find(" : ")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(e.len());
    let key = e[..key_end].to_string();
    let mut rest = &e[key_end..];
    let mut comment = None;
    if let Some(r) = rest.strip_prefix(" comment \"") {
        let end = r.find('"').unwrap_or(r.len());
        comment = Some(r[..end].to_string());
        rest = r.get(end + 1..).unwrap_or("");
    }
    let value = rest.strip_prefix(" : ").map(str::to_string);
    (key, Element { value, comment })
}

fn set_kw(map: bool) -> &'static str {
    if map { "map" } else { "set" }
}

/// Append one operation's statement (no newline).
pub(crate) fn render_op(out: &mut String, f: Family, t: &str, op: &Op) {
    let fam = f.as_str();
    match op {
        Op::AddTable { comment } => {
            let _ = write!(out, "add table {fam} {t}");
            if let Some(c) = comment {
                let _ = write!(out, " {{ comment \"{c}\" ; }}");
            }
        }
        Op::DeleteTable => {
            let _ = write!(out, "delete table {fam} {t}");
        }
        Op::AddChain { name, hook } => {
            let _ = write!(out, "add chain {fam} {t} {name}");
            if let Some(h) = hook {
                let ty = match h.chain_type {
                    ChainType::Filter => "filter",
                    ChainType::Nat => "nat",
                };
                let _ = write!(
                    out,
                    " {{ type {ty} hook {} priority {} ; policy accept ; }}",
                    h.hook.as_str(),
                    h.priority.render()
                );
            }
        }
        Op::FlushChain(name) => {
            let _ = write!(out, "flush chain {fam} {t} {name}");
        }
        Op::DeleteChain(name) => {
            let _ = write!(out, "delete chain {fam} {t} {name}");
        }
        Op::AddRule { chain, rule } => {
            let _ = write!(out, "add rule {fam} {t} {chain} ");
            rule.render(out);
        }
        Op::AddSet(s) => {
            let _ = write!(out, "add {} {fam} {t} {} ", set_kw(s.map), s.name);
            s.render_decl(out);
        }
        Op::FlushSet { name, map } => {
            let _ = write!(out, "flush {} {fam} {t} {name}", set_kw(*map));
        }
        Op::DeleteSet { name, map } => {
            let _ = write!(out, "delete {} {fam} {t} {name}", set_kw(*map));
        }
        Op::AddElements { set, elements } => {
            let _ = write!(out, "add element {fam} {t} {set} {{ ");
            for (i, (k, e)) in elements.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                if let Some(c) = &e.comment {
                    let _ = write!(out, " comment \"{c}\"");
                }
                if let Some(v) = &e.value {
                    out.push_str(" : ");
                    out.push_str(v);
                }
            }
            out.push_str(" }");
        }
        Op::DeleteElements { set, keys } => {
            let _ = write!(out, "delete element {fam} {t} {set} {{ ");
            out.push_str(&keys.join(", "));
            out.push_str(" }");
        }
    }
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
