//! Rendering to `nft -f` text: one statement per operation, and
//! [`ChunkWriter`], which writes bounded texts (or transactions) straight
//! from the generator.

use std::fmt::Write as _;

use super::{
    ChainType, ELEMENTS_PER_STATEMENT, Element, Family, Op, Transaction, parse_rendered_element,
};

impl Transaction {
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
