//! A fast reader for the plain block YAML that `kubectl get -o yaml` and
//! kproxy's own tools write, and nothing more.
//!
//! libyaml (through `serde_yaml_ng`) spends most of a large input's intake
//! time in its scanner and event stream. Kubernetes YAML written by tools
//! uses a small part of YAML: block mappings and sequences, one key or
//! entry a line, plain scalars, one-line quoted scalars and the empty
//! `{}` and `[]`. [`parse`] reads exactly that part into a [`Tree`]
//! (its strings borrowed from the text) equal to the `serde_json::Value`
//! that `serde_yaml_ng` gives for the same text, and returns `None` for
//! anything else (flow collections with content, block scalars, anchors,
//! tags, escapes, multi-line scalars, tabs, carriage returns, comments
//! after content, duplicate keys, lines indented near the intake's depth
//! limit, and plain scalars whose type is not plain to see, such as
//! `1.5`, `0x1f` or `-3`); the
//! caller then parses the text with `serde_yaml_ng`, so that every input
//! reads as before and every error is reported by that parser.
//!
//! Plain scalars resolve as `serde_yaml_ng` resolves them (the YAML 1.2
//! core schema): `null`, `Null`, `NULL` and `~` are null, `true`/`false`
//! (also capitalised and upper case) booleans, decimal digits without a
//! leading zero unsigned integers, and words starting with a letter
//! strings; digits with a leading zero (`0123`) and dotted digits that are
//! not a number (`10.1.0.5`) are strings too.

use std::borrow::Cow;

use serde_json::Number;

use super::tree::{self, Tree};

/// One line with content: its indentation and the rest.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

struct Reader<'a> {
    lines: Vec<Line<'a>>,
    at: usize,
}

/// Parse `text`, one block mapping or sequence, into its value; `None`
/// when the text is outside the part of YAML this reader takes.
pub(crate) fn parse(text: &str) -> Option<Tree<'_>> {
    // Two word-at-a-time searches (`<[u8]>::contains` of a byte), not a
    // loop over every byte.
    if text.as_bytes().contains(&b'\t') || text.as_bytes().contains(&b'\r') {
        return None;
    }
    let mut lines = Vec::with_capacity(text.len() / 16);
    for (_, line) in super::stream::lines(text) {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let content = line.trim_start_matches(' ');
        // Deep lines are left to the full parser, after the depth check
        // (which this reader then never needs: see `DepthCheck`).
        if line.len() - content.len() >= DEEP {
            return None;
        }
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if line.ends_with(' ') {
            return None;
        }
        lines.push(Line {
            indent: line.len() - content.len(),
            text: content,
        });
    }
    let mut r = Reader { lines, at: 0 };
    let first = *r.lines.first()?;
    let value = r.block(first.indent)?;
    (r.at == r.lines.len()).then_some(value)
}

/// The column from which a line is left to the full parser: short of
/// where the intake's depth check (which counts two columns a level, and
/// one level more for a `{}` or `[]`) would reject it, so that no line
/// this reader takes is one the check rejects.
const DEEP: usize = 2 * super::MAX_DEPTH;

/// `- ` or a lone `-`: a sequence entry.
fn is_entry(text: &str) -> bool {
    text.starts_with("- ") || text == "-"
}

/// A key this reader takes: a letter or `_` first, then letters, digits
/// and `._/-` (label keys such as `kubernetes.io/service-name`).
fn is_simple_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    matches!(bytes.first(), Some(b) if b.is_ascii_alphabetic() || *b == b'_')
        && bytes.iter().all(|&b| KEY_BYTE[usize::from(b)])
        // Only a 4- or 5-letter key can be a null or boolean word.
        && !(matches!(bytes.len(), 4 | 5)
            && matches!(
                key,
                "null" | "Null" | "NULL" | "true" | "True" | "TRUE" | "false" | "False" | "FALSE"
            ))
}

/// The bytes of a simple key: letters, digits and `._/-`.
const KEY_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-');
        b += 1;
    }
    t
};

/// Split `key: value` (or `key:`) at its colon; `None` when the text is
/// not a simple key followed by a colon.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let colon = text.find(':')?;
    let (key, rest) = (&text[..colon], &text[colon + 1..]);
    if !is_simple_key(key) {
        return None;
    }
    if rest.is_empty() {
        return Some((key, ""));
    }
    let value = rest.strip_prefix(' ')?.trim_start_matches(' ');
    (!value.is_empty()).then_some((key, value))
}

