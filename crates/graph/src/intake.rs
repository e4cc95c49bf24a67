//! Intake: Kubernetes objects (or their YAML/JSON text) in, a
//! [`ServiceGraph`] out.
//!
//! Invalid values never panic and never affect other Services: the
//! offending item (an address, a port, a whole object) is skipped and a
//! [`Warning`] names the object, the field and the reason.
//!
//! This file reads text into [`Objects`]; the graph is built from them by
//! stage: `node` (the node-wide part), `service` (a Service's ports),
//! `slice` (its EndpointSlices' endpoints) and `build` (one Service at a
//! time, and the whole graph).

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use crate::warning::{ObjectKind, Warning};

/// The label that assigns a Service to a particular proxy.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label that marks headless Services' EndpointSlices.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The largest ClientIP affinity timeout the API allows (1 day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86400;

// Streaming intake of large lists (a file beside this one).
#[path = "stream.rs"]
mod stream;
// The fast reader of plain block YAML that streaming tries first.
#[path = "block_yaml.rs"]
mod block_yaml;
// What the fast readers read an item into.
mod tree;

/// The Kubernetes objects a graph is built from.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Nodes (only the proxy's own is used).
    pub nodes: Vec<Node>,
    /// `networking.k8s.io/v1` ServiceCIDRs: with the configured service
    /// CIDRs, the ranges whose unallocated addresses nftables drops.
    pub service_cidrs: Vec<ServiceCIDR>,
}

/// A whole input that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The text is not YAML (or JSON).
    #[error("{source_name}: document {document}: {message}")]
    Yaml {
        /// Where the text came from (a file name).
        source_name: String,
        /// The 1-based document index.
        document: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// Sequences or mappings nest deeper than any Kubernetes object.
    #[error(
        "{source_name}: document {document}: line {line}: nested more than {max} levels deep; not read"
    )]
    TooDeep {
        /// Where the text came from (a file name).
        source_name: String,
        /// The 1-based document index.
        document: usize,
        /// The 1-based line where the limit was passed.
        line: usize,
        /// The limit.
        max: usize,
    },
    /// A directory named as input could not be listed.
    #[error("reading directory {}: {source}", path.display())]
    ReadDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Every input file that `paths` name: files as given, and the files of
