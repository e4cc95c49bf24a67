//! Streaming intake: large inputs read without holding them as one tree.
//!
//! `kubectl get services,endpointslices,nodes -A -o yaml` writes the whole
//! cluster as ONE YAML document (`kind: List`). Parsing that with
//! `serde_yaml_ng` first loads every event of the document (about 20 bytes
//! of events per byte of text), then builds a `serde_json::Value` tree of
//! it; at 10,000 Services that peaked at 700 MB before any typed object
//! existed. [`read`] instead hands out the items of a list one at a time
//! (YAML: in batches of about [`BATCH_BYTES`] of text; JSON: one item at a
//! time, through `serde_json`'s streaming deserializer and a
//! [`DeserializeSeed`]), converts each to its typed object and drops the
//! text's tree as it goes.
//!
//! It is a fast path, never a parser with rules of its own:
//! - every piece of YAML is parsed by `serde_yaml_ng`, or, when it is plain
//!   block YAML, by `block_yaml`, which gives the same values and leaves
//!   everything else to `serde_yaml_ng`; every item is converted as
//!   [`Objects::add_value`] converts it (from a tree that borrows the text
//!   and reads as the equal `serde_json::Value` does);
//! - only a plainly shaped input is taken (documents separated by bare `---`
//!   lines; a list's `items:` key at column 0 followed by a block sequence
//!   whose entries start at one indentation); anything else (directives,
//!   `...`, flow-style lists, anchors shared between items) returns `None`;
//! - any parse error returns `None` too, so that the caller reads the text
//!   the whole-tree way, which reports the error with its document number,
//!   line and column exactly as before.

use serde::Deserialize as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::tree::Tree;
use crate::intake::{
    DepthCheck, MAX_DEPTH, ObjectSink, add_item, add_list_item, list_item_kind, place,
};
use crate::warning::Warning;

/// About this much YAML text (whole items) is parsed at a time: large
/// enough that the per-parse overhead vanishes, small enough that the
/// parser's event buffer (~20x the text) stays a few MiB.
pub(crate) const BATCH_BYTES: usize = 256 * 1024;

/// Read `text` (YAML or JSON) item by item. `None` when the input is not of
/// a shape this path takes or does not parse: the caller then reads it as
/// a whole (and reports any error).
/// Warnings about documents name `source_name` and the document's number
/// as the whole-text reading counts them.
///
/// The nesting-depth check (`depth`) runs, once, only when some of the
/// text is about to be read by a parser other than `block_yaml`, which
/// takes no line the check would reject; when it fails, `None`.
pub(crate) fn read<S: ObjectSink>(
    source_name: &str,
    text: &str,
    depth: &mut DepthCheck<'_>,
) -> Option<(S, Vec<Warning>)> {
    let mut objects = S::default();
    let mut warnings = Vec::new();
    if text.trim_start().starts_with('{') {
        if text.len() < PIPELINE_MIN_BATCHES * BATCH_BYTES || !super::two_cpus() {
            if !depth.passes() {
                return None;
            }
            read_json(text, &mut objects, &mut warnings)?;
        } else {
            // The check on a second CPU while this one reads. Its verdict
            // decides as before: when it fails, what was read is dropped
            // (serde_json's own nesting limit bounds the reading until
            // then).
            let (passes, read) = std::thread::scope(|scope| {
                let check = scope.spawn(|| depth.passes());
                let read = read_json(text, &mut objects, &mut warnings);
                match check.join() {
                    Ok(passes) => (passes, read),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            });
            if !passes {
                return None;
            }
            read?;
        }
        place(&mut warnings, source_name, 1);
    } else {
        read_yaml(source_name, text, depth, &mut objects, &mut warnings)?;
    }
    Some((objects, warnings))
}

// --- YAML ---

/// Lines of `s` with their byte offsets (each line keeps its `\n`).
pub(crate) fn lines(s: &str) -> impl Iterator<Item = (usize, &str)> {
    // A byte loop: lines are short, and `split_inclusive`'s search costs
    // more than the line's bytes.
    let bytes = s.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        let start = at;
        let rest = bytes.get(start..).filter(|r| !r.is_empty())?;
        at = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| start + i + 1);
        s.get(start..at).map(|l| (start, l))
    })
}

/// A line that holds nothing for the parser (blank or a comment).
fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start_matches(' ').trim_end();
    t.is_empty() || t.starts_with('#')
}

/// `- ` (or a lone `-`) after `indent` spaces: a block sequence entry.
fn is_entry(rest: &str) -> bool {
    rest.starts_with("- ") || rest.trim_end() == "-"
}