/// A one-line scalar (or `{}`/`[]`) as `serde_yaml_ng` reads it.
fn scalar(text: &str) -> Option<Tree<'_>> {
    let first = *text.as_bytes().first()?;
    match first {
        b'"' => {
            let inner = text[1..].strip_suffix('"')?;
            if inner.contains(['"', '\\']) {
                return None;
            }
            Some(Tree::String(Cow::Borrowed(inner)))
        }
        b'\'' => {
            let inner = text[1..].strip_suffix('\'')?;
            if !inner.contains('\'') {
                return Some(Tree::String(Cow::Borrowed(inner)));
            }
            // The depth check's scan of a line sees the text after the
            // first `''` as outside quotes: take nothing it would count
            // (a quote or bracket it opens there, or a quote opened at
            // the closing `'`).
            if inner.contains(['"', '[', '{'])
                || inner.ends_with([' ', '\t', '[', '{', ',', ':', '-'])
            {
                return None;
            }
            // A lone quote inside ends the scalar early; `''` is one quote.
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\'' && chars.next() != Some('\'') {
                    return None;
                }
                out.push(c);
            }
            Some(Tree::String(Cow::Owned(out)))
        }
        b'{' => (text == "{}").then(|| Tree::Object(Vec::new())),
        b'[' => (text == "[]").then(|| Tree::Array(Vec::new())),
        b'~' => (text == "~").then_some(Tree::Null),
        b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' => plain(text),
        _ => None,
    }
}