/// directories (one level deep) that [`is_input_name`] accepts, sorted.
pub fn input_files(paths: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>, IntakeError> {
    let mut out = Vec::new();
    for p in paths {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let entries = std::fs::read_dir(p).map_err(|source| IntakeError::ReadDir {
            path: p.clone(),
            source,
        })?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| is_input_name(f))
            .collect();
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// Whether [`input_files`] reads `f` when it is in a directory given: a
/// `*.yaml`, `*.yml` or `*.json` name.
pub fn is_input_name(f: &std::path::Path) -> bool {
    matches!(
        f.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn object_name<I: Item>(v: &I) -> String {
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Item::as_str)
        .unwrap_or("<unnamed>");
    match meta.and_then(|m| m.get("namespace")).and_then(Item::as_str) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// What [`add_item`] reads an object from: a `serde_json::Value`, or a
/// [`tree::Tree`] that borrows the text (the same value, read the same
/// way).
pub(crate) trait Item: Sized {
    /// The value of `key`, when this is a mapping that has it.
    fn get(&self, key: &str) -> Option<&Self>;
    /// The string, when this is one.
    fn as_str(&self) -> Option<&str>;
    /// Remove `items` from a mapping; its entries when it is a sequence.
    fn take_items(&mut self) -> Option<Vec<Self>>;
    /// Set `kind` of a mapping.
    fn set_kind(&mut self, kind: &'static str);
    /// What this is when it is not a mapping (for the warning).
    fn not_an_object(&self) -> Option<String>;
    /// The typed object, as `serde_json::from_value` gives it.
    fn into_typed<T: serde::de::DeserializeOwned>(self) -> Result<T, serde_json::Error>;
}

/// A sequence of `len` entries, as [`Item::not_an_object`] says it.
fn sequence_of(len: usize) -> String {
    format!(
        "a sequence of {len} entries, not a Kubernetes object (a list of objects needs kind: List and items)"
    )
}

impl Item for serde_json::Value {
    fn get(&self, key: &str) -> Option<&Self> {
        serde_json::Value::get(self, key)
    }
    fn as_str(&self) -> Option<&str> {
        serde_json::Value::as_str(self)
    }
    fn take_items(&mut self) -> Option<Vec<Self>> {
        match self.as_object_mut().and_then(|o| o.remove("items")) {
            Some(serde_json::Value::Array(items)) => Some(items),
            _ => None,
        }
    }
    fn set_kind(&mut self, kind: &'static str) {
        if let Some(obj) = self.as_object_mut() {
            obj.insert("kind".into(), kind.into());
        }
    }
    fn not_an_object(&self) -> Option<String> {
        use serde_json::Value;
        Some(match self {
            Value::Object(_) => return None,
            Value::Null => "empty".to_string(),
            Value::Array(a) => sequence_of(a.len()),
            Value::String(_) => "a string, not a Kubernetes object".to_string(),
            Value::Bool(_) | Value::Number(_) => format!("{self}, not a Kubernetes object"),
        })
    }
    fn into_typed<T: serde::de::DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_value(self)
    }
}

impl Item for tree::Tree<'_> {
    fn get(&self, key: &str) -> Option<&Self> {
        tree::Tree::get(self, key)
    }
    fn as_str(&self) -> Option<&str> {
        tree::Tree::as_str(self)
    }
    fn take_items(&mut self) -> Option<Vec<Self>> {
        match self.remove("items") {
            Some(tree::Tree::Array(items)) => Some(items),
            _ => None,
        }
    }
    fn set_kind(&mut self, kind: &'static str) {
        self.insert("kind", tree::Tree::String(kind.into()));
    }
    fn not_an_object(&self) -> Option<String> {
        match self {
            tree::Tree::Object(_) => None,
            tree::Tree::Array(a) => Some(sequence_of(a.len())),
            // A scalar: said as of the equal value.
            scalar => scalar.clone().into_value().not_an_object(),
        }
    }
    fn into_typed<T: serde::de::DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        tree::from_tree(self)
    }
}

/// Where intake puts each object it reads: [`Objects`] keeps them as
/// typed objects, [`compact::CompactObjects`] converts each one to its
/// compact form as it is read (a large input's typed objects never exist
/// all at once).
pub trait ObjectSink: Default {
    /// A Service read.
    fn service(&mut self, s: Service);
    /// An EndpointSlice read.
    fn endpoint_slice(&mut self, s: EndpointSlice);
    /// A Node read.
    fn node(&mut self, n: Node);
    /// A ServiceCIDR read.
    fn service_cidr(&mut self, c: ServiceCIDR);
    /// Move `from`'s objects to the end of this one's.
    fn append(&mut self, from: &mut Self);
}

impl ObjectSink for Objects {
    fn service(&mut self, s: Service) {
        self.services.push(s);
    }
    fn endpoint_slice(&mut self, s: EndpointSlice) {
        self.endpoint_slices.push(s);
    }
    fn node(&mut self, n: Node) {
        self.nodes.push(n);
    }
    fn service_cidr(&mut self, c: ServiceCIDR) {
        self.service_cidrs.push(c);
    }
    fn append(&mut self, from: &mut Self) {
        stream::move_to(&mut self.services, &mut from.services);
        stream::move_to(&mut self.endpoint_slices, &mut from.endpoint_slices);
        stream::move_to(&mut self.nodes, &mut from.nodes);
        stream::move_to(&mut self.service_cidrs, &mut from.service_cidrs);
    }
}

impl Objects {
    /// Read multi-document YAML or JSON: single objects, `kind: List`, and
    /// the exact output of `kubectl get
    /// services,endpointslices,nodes,servicecidrs -A -o yaml`. Objects of
    /// other kinds are ignored; objects that do not match their schema are
    /// skipped with a warning. `source_name` appears in errors.
    pub fn add_yaml(&mut self, source_name: &str, text: &str) -> Result<Vec<Warning>, IntakeError> {
        add_yaml(self, source_name, text)
    }

    /// Add one decoded object (or `List`). Takes the value by ownership:
    /// a large `kind: List` is split into its items without copying them.
    /// What is not an object of a kind kproxy reads (an empty document, a
    /// scalar or sequence, another kind) is ignored with a warning.
    pub fn add_value(&mut self, value: serde_json::Value, warnings: &mut Vec<Warning>) {
        add_item(self, value, None, warnings);
    }

    /// [`Objects::add_yaml`] through one `serde_json::Value` tree per
    /// document.
    #[cfg(test)]
    pub(crate) fn add_yaml_whole(
        &mut self,
        source_name: &str,
        text: &str,
    ) -> Result<Vec<Warning>, IntakeError> {
        add_yaml_whole(self, source_name, text)
    }

    /// Parse text into a fresh set of objects.
    pub fn from_yaml(source_name: &str, text: &str) -> Result<(Self, Vec<Warning>), IntakeError> {
        let mut o = Objects::default();
        let w = o.add_yaml(source_name, text)?;
        Ok((o, w))
    }
}

/// [`Objects::add_yaml`] into any [`ObjectSink`].
pub fn add_yaml<S: ObjectSink>(
    sink: &mut S,
    source_name: &str,
    text: &str,
) -> Result<Vec<Warning>, IntakeError> {
    // A UTF-8 byte order mark (editors on Windows write one) is not
    // content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Large lists item by item (see `stream`); whatever that path does
    // not take, and every error, is read here as a whole.
    let mut depth = DepthCheck::new(source_name, text);
    if let Some((mut objects, warnings)) = stream::read::<S>(source_name, text, &mut depth) {
        sink.append(&mut objects);
        return Ok(warnings);
    }
    depth.result()?;
    add_yaml_whole(sink, source_name, text)
}

/// Whether a second CPU is there to use (asked once).
pub(crate) fn two_cpus() -> bool {
    static TWO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TWO.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// [`check_depth`] of one text, run at most once and only when needed:
/// before any of the text is read by a parser other than `block_yaml`
/// (which takes no line the check rejects, and is linear in any case).
pub(crate) struct DepthCheck<'a> {
    source_name: &'a str,
    text: &'a str,
    passed: Option<bool>,
}

impl<'a> DepthCheck<'a> {
    pub(crate) fn new(source_name: &'a str, text: &'a str) -> Self {
        DepthCheck {
            source_name,
            text,
            passed: None,
        }
    }

    /// Whether the text passes the check.
    pub(crate) fn passes(&mut self) -> bool {
        let (source_name, text) = (self.source_name, self.text);
        *self
            .passed
            .get_or_insert_with(|| check_depth(source_name, text).is_ok())
    }

    /// The check's error, if any.
    fn result(&mut self) -> Result<(), IntakeError> {
        if self.passes() {
            Ok(())
        } else {
            check_depth(self.source_name, self.text)
        }
    }
}

/// [`add_yaml`] through one `serde_json::Value` tree per document.
pub(crate) fn add_yaml_whole<S: ObjectSink>(
    sink: &mut S,
    source_name: &str,
    text: &str,
) -> Result<Vec<Warning>, IntakeError> {
    let mut warnings = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(doc).map_err(|e| IntakeError::Yaml {
                source_name: source_name.to_string(),
                document: i + 1,
                message: e.to_string(),
            })?;
        let before = warnings.len();
        add_item(sink, value, None, &mut warnings);
        place(&mut warnings[before..], source_name, i + 1);
    }
    Ok(warnings)
}

/// The item kind of a list kind (`ServiceList` -> `Service`, `List` ->
/// ``), `None` for other kinds.
pub(crate) fn list_item_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "List" => Some(""),
        "ServiceList" => Some("Service"),
        "EndpointSliceList" => Some("EndpointSlice"),
        "NodeList" => Some("Node"),
        "ServiceCIDRList" => Some("ServiceCIDR"),
        _ => None,
    }
}