/// Split a YAML stream into its documents' texts at bare `---` lines.
/// `None` for anything the split could get wrong: a byte order mark,
/// directives (`%`), `...` and `---` followed by content.
///
/// Only lines that start with `%`, `---` or `...` matter, so they are
/// found by vectorized substring searches for a line break followed by
/// one of them (and the first line), not by a look at every line.
fn split_documents(text: &str) -> Option<Vec<&str>> {
    if text.starts_with('\u{feff}') {
        return None;
    }
    let bytes = text.as_bytes();
    // The line starting at `at`, with its `\n`.
    let line_at = |at: usize| {
        let end = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i + 1);
        &text[at..end]
    };
    // Line starts of lines that begin with `prefix`, in order.
    let starts = |prefix: &'static [u8]| {
        let first = bytes.starts_with(&prefix[1..]).then_some(0);
        first
            .into_iter()
            .chain(memchr::memmem::find_iter(bytes, prefix).map(|i| i + 1))
    };
    if starts(b"\n%").next().is_some() {
        return None;
    }
    // `...` or `---` then the end of the line, a space or a tab: a marker.
    let marker_ends =
        |line: &str| line[3..].starts_with([' ', '\t', '\r', '\n']) || line.len() == 3;
    if starts(b"\n...").any(|at| marker_ends(line_at(at))) {
        return None;
    }
    let mut docs = Vec::new();
    let mut start = 0;
    for at in starts(b"\n---") {
        let line = line_at(at);
        if line.trim_end() == "---" {
            docs.push(&text[start..at]);
            start = at + line.len();
        } else if marker_ends(line) {
            return None;
        }
    }
    docs.push(&text[start..]);
    Some(docs)
}

/// Parse `text` into the values of its documents: as one block
/// collection by [`super::block_yaml`] when it is plain enough, else with
/// `serde_yaml_ng` (both give the same values).
fn parse_documents<'a>(text: &'a str, depth: &mut DepthCheck<'_>) -> Option<Vec<Tree<'a>>> {
    if let Some(value) = super::block_yaml::parse(text) {
        return Some(vec![value]);
    }
    if !depth.passes() {
        return None;
    }
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).ok().map(Tree::from_value))
        .collect()
}

/// Where a document's `items:` block sequence is.
struct ItemsBlock {
    /// Byte offset of the `items:` line.
    key_line: usize,
    /// Byte offsets where each entry starts (its `- ` line).
    entries: Vec<usize>,
    /// Byte offset just past the block.
    end: usize,
}

/// Find the `items:` key at column 0 with a block sequence value.
/// `Ok(None)`: no such block (the document is read whole).
/// `Err(())`: a shape this path does not take.
fn find_items(doc: &str) -> Result<Option<ItemsBlock>, ()> {
    let mut found: Option<ItemsBlock> = None;
    // Inside the block: the entries' indentation once known.
    let mut inside: Option<Option<usize>> = None;
    let bytes = doc.as_bytes();
    // Without tabs, a line inside entries at column 0 that starts with a
    // space continues the block (see below): such lines are skipped by
    // [`next_unindented`] without a look at each.
    let skip_indented = memchr::memchr(b'\t', bytes).is_none();
    let mut next = 0;
    while next < bytes.len() {
        if skip_indented && inside == Some(Some(0)) {
            next = next_unindented(bytes, next);
            if next == bytes.len() {
                break;
            }
        }
        let at = next;
        next = memchr::memchr(b'\n', &bytes[at..]).map_or(bytes.len(), |i| at + i + 1);
        let line = &doc[at..next];
        if let Some(indent) = inside {
            // Most lines of a large list are inside an entry: deeper than
            // the entries (or blank), so they continue the block. Decided
            // from their first bytes alone.
            if let Some(k) = indent {
                let n = line.bytes().take_while(|&b| b == b' ').count();
                if n > k && line.as_bytes().get(n) != Some(&b'\t') {
                    continue;
                }
            }
            if is_blank_or_comment(line) {
                continue;
            }
            let n = line.len() - line.trim_start_matches(' ').len();
            let rest = &line[n..];
            if rest.starts_with('\t') {
                return Err(());
            }
            let block = found.as_mut().ok_or(())?;
            match indent {
                None if is_entry(rest) => {
                    inside = Some(Some(n));
                    block.entries.push(at);
                    continue;
                }
                // `items:` with a null or mapping value, or anything else:
                // nothing to stream.
                None => return Ok(None),
                Some(k) if n > k => continue,
                Some(k) if n == k && is_entry(rest) => {
                    block.entries.push(at);
                    continue;
                }
                // The next key of the document ends the block.
                Some(_) if n == 0 && !rest.starts_with('-') => {
                    block.end = at;
                    inside = None;
                }
                Some(_) => return Err(()),
            }
        }
        if line.starts_with("items:") {
            if found.is_some() || line.trim_end() != "items:" {
                return Err(());
            }
            found = Some(ItemsBlock {
                key_line: at,
                entries: Vec::new(),
                end: doc.len(),
            });
            inside = Some(None);
        }
    }
    match found {
        Some(b) if b.entries.is_empty() => Ok(None),
        other => Ok(other),
    }
}