/// A plain scalar starting with a letter or a digit.
fn plain(text: &str) -> Option<Tree<'_>> {
    // Characters a plain scalar may hold here, and no `: ` (a key) or
    // trailing `:`.
    let mut prev_colon = false;
    for b in text.bytes() {
        let ok = b.is_ascii_alphanumeric()
            || matches!(b, b'.' | b'_' | b'/' | b'-' | b'=' | b'+' | b'@' | b':')
            || b == b' ' && !prev_colon;
        if !ok {
            return None;
        }
        prev_colon = b == b':';
    }
    if prev_colon {
        return None;
    }
    match text {
        "null" | "Null" | "NULL" => return Some(Tree::Null),
        "true" | "True" | "TRUE" => return Some(Tree::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Tree::Bool(false)),
        _ => {}
    }
    let bytes = text.as_bytes();
    if bytes[0].is_ascii_digit() {
        if bytes.iter().all(u8::is_ascii_digit) {
            // Leading zeros make a string (YAML 1.2); otherwise a u64.
            if bytes.len() > 1 && bytes[0] == b'0' {
                return Some(Tree::String(Cow::Borrowed(text)));
            }
            return text
                .parse::<u64>()
                .ok()
                .map(|n| Tree::Number(Number::from(n)));
        }
        // A float, or an integer in another base: left to the full parser.
        if text.parse::<f64>().is_ok() || text.len() > 1 && matches!(bytes[1], b'x' | b'o' | b'b') {
            return None;
        }
    }
    Some(Tree::String(Cow::Borrowed(text)))
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<Line<'a>> {
        self.lines.get(self.at).copied()
    }

    /// The block collection whose first line is the next one, at `indent`.
    fn block(&mut self, indent: usize) -> Option<Tree<'a>> {
        let line = self.peek()?;
        if line.indent != indent {
            return None;
        }
        if is_entry(line.text) {
            self.sequence(indent)
        } else {
            self.at += 1;
            self.mapping(indent, line.text)
        }
    }

    /// After a scalar ending a key or entry at `indent`: a deeper line
    /// would continue it (a multi-line scalar), which this reader leaves
    /// to the full parser.
    fn ends_at(&self, indent: usize) -> Option<()> {
        match self.peek() {
            Some(l) if l.indent > indent => None,
            _ => Some(()),
        }
    }

    /// A block sequence whose entries are at `indent`.
    fn sequence(&mut self, indent: usize) -> Option<Tree<'a>> {
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || !is_entry(line.text) {
                // The key after a sequence that is a mapping value at the
                // same indentation ends it; anything else is not taken.
                if line.indent == indent && split_key(line.text).is_some() {
                    break;
                }
                return None;
            }
            self.at += 1;
            let rest = line.text[1..].trim_start_matches(' ');
            if rest.is_empty() || is_entry(rest) {
                return None;
            }
            let column = indent + (line.text.len() - rest.len());
            if column >= DEEP {
                return None;
            }
            if split_key(rest).is_some() {
                items.push(self.mapping(column, rest)?);
            } else {
                items.push(scalar(rest)?);
                self.ends_at(indent)?;
            }
        }
        Some(Tree::Array(items))
    }

    /// A block mapping at `indent` whose first key line (already taken)
    /// is `first`.
    fn mapping(&mut self, indent: usize, first: &'a str) -> Option<Tree<'a>> {
        let mut pairs: Vec<(Cow<'a, str>, Tree<'a>)> = Vec::new();
        let mut text = first;
        loop {
            let (key, value) = split_key(text)?;
            let value = if value.is_empty() {
                match self.peek() {
                    Some(l) if l.indent > indent => self.block(l.indent)?,
                    Some(l) if l.indent == indent && is_entry(l.text) => self.sequence(indent)?,
                    _ => Tree::Null,
                }
            } else {
                let v = scalar(value)?;
                self.ends_at(indent)?;
                v
            };
            pairs.push((Cow::Borrowed(key), value));
            match self.peek() {
                Some(l) if l.indent == indent && !is_entry(l.text) => {
                    self.at += 1;
                    text = l.text;
                }
                Some(l) if l.indent > indent => return None,
                _ => break,
            }
        }
        // A repeated key is left to the full parser.
        if !pairs.is_sorted_by(|a, b| a.0 < b.0) {
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            if pairs.windows(2).any(|w| w[0].0 == w[1].0) {
                return None;
            }
        }
        Some(tree::object(pairs))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    /// [`parse`] as a `serde_json::Value`.
    fn parse(text: &str) -> Option<Value> {
        super::parse(text).map(Tree::into_value)
    }

    /// What `serde_yaml_ng` reads from `text`.
    fn full(text: &str) -> Value {
        serde_yaml_ng::from_str(text).expect("valid YAML")
    }

    #[track_caller]
    fn same(text: &str) {
        let fast = parse(text).unwrap_or_else(|| panic!("not taken: {text}"));
        assert_eq!(fast, full(text), "{text}");
    }

    #[track_caller]
    fn not_taken(text: &str) {
        assert_eq!(parse(text), None, "{text}");
    }

    #[test]
    fn kubectl_shapes_read_as_serde_yaml_ng_reads_them() {
        same(
            "apiVersion: v1\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata:\n    name: svc-1\n    namespace: ns\n    labels:\n      kubernetes.io/service-name: x\n      app.kubernetes.io/name: 'it''s'\n    resourceVersion: \"\"\n  spec:\n    clusterIP: 172.16.0.1\n    clusterIPs:\n    - 172.16.0.1\n    - fd00::1\n    ports:\n    - name: http\n      port: 80\n      nodePort: 30000\n      targetPort: 8080\n    selector: {}\n    topologyKeys: []\n  status:\n    loadBalancer: {}\n# a comment\n\n- kind: EndpointSlice\n  endpoints:\n  -   addresses:\n      - 10.1.0.5\n      conditions:\n        ready: true\n        serving: False\n        terminating: null\n      nodeName: node-0\n      zone: ~\n      hostname:\n  ports:\n    - port: 0123\n      name: a b\n      x: 00\n      y: 0\nkind: List\n",
        );
    }

    #[test]
    fn anything_else_is_left_to_the_full_parser() {
        for text in [
            "a: {b: 1}\n",
            "a: [1]\n",
            "a: |\n  x\n",
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: \"x\\ty\"\n",
            "a: 'x\n  y'\n",
            "a: x\n  y\n",
            "a: 1.5\n",
            "a: 1e3\n",
            "a: 0x1f\n",
            "a: -3\n",
            "a: .inf\n",
            "a: x # c\n",
            "a: x\na: y\n",
            "a:\tx\n",
            "a: x\r\n",
            "a: x \n",
            "\"a\": x\n",
            "1: x\n",
            "- - x\n",
            "-\n  a: 1\n",
            "a: b: c\n",
            "a: 'x'y'\n",
            "a: 99999999999999999999999\n",
            "x\n",
            "a:\n    b: 1\n  c: 2\n",
            "- a\nb: 1\n",
            "a: é\n",
        ] {
            not_taken(text);
        }
    }

    #[test]
    fn fixture_documents_it_takes_read_as_serde_yaml_ng_reads_them() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures");
        let (mut taken, mut all) = (0, 0);
        for f in std::fs::read_dir(&dir).expect("fixtures") {
            let text = std::fs::read_to_string(f.expect("entry").path()).expect("readable");
            for doc in text.split("\n---\n") {
                if let Some(fast) = parse(doc) {
                    assert_eq!(fast, full(doc), "{doc}");
                }
                // The same document as an emitter writes it (block style,
                // as `kubectl get -o yaml` does).
                let block = serde_yaml_ng::to_string(&full(doc)).expect("emits");
                all += 1;
                if let Some(fast) = parse(&block) {
                    taken += 1;
                    assert_eq!(fast, full(&block), "{block}");
                }
            }
        }
        assert!(taken * 2 > all, "only {taken} of {all} documents taken");
    }

    #[test]
    fn nesting_and_null_values_follow_indentation() {
        same("a:\nb:\n  c:\n  - 1\n  - x: y\n    z:\n  d: 2\ne: 3\n");
        same("- a\n- b: 1\n  c:\n    - 2\n- \"\"\n");
        same("  - a: 1\n    b: 2\n  - a: 3\n");
    }

    /// Scalars chosen to sit on the edges of YAML's plain-scalar typing.
    const TRICKY: &[&str] = &[
        "0",
        "00",
        "0123",
        "7",
        "18446744073709551615",
        "18446744073709551616",
        "1.5",
        "1.",
        ".5",
        "1e3",
        "1e+5",
        "0x1f",
        "0o17",
        "0b1",
        "-3",
        "+4",
        "1_000",
        "1+2",
        "12:30",
        "2001-12-14",
        "10.1.0.5",
        "fd00::1",
        "inf",
        "nan",
        ".inf",
        "-.inf",
        ".nan",
        "null",
        "Null",
        "NULL",
        "~",
        "true",
        "True",
        "TRUE",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "",
        " ",
        "a b",
        "a: b",
        "a:b",
        "a #b",
        "#a",
        "-",
        "- a",
        "?",
        "x'y",
        "it's",
        "\"q\"",
        "back\\slash",
        "tab\tx",
        "é",
        "line\nbreak",
        "{}",
        "[]",
        "{a: 1}",
        "*x",
        "&x",
        "!x",
        "%x",
        "@x",
        "`x",
        "kubernetes.io/service-name",
        "http",
        "TCP",
        "node-0",
    ];

    fn scalar_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            proptest::sample::select(TRICKY).prop_map(|s| Value::String(s.to_string())),
            any::<u64>().prop_map(|n| Value::Number(n.into())),
            any::<i64>().prop_map(|n| Value::Number(n.into())),
            (-1e6f64..1e6).prop_map(|f| serde_json::json!(f)),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
            "[a-z0-9.:/ -]{0,12}".prop_map(Value::String),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::sample::select(TRICKY).prop_map(str::to_string),
            "[a-zA-Z_][a-zA-Z0-9._/-]{0,10}",
        ]
    }

    fn tree() -> impl Strategy<Value = Value> {
        scalar_value().prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map(key(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever this reader takes, it reads as `serde_yaml_ng` does:
        /// random documents as the emitter writes them (block style, as
        /// `kubectl get -o yaml` does), with the emitter's quoting.
        #[test]
        fn it_reads_what_it_takes_as_serde_yaml_ng_does(value in tree()) {
            let text = serde_yaml_ng::to_string(&value).expect("emits");
            if let Some(fast) = parse(&text) {
                prop_assert_eq!(fast, full(&text), "{}", text);
            }
        }

        /// The same with scalars written bare, unquoted, where the emitter
        /// would have quoted them: the typing of plain scalars decides.
        #[test]
        fn bare_scalars_are_typed_as_serde_yaml_ng_types_them(
            pairs in proptest::collection::vec(
                ("[a-z][a-z0-9]{0,6}", proptest::sample::select(TRICKY)), 1..6)
        ) {
            let mut text = String::new();
            for (k, v) in &pairs {
                text.push_str(&format!("{k}: {v}\n"));
            }
            let reference: Result<Value, _> = serde_yaml_ng::from_str(&text);
            match (parse(&text), reference) {
                (Some(fast), Ok(full)) => prop_assert_eq!(fast, full, "{}", text),
                (Some(fast), Err(e)) => {
                    prop_assert!(false, "took {} as {:?}; serde_yaml_ng: {}", text, fast, e)
                }
                (None, _) => {}
            }
        }
    }
}