/// Add list item `index` the way [`add_item`] adds a list's items: an
/// item without `kind` takes the list's item kind.
pub(crate) fn add_list_item<S: ObjectSink, I: Item>(
    sink: &mut S,
    mut item: I,
    item_kind: &'static str,
    index: usize,
    warnings: &mut Vec<Warning>,
) {
    if item.get("kind").is_none() && !item_kind.is_empty() {
        item.set_kind(item_kind);
    }
    add_item(sink, item, Some(index), warnings);
}

/// [`Objects::add_value`] of a whole document (`item` `None`) or of a
/// list's item `item`, into `sink`.
pub(crate) fn add_item<S: ObjectSink, I: Item>(
    sink: &mut S,
    mut value: I,
    item: Option<usize>,
    warnings: &mut Vec<Warning>,
) {
    if let Some(what) = value.not_an_object() {
        warnings.push(Warning::new(
            ObjectKind::Document,
            UNPLACED,
            item_field(item, ""),
            format!("{what}; ignored"),
        ));
        return;
    }
    let kind = value.get("kind").and_then(Item::as_str).unwrap_or("");
    if let Some(item_kind) = list_item_kind(kind) {
        if let Some(items) = value.take_items() {
            for (i, entry) in items.into_iter().enumerate() {
                add_list_item(sink, entry, item_kind, i, warnings);
            }
        }
        return;
    }
    let object_kind = match kind {
        "Service" => ObjectKind::Service,
        "EndpointSlice" => ObjectKind::EndpointSlice,
        "ServiceCIDR" => ObjectKind::ServiceCidr,
        "Node" => ObjectKind::Node,
        _ => {
            let kind = kind.to_string();
            warnings.extend(unread_kind(&value, &kind, item));
            return;
        }
    };
    let name = object_name(&value);
    let result = match object_kind {
        ObjectKind::Service => value.into_typed::<Service>().map(|s| sink.service(s)),
        ObjectKind::EndpointSlice => value
            .into_typed::<EndpointSlice>()
            .map(|s| sink.endpoint_slice(s)),
        ObjectKind::ServiceCidr => value
            .into_typed::<ServiceCIDR>()
            .map(|c| sink.service_cidr(c)),
        _ => value.into_typed::<Node>().map(|n| sink.node(n)),
    };
    if let Err(e) = result {
        warnings.push(Warning::new(
            object_kind,
            name,
            "<object>",
            format!("does not match the {object_kind} schema, skipped: {e}"),
        ));
    }
}