/// The first line start at or after `from` (itself a line start) whose
/// line does not begin with a space; `bytes.len()` when there is none.
/// Eight bytes at a time: a mask of the line breaks in each word (exact,
/// with no carry between bytes), then a look at the byte after each.
fn next_unindented(bytes: &[u8], from: usize) -> usize {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const NEWLINES: u64 = 0x0101_0101_0101_0101 * b'\n' as u64;
    let starts_line = |k: usize| bytes.get(k) != Some(&b' ');
    if from >= bytes.len() || starts_line(from) {
        return from.min(bytes.len());
    }
    let mut i = from;
    while let Some(word) = bytes.get(i..i + 8) {
        let mut buf = [0; 8];
        buf.copy_from_slice(word);
        let x = u64::from_le_bytes(buf) ^ NEWLINES;
        // The high bit of each byte of `x` that is zero (a line break).
        let mut breaks = !(((x & LOW7) + LOW7) | x | LOW7);
        while breaks != 0 {
            let k = i + breaks.trailing_zeros() as usize / 8 + 1;
            if starts_line(k) {
                return k.min(bytes.len());
            }
            breaks &= breaks - 1;
        }
        i += 8;
    }
    for (k, &b) in bytes.iter().enumerate().skip(i) {
        if b == b'\n' && starts_line(k + 1) {
            return k + 1;
        }
    }
    bytes.len()
}

/// The block's items in batches of about [`BATCH_BYTES`] of text: (first
/// entry, entry after the last).
fn batches(block: &ItemsBlock) -> Vec<(usize, usize)> {
    let mut batches = Vec::new();
    let mut i = 0;
    while i < block.entries.len() {
        let start = block.entries[i];
        let mut j = i + 1;
        while j < block.entries.len() && block.entries[j] - start < BATCH_BYTES {
            j += 1;
        }
        batches.push((i, j));
        i = j;
    }
    batches
}

fn read_yaml<S: ObjectSink>(
    source_name: &str,
    text: &str,
    depth: &mut DepthCheck<'_>,
    objects: &mut S,
    warnings: &mut Vec<Warning>,
) -> Option<()> {
    // The parser's documents: every text after a `---` line is one (an
    // empty one is null), the text before the first only when it holds
    // more than blank lines and comments.
    let mut number = 0;
    for (i, doc) in split_documents(text)?.into_iter().enumerate() {
        if i == 0 && doc.split_inclusive('\n').all(is_blank_or_comment) {
            // Read by no parser, but checked all the same.
            let deep = |l: &str| l.len() - l.trim_start_matches(' ').len() >= 2 * MAX_DEPTH;
            if doc.split_inclusive('\n').any(deep) && !depth.passes() {
                return None;
            }
            continue;
        }
        number += 1;
        let before = warnings.len();
        read_yaml_document(doc, i > 0, depth, objects, warnings)?;
        place(&mut warnings[before..], source_name, number);
    }
    Some(())
}

/// A document's list items and their kind, when the document is a List
/// of objects kproxy reads; `Some(None)` when it is to be read whole, as
/// [`Objects::add_yaml`] does; `None` when it is not valid YAML.
fn list_items(doc: &str, depth: &mut DepthCheck<'_>) -> Option<Option<(ItemsBlock, &'static str)>> {
    let Some(block) = find_items(doc).ok()? else {
        return Some(None);
    };
    // The document without its items: a small mapping that says the kind.
    let header_text = format!("{}{}", &doc[..block.key_line], &doc[block.end..]);
    let header = parse_documents(&header_text, depth)?;
    let item_kind = match header.as_slice() {
        [] | [Tree::Null] => None,
        [h @ Tree::Object(_)] => {
            if h.get("items").is_some() {
                return None;
            }
            h.get("kind")
                .and_then(Tree::as_str)
                .and_then(list_item_kind)
        }
        _ => return None,
    };
    // Not a list: its items mean nothing to kproxy, but the whole object
    // may (read whole, as before).
    Some(item_kind.map(|kind| (block, kind)))
}

