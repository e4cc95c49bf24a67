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

/// Read a document whole, as [`Objects::add_yaml`] does. `explicit`: the
/// text followed a `---` line, so it is one document even when empty.
fn read_whole<S: ObjectSink>(
    doc: &str,
    explicit: bool,
    depth: &mut DepthCheck<'_>,
    objects: &mut S,
    warnings: &mut Vec<Warning>,
) -> Option<()> {
    let values = parse_documents(doc, depth)?;
    if values.is_empty() && explicit {
        add_item(objects, Tree::Null, None, warnings);
    }
    for value in values {
        add_item(objects, value, None, warnings);
    }
    Some(())
}

fn read_yaml_document<S: ObjectSink>(
    doc: &str,
    explicit: bool,
    depth: &mut DepthCheck<'_>,
    objects: &mut S,
    warnings: &mut Vec<Warning>,
) -> Option<()> {
    let Some(block) = find_items(doc).ok()? else {
        return read_whole(doc, explicit, depth, objects, warnings);
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
    let Some(item_kind) = item_kind else {
        // Not a list: its items mean nothing to kproxy, but the whole
        // object may (read whole, as before).
        return read_whole(doc, explicit, depth, objects, warnings);
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
mod tests {
    use super::*;
    use crate::intake::{IntakeError, Objects};

    /// [`read`] of `text` as file `t`.
    fn read_t(text: &str) -> Option<(Objects, Vec<Warning>)> {
        read::<Objects>("t", text, &mut DepthCheck::new("t", text))
    }

    /// The objects and warnings of `text` through the whole-tree reading.
    fn whole(text: &str) -> (Objects, Vec<Warning>) {
        let mut o = Objects::default();
        let w = o.add_yaml_whole("t", text).expect("parses as a whole");
        (o, w)
    }

    fn same(a: &(Objects, Vec<Warning>), b: &(Objects, Vec<Warning>)) {
        assert_eq!(a.0.services, b.0.services);
        assert_eq!(a.0.endpoint_slices, b.0.endpoint_slices);
        assert_eq!(a.0.nodes, b.0.nodes);
        assert_eq!(a.1, b.1);
    }

    /// `text` takes the streaming path and reads exactly as a whole.
    fn streams_as_whole(text: &str) -> (Objects, Vec<Warning>) {
        let streamed = read_t(text).expect("takes the streaming path");
        same(&streamed, &whole(text));
        streamed
    }

    fn names<
        T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    >(
        v: &[T],
    ) -> Vec<String> {
        v.iter()
            .map(|o| o.metadata().name.clone().unwrap_or_default())
            .collect()
    }

    fn service(i: usize, indent: &str) -> String {
        format!(
            "{indent}- apiVersion: v1\n{indent}  kind: Service\n{indent}  metadata:\n{indent}    name: svc-{i}\n{indent}    namespace: ns\n{indent}  spec:\n{indent}    clusterIP: 172.16.{}.{}\n{indent}    ports:\n{indent}    - {{name: http, port: 80, protocol: TCP}}\n",
            i / 250,
            i % 250 + 1
        )
    }

    fn slice(i: usize, indent: &str) -> String {
        format!(
            "{indent}- apiVersion: discovery.k8s.io/v1\n{indent}  kind: EndpointSlice\n{indent}  addressType: IPv4\n{indent}  endpoints:\n{indent}  - addresses:\n{indent}    - 10.1.{}.{}\n{indent}    conditions:\n{indent}      ready: true\n{indent}  metadata:\n{indent}    labels:\n{indent}      kubernetes.io/service-name: svc-{i}\n{indent}    name: svc-{i}-abc\n{indent}    namespace: ns\n{indent}  ports:\n{indent}  - {{name: http, port: 8080, protocol: TCP}}\n",
            i / 250,
            i % 250 + 1
        )
    }

    /// `kubectl get -A -o yaml`: `items` before `kind`, entries at column 0.
    fn kubectl_list(n: usize, indent: &str) -> String {
        let mut s = String::from("apiVersion: v1\nitems:\n");
        for i in 0..n {
            s += &service(i, indent);
            s += "# a comment between items\n\n";
            s += &slice(i, indent);
        }
        s + "kind: List\nmetadata:\n  resourceVersion: \"\"\n"
    }

    #[test]
    fn lines_split_as_split_inclusive_does() {
        for text in ["", "a", "a\n", "\n\n", "a\nb", "é\n\nü x\r\n- y", "\n"] {
            let mut at = 0;
            let expected: Vec<(usize, &str)> = text
                .split_inclusive('\n')
                .map(|l| {
                    at += l.len();
                    (at - l.len(), l)
                })
                .collect();
            assert_eq!(lines(text).collect::<Vec<_>>(), expected, "{text:?}");
        }
    }

    /// The line-by-line [`split_documents`] this file had before its
    /// substring searches: the reference they must agree with.
    fn split_documents_by_lines(text: &str) -> Option<Vec<&str>> {
        if text.starts_with('\u{feff}') {
            return None;
        }
        let mut docs = Vec::new();
        let mut start = 0;
        for (at, line) in lines(text) {
            if line.starts_with('%') {
                return None;
            }
            if line.starts_with("---") || line.starts_with("...") {
                let marker_ends = line[3..].starts_with([' ', '\t', '\r', '\n']) || line.len() == 3;
                if line.trim_end() == "---" {
                    docs.push(&text[start..at]);
                    start = at + line.len();
                } else if marker_ends {
                    return None;
                }
            }
        }
        docs.push(&text[start..]);
        Some(docs)
    }

    #[test]
    fn documents_split_as_a_look_at_every_line_splits_them() {
        let list = kubectl_list(3, "");
        let texts = [
            String::new(),
            "---".into(),
            "---\n".into(),
            "---\r\n---  \n".into(),
            "a: 1\n---\nb: 2\n---\n".into(),
            "a: 1\n----\nb: ---\n---x\n....\n".into(),
            "a: 1\n--- b\n".into(),
            "a: 1\n---\tb\n".into(),
            "...".into(),
            "a: 1\n...\n".into(),
            "a: 1\n... x\n".into(),
            "a: 1\n...x\n".into(),
            "%YAML 1.2\n---\na: 1\n".into(),
            "a: 1\n%x\n".into(),
            "a: 1\n %x\n".into(),
            "\u{feff}a: 1\n".into(),
            format!("# c\n---\n{list}---\n{list}"),
            format!("{list}---"),
            format!("{list}\n---\n\n"),
        ];
        for text in &texts {
            assert_eq!(
                split_documents(text),
                split_documents_by_lines(text),
                "{text:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn documents_split_as_by_lines_on_any_text(
            text in "((---|\\.\\.\\.|%|-|a|\\.| |\t|\r|#)*\n){0,12}(---|\\.\\.\\.)?"
        ) {
            proptest::prop_assert_eq!(split_documents(&text), split_documents_by_lines(&text));
        }

        #[test]
        fn next_unindented_finds_the_next_line_without_a_leading_space(
            text in "([ a\n]{0,6}\n){0,20}",
            from in 0usize..100,
        ) {
            let starts: Vec<usize> = lines(&text).map(|(at, _)| at).collect();
            let from = starts.get(from % starts.len().max(1)).copied().unwrap_or(0);
            let expected = lines(&text)
                .find(|&(at, l)| at >= from && !l.starts_with(' '))
                .map_or(text.len(), |(at, _)| at);
            proptest::prop_assert_eq!(next_unindented(text.as_bytes(), from), expected);
        }
    }

    /// `mixed_cluster_yaml(n)`'s documents as one `kind: List`, entries
    /// at column 0, in block style, as `kubectl get -o yaml` writes a list.
    fn mixed_list(n: u32) -> String {
        let mut s = String::from("apiVersion: v1\nitems:\n");
        for doc in kproxy_testkit::mixed_cluster_yaml(n).split("---\n") {
            let doc = doc
                .replace("- addresses: [", "- addresses:\n  - ")
                .replace("]\n", "\n");
            for (i, line) in doc.lines().enumerate() {
                s += if i == 0 { "- " } else { "  " };
                s += line;
                s += "\n";
            }
        }
        s + "kind: List\nmetadata:\n  resourceVersion: \"\"\n"
    }

    #[test]
    fn batches_read_on_two_threads_come_in_order_as_on_one() {
        let text = mixed_list(5000);
        let block = find_items(&text)
            .expect("a plain list")
            .expect("with items");
        assert_eq!(block.entries.len(), 10001);
        let batches = batches(&block);
        assert!(batches.len() >= 3 * MAIN_READS_EVERY, "{}", batches.len());
        let text_of = |(i, j): (usize, usize)| {
            let end = block.entries.get(j).copied().unwrap_or(block.end);
            &text[block.entries[i]..end]
        };
        let one: Vec<_> = batches
            .iter()
            .map(|&b| (b, super::super::block_yaml::parse(text_of(b))))
            .collect();
        assert!(one.iter().all(|(_, t)| t.is_some()), "plain block YAML");
        for every in [1, 2, 3, MAIN_READS_EVERY, batches.len() + 1] {
            let mut two = Vec::new();
            read_batches_on_two_threads(&batches, text_of, every, |b, t| {
                two.push((b, t));
                Some(())
            })
            .expect("reads");
            assert!(two == one, "one batch in {every} read by the first thread");
        }
        // And the whole path reads the list as the whole-tree reading does.
        let (o, w) = streams_as_whole(&text);
        assert_eq!((o.services.len(), o.endpoint_slices.len()), (5000, 5000));
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn fixtures_read_the_same_streamed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures");
        let mut n = 0;
        for f in std::fs::read_dir(&dir).expect("fixtures") {
            let f = f.expect("entry").path();
            let text = std::fs::read_to_string(&f).expect("readable");
            streams_as_whole(&text);
            n += 1;
        }
        assert!(n > 10, "only {n} fixtures found in {}", dir.display());
    }

    #[test]
    fn a_large_list_is_read_in_batches_as_a_whole() {
        let text = kubectl_list(2000, "");
        assert!(text.len() > 3 * BATCH_BYTES, "several batches");
        let (o, w) = streams_as_whole(&text);
        assert_eq!(o.services.len(), 2000);
        assert_eq!(o.endpoint_slices.len(), 2000);
        assert!(w.is_empty());
        assert_eq!(names(&o.services)[1999], "svc-1999");
        // Indented entries, CRLF line ends.
        streams_as_whole(&kubectl_list(300, "  "));
        let crlf = kubectl_list(50, "").replace('\n', "\r\n");
        assert_eq!(streams_as_whole(&crlf).0.services.len(), 50);
    }

    #[test]
    fn a_large_list_that_fails_early_gives_up_without_waiting() {
        // Read on two threads; the second item does not parse: the
        // reader gives up, the thread reading ahead stops, and the whole
        // reading reports the error.
        let text = kubectl_list(4000, "").replacen(
            "  - {name: http, port: 8080, protocol: TCP}\n",
            "  - {name: http, port: 8080\n",
            1,
        );
        assert!(text.len() > PIPELINE_MIN_BATCHES * BATCH_BYTES);
        assert!(read_t(&text).is_none());
        let err = Objects::default()
            .add_yaml("t", &text)
            .expect_err("does not parse");
        assert!(err.to_string().starts_with("t: document 1: "), "{err}");
    }

    #[test]
    fn one_item_outside_plain_block_yaml_leaves_the_others_plain() {
        // A block scalar and a flow mapping, as `kubectl apply` leaves in
        // annotations: those items take the full parser, the rest not.
        let mut text = kubectl_list(40, "");
        text = text.replacen(
            "    name: svc-7\n",
            "    name: svc-7\n    annotations:\n      note: |\n        {\"a\": 1}\n\n        # kept\n",
            1,
        );
        text = text.replacen(
            "    name: svc-9\n",
            "    name: svc-9\n    labels: {app: x}\n",
            1,
        );
        assert!(super::super::block_yaml::parse(&text).is_none());
        let (o, w) = streams_as_whole(&text);
        assert_eq!(o.services.len(), 40);
        assert!(w.is_empty(), "{w:?}");
        let svc7 = &o.services[7];
        assert_eq!(
            svc7.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("note")),
            Some(&"{\"a\": 1}\n\n# kept\n".to_string())
        );
    }

    #[test]
    fn kind_less_items_take_the_list_kind() {
        let yaml = "apiVersion: v1\nkind: ServiceList\nitems:\n\
            - metadata: {name: a, namespace: n}\n  spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n\
            - metadata: {name: b, namespace: n}\n  spec: {clusterIP: 10.0.0.2, ports: [{port: 80}]}\n";
        let (o, _) = streams_as_whole(yaml);
        assert_eq!(names(&o.services), ["a", "b"]);
        // The list's kind after its items (as `-o json` and `-o yaml` write
        // it), kind-less items between kinded ones: input order is kept.
        let json = r#"{"apiVersion":"v1","items":[
            {"metadata":{"name":"a","namespace":"n"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":80}]}},
            {"kind":"Service","metadata":{"name":"b","namespace":"n"},"spec":{"clusterIP":"10.0.0.2","ports":[{"port":80}]}},
            {"metadata":{"name":"c","namespace":"n"},"spec":{"clusterIP":"10.0.0.3","ports":[{"port":80}]}},
            {"kind":"EndpointSlice","metadata":{"name":"x","namespace":"n"},"addressType":"IPv4","endpoints":[]}
        ],"kind":"ServiceList","metadata":{}}"#;
        let (o, _) = streams_as_whole(json);
        assert_eq!(names(&o.services), ["a", "b", "c"]);
        assert_eq!(names(&o.endpoint_slices), ["x"]);
        // A plain List's kind-less items have no kind: ignored, as before.
        let (o, _) = streams_as_whole(&json.replace("ServiceList", "List"));
        assert_eq!(names(&o.services), ["b"]);
    }

    #[test]
    fn json_lists_stream_and_match_the_whole_reading() {
        let mut items = Vec::new();
        for i in 0..500 {
            items.push(format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s{i}","namespace":"n"}},"spec":{{"clusterIP":"10.0.{}.{}","ports":[{{"port":80}}]}}}}"#,
                i / 250,
                i % 250 + 1
            ));
        }
        let json = format!(
            "{{\n  \"kind\": \"List\",\n  \"items\": [\n{}\n  ]\n}}\n",
            items.join(",\n")
        );
        assert_eq!(streams_as_whole(&json).0.services.len(), 500);
        // A single object in JSON.
        assert_eq!(streams_as_whole(&items[7]).0.services.len(), 1);
    }

    #[test]
    fn multi_document_input_mixes_lists_and_objects() {
        let text = format!(
            "# leading comment\n---\n{}---\n{}---\napiVersion: v1\nkind: ConfigMap\nitems:\n- kind: Service\n  metadata: {{name: not-mine}}\n---\n",
            &service(9000, "")[2..].replace("\n  ", "\n"),
            kubectl_list(3, "")
        );
        let (o, _) = streams_as_whole(&text);
        // The ConfigMap's items are not a list's: ignored.
        assert_eq!(names(&o.services), ["svc-9000", "svc-0", "svc-1", "svc-2"]);
    }

    #[test]
    fn a_malformed_item_is_skipped_with_a_warning_naming_it() {
        let mut text = kubectl_list(3, "");
        text = text.replace(
            "    name: svc-1\n    namespace: ns\n  spec:\n    clusterIP: 172.16.0.2\n    ports:\n    - {name: http, port: 80, protocol: TCP}\n",
            "    name: svc-1\n    namespace: ns\n  spec:\n    clusterIP: 172.16.0.2\n    ports: not-a-list\n",
        );
        let (o, w) = streams_as_whole(&text);
        assert_eq!(names(&o.services), ["svc-0", "svc-2"]);
        assert_eq!(w.len(), 1, "{w:?}");
        let msg = w[0].to_string();
        assert!(
            msg.contains("ns/svc-1") && msg.contains("does not match the Service schema"),
            "{msg}"
        );
    }

    #[test]
    fn a_document_that_does_not_parse_fails_naming_its_number() {
        // Document 2's third item is broken YAML (an unclosed flow mapping).
        let mut text = format!(
            "{}---\n{}",
            &service(7, "")[2..].replace("\n  ", "\n"),
            kubectl_list(3, "")
        );
        text = text.replacen(
            "  ports:\n  - {name: http, port: 8080, protocol: TCP}\n",
            "  ports:\n  - {name: http, port: 8080\n",
            3,
        );
        assert!(
            read_t(&text).is_none(),
            "the streaming path gives up on errors"
        );
        let mut o = Objects::default();
        let err = o.add_yaml("input.yaml", &text).expect_err("does not parse");
        let IntakeError::Yaml {
            document,
            source_name,
            message,
        } = &err
        else {
            panic!("not a parse error: {err}");
        };
        assert_eq!(
            (*document, source_name.as_str()),
            (2, "input.yaml"),
            "{err}"
        );
        assert!(message.contains("line"), "{message}");
        // The same error as the whole-tree reading gives.
        let whole_err = Objects::default()
            .add_yaml_whole("input.yaml", &text)
            .expect_err("does not parse");
        assert_eq!(err.to_string(), whole_err.to_string());
    }

    #[test]
    fn shapes_the_split_could_get_wrong_are_read_whole() {
        let list = kubectl_list(2, "");
        for text in [
            format!("%YAML 1.2\n---\n{list}"),
            format!("{list}...\n"),
            format!("--- # a list\n{list}"),
            list.replace("items:\n", "items: # the objects\n"),
            format!("{list}items:\n- kind: Service\n"),
        ] {
            assert!(read_t(&text).is_none(), "{text}");
        }
        // An anchor in one batch used in another: the batch fails to
        // parse alone, the whole reading resolves it.
        let mut text = String::from(
            "kind: List\nitems:\n- &first\n  kind: Service\n  metadata: {name: a, namespace: n}\n  spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n",
        );
        text += &"- {kind: ConfigMap, data: {pad: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx}}\n"
            .repeat(BATCH_BYTES / 40);
        text += "- *first\n";
        assert!(read_t(&text).is_none());
        let mut o = Objects::default();
        o.add_yaml("t", &text).expect("reads whole");
        assert_eq!(names(&o.services), ["a", "a"]);
    }
}