/// The object of a document-level warning until the reader names the file
/// and document ([`place`]).
const UNPLACED: &str = "";

/// Name the file and document of the document-level `warnings` just made.
pub(crate) fn place(warnings: &mut [Warning], source_name: &str, document: usize) {
    for w in warnings {
        if w.kind == ObjectKind::Document && w.object == UNPLACED {
            w.object = format!("{document} of {source_name}");
        }
    }
}

/// The field of a document-level warning: `what` of the document, or of
/// list item `item`.
fn item_field(item: Option<usize>, what: &str) -> String {
    match (item, what) {
        (None, "") => "<document>".into(),
        (None, w) => w.into(),
        (Some(i), "") => format!("items[{i}]"),
        (Some(i), w) => format!("items[{i}].{w}"),
    }
}

/// The kinds kproxy reads from input, for the case-insensitive hint.
const READ_KINDS: [&str; 7] = [
    "Service",
    "EndpointSlice",
    "Node",
    "List",
    "ServiceList",
    "EndpointSliceList",
    "NodeList",
];

/// The warning for an object of a kind kproxy does not read, or `None` for
/// kinds it knows (ServiceCIDR, which other paths read).
fn unread_kind<I: Item>(value: &I, kind: &str, item: Option<usize>) -> Option<Warning> {
    let api_version = value.get("apiVersion").and_then(Item::as_str).unwrap_or("");
    if kind == "ServiceCIDR" && api_version.starts_with("networking.k8s.io/") {
        return None;
    }
    let named = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .is_some_and(|n| n.as_str().is_some());
    let name = if named {
        format!(" {}", object_name(value))
    } else {
        String::new()
    };
    let reason = if kind.is_empty() {
        format!("object{name} has no kind; ignored")
    } else {
        let hint = READ_KINDS
            .iter()
            .find(|k| k.eq_ignore_ascii_case(kind))
            .map(|k| format!(" (kinds are case-sensitive: did you mean {k}?)"))
            .unwrap_or_default();
        format!("{kind}{name} is not a kind kproxy reads; ignored{hint}")
    };
    Some(Warning::new(
        ObjectKind::Document,
        UNPLACED,
        item_field(item, "kind"),
        reason,
    ))
}