/// Read one document. `explicit`: the text followed a `---` line, so it
/// is one document even when empty.
fn read_yaml_document<S: ObjectSink>(
    doc: &str,
    explicit: bool,
    depth: &mut DepthCheck<'_>,
    objects: &mut S,
    warnings: &mut Vec<Warning>,
) -> Option<()> {
    let Some((block, item_kind)) = list_items(doc, depth)? else {
        let values = parse_documents(doc, depth)?;
        if values.is_empty() && explicit {
            add_item(objects, Tree::Null, None, warnings);
        }
        for value in values {
            add_item(objects, value, None, warnings);
        }
        return Some(());
    };
    let batches = batches(&block);
    let text_of = |(i, j): (usize, usize)| {
        let end = block.entries.get(j).copied().unwrap_or(block.end);
        &doc[block.entries[i]..end]
    };
    // Each batch's block YAML reading, then its items added in order.
    let mut add_batch = |(i, j): (usize, usize), parsed: Option<Tree<'_>>| -> Option<()> {
        let batch = match parsed {
            Some(Tree::Array(items)) => items,
            // Not all plain: each item alone, so that one item outside
            // plain block YAML costs the full parser's time for itself only.
            _ => {
                let mut items = Vec::with_capacity(j - i);
                for k in i..j {
                    let item_end = block.entries.get(k + 1).copied().unwrap_or(block.end);
                    match parse_documents(&doc[block.entries[k]..item_end], depth)?.as_mut_slice() {
                        [Tree::Array(one)] if one.len() == 1 => items.append(one),
                        _ => return None,
                    }
                }
                items
            }
        };
        // Each entry line must have started exactly one item: otherwise
        // the split was wrong and the whole-text reading decides.
        if batch.len() != j - i {
            return None;
        }
        for (k, item) in batch.into_iter().enumerate() {
            add_list_item(objects, item, item_kind, i + k, warnings);
        }
        Some(())
    };
    if batches.len() < PIPELINE_MIN_BATCHES || !super::two_cpus() {
        for &b in &batches {
            add_batch(b, super::block_yaml::parse(text_of(b)))?;
        }
        return Some(());
    }
    read_batches_on_two_threads(&batches, text_of, MAIN_READS_EVERY, add_batch)
}

/// Two CPUs: a second thread reads the batches' text into trees, a few
/// batches ahead (the channel's bound), while this one makes the objects;
/// this one also reads every `main_reads_every`-th batch itself (its
/// share of the reading, so that neither thread waits long for the
/// other). `add` gets every batch's tree in order, so the result is the
/// same as reading them all on one thread.
fn read_batches_on_two_threads<'t>(
    batches: &[(usize, usize)],
    text_of: impl Fn((usize, usize)) -> &'t str + Sync,
    main_reads_every: usize,
    mut add: impl FnMut((usize, usize), Option<Tree<'t>>) -> Option<()>,
) -> Option<()> {
    let main_reads = |n: usize| n % main_reads_every == main_reads_every - 1;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(PIPELINE_DEPTH);
        let text_of = &text_of;
        scope.spawn(move || {
            for (n, &b) in batches.iter().enumerate() {
                // The receiver hangs up when it gives up: so does this.
                if !main_reads(n) && tx.send(super::block_yaml::parse(text_of(b))).is_err() {
                    break;
                }
            }
        });
        for (n, &b) in batches.iter().enumerate() {
            let tree = if main_reads(n) {
                super::block_yaml::parse(text_of(b))
            } else {
                rx.recv().ok()?
            };
            add(b, tree)?;
        }
        Some(())
    })
}

/// The first thread reads one batch in this many itself: reading a batch
/// into trees takes about twice the time of making its objects, so one
/// in four evens the two threads' work.
const MAIN_READS_EVERY: usize = 4;

/// Lists of at least this many batches are read in two threads.
const PIPELINE_MIN_BATCHES: usize = 4;

/// Batches read ahead at most (their trees held, about 5x their text).
const PIPELINE_DEPTH: usize = 2;

// --- JSON ---

/// Items read before the list's `kind` was known (`kubectl -o json` writes
/// `items` before `kind`). Items with their own kind are converted at once;
/// kind-less ones wait for the list's kind. Kept in input order so objects
/// and warnings come out in the same order as from the whole-tree reading.
enum Segment<'de, S> {
    Converted(S, Vec<Warning>),
    /// An item without `kind`, and its index.
    KindLess(usize, Tree<'de>),
}