/// The deepest nesting of sequences and mappings a document may have.
/// Kubernetes objects nest about ten deep; the YAML parser's work grows
/// with the square of the depth (a 200 KB file of nested `[` took a
/// minute to reject).
pub const MAX_DEPTH: usize = 64;

/// The columns of a line's leading spaces and `- ` sequence entries.
fn block_indent(line: &str) -> usize {
    let mut rest = line;
    loop {
        let t = rest.trim_start_matches(' ');
        match t.strip_prefix("- ") {
            Some(after) => rest = after,
            None => return line.len() - t.len(),
        }
    }
}

/// The bytes [`check_depth`] acts on outside a quoted scalar.
const DEPTH_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 7 {
        t[b"\"'#[{]}"[i] as usize] = true;
        i += 1;
    }
    t
};

/// Reject text whose sequences or mappings nest deeper than [`MAX_DEPTH`]
/// before the parser sees it. A cheap linear scan that may overestimate,
/// never underestimate: a line's block indentation (two columns a level,
/// `- ` included) plus the flow brackets (`[`, `{`) open at that point,
/// outside quoted scalars and comments.
fn check_depth(source_name: &str, text: &str) -> Result<(), IntakeError> {
    let mut document = 1;
    let mut flow = 0usize;
    // Bytes, not chars: every character that matters is ASCII, and no
    // byte of a longer UTF-8 character is.
    let mut quote: Option<u8> = None;
    for (n, (_, line)) in stream::lines(text).enumerate() {
        // As `str::lines` gives them: without `\n` or `\r\n`.
        let line = match line.strip_suffix('\n') {
            Some(l) => l.strip_suffix('\r').unwrap_or(l),
            None => line,
        };
        if quote.is_none() && flow == 0 && line.starts_with("---") {
            document += 1;
        }
        let indent = block_indent(line);
        // Most lines hold none of the characters that change the state
        // below: skip their bytes (the loop would do nothing with them).
        if quote.is_none() && !line.bytes().any(|b| DEPTH_SPECIAL[usize::from(b)]) {
            if indent / 2 > MAX_DEPTH {
                return Err(IntakeError::TooDeep {
                    source_name: source_name.to_string(),
                    document,
                    line: n + 1,
                    max: MAX_DEPTH,
                });
            }
            continue;
        }
        // A quoted scalar starts only where a scalar can start, so the
        // apostrophe of `don't` opens nothing.
        let mut prev = b' ';
        let mut escaped = false;
        for c in line.bytes() {
            match quote {
                Some(b'"') if escaped => escaped = false,
                Some(b'"') if c == b'\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    b'"' | b'\''
                        if matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':' | b'-') =>
                    {
                        quote = Some(c)
                    }
                    b'#' if matches!(prev, b' ' | b'\t') => break,
                    b'[' | b'{' => {
                        flow += 1;
                        if indent / 2 + flow > MAX_DEPTH {
                            return Err(IntakeError::TooDeep {
                                source_name: source_name.to_string(),
                                document,
                                line: n + 1,
                                max: MAX_DEPTH,
                            });
                        }
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
        if quote.is_none() && indent / 2 > MAX_DEPTH {
            return Err(IntakeError::TooDeep {
                source_name: source_name.to_string(),
                document,
                line: n + 1,
                max: MAX_DEPTH,
            });
        }
    }
    Ok(())
}

pub mod compact;

mod build;
mod node;
mod service;
mod slice;

pub(crate) use self::build::{SvcKey, build_unit, service_key, unnamed_service_warning};
pub use self::node::valid_ifname;
pub(crate) use self::node::{Base, build_base};
pub(crate) use self::slice::{SliceClass, classify_slice};

#[cfg(test)]
mod input_tests;