fn read_json<S: ObjectSink>(
    text: &str,
    objects: &mut S,
    warnings: &mut Vec<Warning>,
) -> Option<()> {
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = DocumentSeed { objects, warnings };
    seed.deserialize(&mut de).ok()?;
    de.end().ok()
}

/// One JSON document: an object whose `items` are streamed.
struct DocumentSeed<'a, S> {
    objects: &'a mut S,
    warnings: &'a mut Vec<Warning>,
}

impl<'de, S: ObjectSink> DeserializeSeed<'de> for DocumentSeed<'_, S> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: ObjectSink> Visitor<'de> for DocumentSeed<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Kubernetes object or list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut header = Map::new();
        let mut segments: Option<Vec<Segment<'de, S>>> = None;
        // The item kind the items were converted under, when `kind` came
        // first.
        let mut streamed_as: Option<&'static str> = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "items" {
                let value: Value = map.next_value()?;
                header.insert(key, value);
                continue;
            }
            if segments.is_some() {
                return Err(de::Error::custom("duplicate items"));
            }
            let known = header.get("kind").and_then(Value::as_str);
            let item_kind = match known {
                Some(k) => match list_item_kind(k) {
                    Some(ik) => Some(ik),
                    // Items of a non-list: the whole-tree reading decides.
                    None => return Err(de::Error::custom("items in a non-list")),
                },
                None => None,
            };
            streamed_as = item_kind;
            segments = Some(map.next_value_seed(ItemsSeed {
                item_kind,
                objects: &mut *self.objects,
                warnings: &mut *self.warnings,
            })?);
        }
        let kind = header.get("kind").and_then(Value::as_str);
        let Some(segments) = segments else {
            add_item(self.objects, Value::Object(header), None, self.warnings);
            return Ok(());
        };
        let Some(item_kind) = kind.and_then(list_item_kind) else {
            return Err(de::Error::custom("items in a non-list"));
        };
        if streamed_as.is_some_and(|s| s != item_kind) {
            return Err(de::Error::custom("kind given twice"));
        }
        for segment in segments {
            match segment {
                Segment::Converted(mut o, w) => {
                    self.objects.append(&mut o);
                    self.warnings.extend(w);
                }
                Segment::KindLess(i, v) => {
                    add_list_item(self.objects, v, item_kind, i, self.warnings)
                }
            }
        }
        Ok(())
    }
}

/// Move `from`'s items to the end of `to`. Into an empty `to` (one file,
/// or the first) the vector is moved, not copied, and trimmed: grown by
/// doubling it holds up to twice its length (an EndpointSlice is 432
/// bytes before its endpoints, a Service 824).
pub(crate) fn move_to<T>(to: &mut Vec<T>, from: &mut Vec<T>) {
    if to.is_empty() {
        std::mem::swap(to, from);
        to.shrink_to_fit();
    } else {
        to.append(from);
    }
}

/// A list's `items`, converted one by one as they are read.
struct ItemsSeed<'a, S> {
    /// The item kind, when the list's kind came before its items.
    item_kind: Option<&'static str>,
    objects: &'a mut S,
    warnings: &'a mut Vec<Warning>,
}

impl<'de, S: ObjectSink> DeserializeSeed<'de> for ItemsSeed<'_, S> {
    type Value = Vec<Segment<'de, S>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<Segment<'de, S>>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: ObjectSink> Visitor<'de> for ItemsSeed<'_, S> {
    type Value = Vec<Segment<'de, S>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of Kubernetes objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Segment<'de, S>>, A::Error> {
        let mut segments = Vec::new();
        let mut index = 0;
        while let Some(item) = seq.next_element::<Tree<'de>>()? {
            if let Some(ik) = self.item_kind {
                add_list_item(self.objects, item, ik, index, self.warnings);
            } else if item.get("kind").is_some() {
                if !matches!(segments.last(), Some(Segment::Converted(..))) {
                    segments.push(Segment::Converted(S::default(), Vec::new()));
                }
                if let Some(Segment::Converted(o, w)) = segments.last_mut() {
                    add_item(o, item, Some(index), w);
                }
            } else {
                segments.push(Segment::KindLess(index, item));
            }
            index += 1;
        }
        Ok(segments)
    }
}

#[cfg(test)]
#[path = "stream/tests.rs"]
mod tests;
