//! The iptables-save parser: text → [`Saved`] tables of chains of [`Rule`]s,
//! for drift checks, for reading what the kernel holds, and for
//! round-trip tests of the writer.
//!
//! It understands the matches and targets kproxy writes, in either
//! spelling: kproxy's restore input or what `iptables-save` prints back
//! (options reordered, `-s 10.0.0.1/32`, `--set-xmark 0x4000/0x4000` for
//! `--or-mark`, `--probability 0.50000000000`, default `--reject-with`,
//! `--mask`/`--rsource` of `recent`). Anything else is an error naming the
//! line, so foreign rules are never silently misread; [`parse_save_lenient`]
//! keeps such rules as [`SavedRule::rule`] `None` (cleanup needs only
//! their chain and raw text).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use kproxy_graph::Protocol;

use crate::ir::{Addr, AddrTypeDir, Match, Recent, Rule, TableName, Target};

/// A parse error, naming the line.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A line could not be understood.
    #[error("iptables-save line {line}: {message}: {text:?}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
        /// The line.
        text: String,
    },
}

/// One rule as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRule {
    /// The rule, if kproxy understands every option of it.
    pub rule: Option<Rule>,
    /// The rule's text after `-A CHAIN` (valid input for `-D CHAIN`).
    pub raw: String,
}

/// One chain as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedChain {
    /// The name.
    pub name: String,
    /// The policy of a built-in chain (`ACCEPT`), `None` for user chains.
    pub policy: Option<String>,
    /// The rules, in order.
    pub rules: Vec<SavedRule>,
}

/// One table as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTable {
    /// The table's name (`filter`, `nat`, `mangle`, `raw`, ...).
    pub name: String,
    /// Its chains, in the order printed.
    pub chains: Vec<SavedChain>,
}

impl SavedTable {
    /// A chain by name.
    pub fn chain(&self, name: &str) -> Option<&SavedChain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

/// Everything one `iptables-save` printed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Saved {
    /// The tables, in order.
    pub tables: Vec<SavedTable>,
}

impl Saved {
    /// A table by name.
    pub fn table(&self, name: TableName) -> Option<&SavedTable> {
        self.tables.iter().find(|t| t.name == name.as_str())
    }
}

/// Split a line into words as `iptables-save` prints them (libxtables'
/// `xtables_save_string`): whitespace separates; a value that needs it is
/// printed in double quotes, with `"`, `\` and `'` escaped by a backslash
/// and every other byte (a newline too) as is. A quote opens only at the
/// start of a word: chain and target names are printed unquoted, so a `"`
/// inside a word is part of it. An error for a quote left open.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '\\' => match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err("dangling escape".into()),
                },
                '"' => quoted = false,
                _ => cur.push(c),
            }
            continue;
        }
        match c {
            '"' if !in_word => {
                quoted = true;
                in_word = true;
            }
            ' ' | '\t' | '\r' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            _ => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// [`tokenize`], or for a line it cannot split (a foreign chain whose name
/// starts with `"`), its whitespace-separated words as they are.
pub fn tokenize_lossy(line: &str) -> Vec<String> {
    tokenize(line).unwrap_or_else(|_| line.split_whitespace().map(String::from).collect())
}

/// How a line ends, read as [`tokenize`] reads it.
#[derive(Debug, PartialEq, Eq)]
enum QuoteState {
    /// Every quote closed, each followed by whitespace or the end.
    Closed,
    /// A quote is still open at the end.
    Open,
    /// Not something `iptables-save` prints (a quote closed mid-word).
    Invalid,
}

fn quote_state(line: &str) -> QuoteState {
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '\\' if chars.next().is_none() => return QuoteState::Open,
                '"' => {
                    if chars.peek().is_some_and(|n| !n.is_whitespace()) {
                        return QuoteState::Invalid;
                    }
                    quoted = false;
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' if !in_word => {
                quoted = true;
                in_word = true;
            }
            c if c.is_whitespace() => in_word = false,
            _ => in_word = true,
        }
    }
    if quoted {
        QuoteState::Open
    } else {
        QuoteState::Closed
    }
}

/// The most a quoted value may carry over into following lines: the
/// longest strings iptables saves quoted are comments (256 bytes); this
/// bounds how far a stray quote can reach.
const MAX_CONTINUATION: usize = 1024;

/// The logical lines of `iptables-save` output, with their 1-based line
/// numbers. A quoted value holding a newline (a comment, a log prefix) is
/// printed across several lines: they are joined back, with their
/// newlines, when the quote closes within [`MAX_CONTINUATION`] bytes as
/// `iptables-save` would close it; otherwise the line stands alone (and
/// [`tokenize`] will refuse it).
pub fn save_lines(text: &str) -> Vec<(usize, std::borrow::Cow<'_, str>)> {
    use std::borrow::Cow;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if quote_state(line) != QuoteState::Open {
            out.push((i + 1, Cow::Borrowed(line)));
            i += 1;
            continue;
        }
        let mut joined = line.to_string();
        let mut j = i + 1;
        let mut taken = None;
        while j < lines.len() && joined.len() - line.len() <= MAX_CONTINUATION {
            joined.push('\n');
            joined.push_str(lines[j]);
            match quote_state(&joined) {
                QuoteState::Open => j += 1,
                QuoteState::Closed => {
                    taken = Some(j);
                    break;
                }
                QuoteState::Invalid => break,
            }
        }
        match taken {
            Some(last) => {
                out.push((i + 1, Cow::Owned(joined)));
                i = last + 1;
            }
            None => {
                out.push((i + 1, Cow::Borrowed(line)));
                i += 1;
            }
        }
    }
    out
}

/// [`save_lines`] for output read as a stream, one physical line at a
/// time (the drift check reads a legacy table's save without holding it):
/// the same logical lines, in order, handed to a callback as they complete.
/// Only a quoted value still open is held, at most [`MAX_CONTINUATION`]
/// bytes past its first line.
#[derive(Debug, Default)]
pub struct SaveLineJoiner {
    pending: std::collections::VecDeque<String>,
}

impl SaveLineJoiner {
    /// Take the next physical line.
    pub fn push(&mut self, line: &str, emit: &mut impl FnMut(&str)) {
        if self.pending.is_empty() && quote_state(line) != QuoteState::Open {
            emit(line);
            return;
        }
        self.pending.push_back(line.to_string());
        self.settle(false, emit);
    }

    /// The end of the output: a quote still open closes nothing, so its
    /// line stands alone and the lines after it are read again.
    pub fn finish(&mut self, emit: &mut impl FnMut(&str)) {
        self.settle(true, emit);
    }

    fn settle(&mut self, at_end: bool, emit: &mut impl FnMut(&str)) {
        while let Some(first) = self.pending.front() {
            if quote_state(first) != QuoteState::Open {
                emit(first);
                self.pending.pop_front();
                continue;
            }
            let mut joined = first.clone();
            let mut closed_at = None;
            let mut refused = false;
            for (k, next) in self.pending.iter().enumerate().skip(1) {
                if joined.len() - first.len() > MAX_CONTINUATION {
                    refused = true;
                    break;
                }
                joined.push('\n');
                joined.push_str(next);
                match quote_state(&joined) {
                    QuoteState::Open => {}
                    QuoteState::Closed => {
                        closed_at = Some(k);
                        break;
                    }
                    QuoteState::Invalid => {
                        refused = true;
                        break;
                    }
                }
            }
            if let Some(k) = closed_at {
                emit(&joined);
                self.pending.drain(..=k);
            } else if refused || at_end || joined.len() - first.len() > MAX_CONTINUATION {
                emit(first);
                self.pending.pop_front();
            } else {
                return;
            }
        }
    }
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|_| format!("bad number {s:?}"))
}

fn parse_mark(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v)?, parse_u32(m)?)),
        None => Ok((parse_u32(s)?, u32::MAX)),
    }
}

fn parse_addr(s: &str) -> Result<Addr, String> {
    if s.contains('/') {
        s.parse::<IpNet>()
            .map(Addr::Net)
            .map_err(|_| format!("bad address {s:?}"))
    } else {
        s.parse::<IpAddr>()
            .map(Addr::Ip)
            .map_err(|_| format!("bad address {s:?}"))
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" | "6" => Ok(Protocol::Tcp),
        "udp" | "17" => Ok(Protocol::Udp),
        "sctp" | "132" => Ok(Protocol::Sctp),
        _ => Err(format!("unsupported protocol {s:?}")),
    }
}

#[derive(Default)]
struct RecentBuilder {
    name: Option<String>,
    set: bool,
    rcheck: bool,
    seconds: Option<u32>,
    reap: bool,
}

/// Parse a rule's words (after `-A CHAIN`).
pub fn parse_rule(words: &[String]) -> Result<Rule, String> {
    let mut rule = Rule::default();
    let mut negate = false;
    let mut recent: Option<RecentBuilder> = None;
    // Where `-m recent` appeared, so kproxy's own text parses back in order.
    let mut recent_pos = 0usize;
    let mut target: Option<String> = None;
    let mut i = 0;
    let next = |i: &mut usize| -> Result<&String, String> {
        *i += 1;
        words
            .get(*i)
            .ok_or_else(|| format!("{} needs a value", words[*i - 1]))
    };
    while i < words.len() {
        let w = words[i].as_str();
        let was_negated = std::mem::take(&mut negate);
        // Only these options carry a `!` in kproxy's rules; a negation
        // anywhere else must not be read as the plain match.
        if was_negated
            && !matches!(
                w,
                "-s" | "--source"
                    | "-d"
                    | "--destination"
                    | "-i"
                    | "--in-interface"
                    | "--ctstate"
                    | "--mark"
            )
        {
            return Err(format!("unsupported negation of {w}"));
        }
        match w {
            "!" => negate = true,
            "-s" | "--source" => rule.matches.push(Match::Source {
                negated: was_negated,
                addr: parse_addr(next(&mut i)?)?,
            }),
            "-d" | "--destination" => rule.matches.push(Match::Destination {
                negated: was_negated,
                addr: parse_addr(next(&mut i)?)?,
            }),
            "-i" | "--in-interface" => rule.matches.push(Match::InInterface {
                negated: was_negated,
                name: next(&mut i)?.clone(),
            }),
            "-p" | "--protocol" => {
                if was_negated {
                    return Err("negated protocol unsupported".into());
                }
                rule.matches
                    .push(Match::Protocol(parse_protocol(next(&mut i)?)?));
            }
            "-m" | "--match" => {
                let m = next(&mut i)?;
                match m.as_str() {
                    // Implied by `-p`; kproxy always writes both.
                    "tcp" | "udp" | "sctp" | "comment" | "addrtype" | "conntrack" | "mark"
                    | "statistic" | "nfacct" => {}
                    "recent" => {
                        recent = Some(RecentBuilder::default());
                        recent_pos = rule.matches.len();
                    }
                    other => return Err(format!("unsupported match module {other:?}")),
                }
            }
            "--comment" => rule.matches.push(Match::Comment(next(&mut i)?.clone())),
            "--nfacct-name" => rule.matches.push(Match::Nfacct(next(&mut i)?.clone())),
            "--dport" | "--destination-port" => {
                let v = next(&mut i)?;
                rule.matches.push(Match::DestPort(
                    v.parse().map_err(|_| format!("bad port {v:?}"))?,
                ));
            }
            "--src-type" | "--dst-type" => rule.matches.push(Match::AddrType {
                dir: if w == "--src-type" {
                    AddrTypeDir::Src
                } else {
                    AddrTypeDir::Dst
                },
                kind: next(&mut i)?.clone(),
            }),
            "--ctstate" => rule.matches.push(Match::Conntrack {
                negated: was_negated,
                states: next(&mut i)?.clone(),
            }),
            "--mark" => {
                let (value, mask) = parse_mark(next(&mut i)?)?;
                rule.matches.push(Match::Mark {
                    negated: was_negated,
                    value,
                    mask,
                });
            }
            "--mode" => {
                let m = next(&mut i)?;
                if m != "random" {
                    return Err(format!("unsupported statistic mode {m:?}"));
                }
            }
            "--probability" => {
                let v = next(&mut i)?;
                let p: f64 = v.parse().map_err(|_| format!("bad probability {v:?}"))?;
                if !(p > 0.0 && p <= 1.0) {
                    return Err(format!("bad probability {v:?}"));
                }
                // The kernel keeps a 31-bit fraction, so the saved value is
                // approximate; 1/p rounds back to kube-proxy's n.
                let n = (1.0 / p).round();
                rule.matches.push(Match::Statistic {
                    one_in: n.min(f64::from(u32::MAX)) as u32,
                });
            }
            "--name" | "--set" | "--rcheck" | "--seconds" | "--reap" | "--mask" | "--rsource" => {
                let r = recent
                    .as_mut()
                    .ok_or_else(|| format!("{w} outside -m recent"))?;
                match w {
                    "--name" => r.name = Some(next(&mut i)?.clone()),
                    "--set" => r.set = true,
                    "--rcheck" => r.rcheck = true,
                    "--seconds" => {
                        let v = next(&mut i)?;
                        r.seconds = Some(v.parse().map_err(|_| format!("bad seconds {v:?}"))?);
                    }
                    "--reap" => r.reap = true,
                    "--mask" => {
                        // Only the default full mask is kproxy's.
                        let v = next(&mut i)?;
                        if v != "255.255.255.255" && v != "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                        {
                            return Err(format!("unsupported recent mask {v:?}"));
                        }
                    }
                    _ => {}
                }
            }
            "-c" => {
                // Counters: `-c PKTS BYTES`.
                next(&mut i)?;
                next(&mut i)?;
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                if w.starts_with("-g") || w == "--goto" {
                    return Err("goto unsupported".into());
                }
                target = Some(next(&mut i)?.clone());
                let t = parse_target(target.as_deref().unwrap_or(""), &words[i + 1..])?;
                rule.target = Some(t);
                i = words.len();
                continue;
            }
            other => return Err(format!("unsupported option {other:?}")),
        }
        i += 1;
    }
    if let Some(r) = recent {
        let name = r.name.ok_or("recent without --name")?;
        let m = if r.set && !r.rcheck {
            Recent::Set { name }
        } else if r.rcheck && r.reap && !r.set {
            Recent::Check {
                name,
                seconds: r.seconds.ok_or("recent --rcheck without --seconds")?,
            }
        } else {
            return Err("unsupported recent form".into());
        };
        rule.matches
            .insert(recent_pos.min(rule.matches.len()), Match::Recent(m));
    }
    let _ = target;
    Ok(rule)
}

fn parse_target(name: &str, opts: &[String]) -> Result<Target, String> {
    let mut it = opts.iter();
    let mut opt = |want: &str| -> Result<String, String> {
        match (it.next(), it.next()) {
            (Some(o), Some(v)) if o == want => Ok(v.clone()),
            _ => Err(format!("{name}: expected {want} VALUE, got {opts:?}")),
        }
    };
    let t = match name {
        "ACCEPT" | "DROP" | "RETURN" if !opts.is_empty() => {
            return Err(format!("{name} takes no options"));
        }
        "ACCEPT" => Target::Accept,
        "DROP" => Target::Drop,
        "RETURN" => Target::Return,
        "REJECT" => {
            if !opts.is_empty() {
                let w = opt("--reject-with")?;
                if w != "icmp-port-unreachable" && w != "icmp6-port-unreachable" {
                    return Err(format!("unsupported --reject-with {w:?}"));
                }
            }
            Target::Reject
        }
        "DNAT" => {
            let v = opt("--to-destination")?;
            Target::Dnat(
                v.parse::<SocketAddr>()
                    .map_err(|_| format!("bad DNAT destination {v:?}"))?,
            )
        }
        "MASQUERADE" => match opts {
            [] => Target::Masquerade {
                random_fully: false,
            },
            [o] if o == "--random-fully" => Target::Masquerade { random_fully: true },
            _ => return Err(format!("unsupported MASQUERADE options {opts:?}")),
        },
        "MARK" => match opts {
            [o, v] if o == "--or-mark" => Target::MarkOr(parse_u32(v)?),
            [o, v] if o == "--xor-mark" => Target::MarkXor(parse_u32(v)?),
            [o, v] if o == "--set-xmark" => {
                let (value, mask) = parse_mark(v)?;
                if mask == value {
                    Target::MarkOr(value)
                } else if mask == 0 {
                    Target::MarkXor(value)
                } else {
                    Target::MarkSetX { value, mask }
                }
            }
            _ => return Err(format!("unsupported MARK options {opts:?}")),
        },
        chain if !opts.is_empty() => {
            return Err(format!(
                "unsupported target {chain:?} with options {opts:?}"
            ));
        }
        chain => Target::Jump(chain.to_string()),
    };
    Ok(t)
}

/// Parse `iptables-save` output (or kproxy's restore input); every rule
/// must be one kproxy understands.
pub fn parse_save(text: &str) -> Result<Saved, ParseError> {
    parse_inner(text, false)
}

/// Like [`parse_save`], but rules with options kproxy does not know are
/// kept with `rule: None` instead of failing (for reading a whole node's
/// tables, other agents' rules included).
pub fn parse_save_lenient(text: &str) -> Result<Saved, ParseError> {
    parse_inner(text, true)
}

fn parse_inner(text: &str, lenient: bool) -> Result<Saved, ParseError> {
    let mut saved = Saved::default();
    let mut cur: Option<SavedTable> = None;
    // Chain name → index in the current table: tables hold tens of
    // thousands of chains, so a linear search per rule would be quadratic.
    let mut index: HashMap<String, usize> = HashMap::new();
    for (n, line) in save_lines(text) {
        let line = line.as_ref();
        let err = |message: String| ParseError::Line {
            line: n,
            message,
            text: line.to_string(),
        };
        let line_t = line.trim();
        if line_t.is_empty() || line_t.starts_with('#') {
            continue;
        }
        if let Some(t) = line_t.strip_prefix('*') {
            if cur.is_some() {
                return Err(err("table started before COMMIT".into()));
            }
            cur = Some(SavedTable {
                name: t.to_string(),
                chains: Vec::new(),
            });
            index.clear();
            continue;
        }
        if line_t == "COMMIT" {
            match cur.take() {
                Some(t) => saved.tables.push(t),
                None => return Err(err("COMMIT outside a table".into())),
            }
            continue;
        }
        let table = cur
            .as_mut()
            .ok_or_else(|| err("rule outside a table".into()))?;
        if let Some(decl) = line_t.strip_prefix(':') {
            let mut parts = decl.split_whitespace();
            let name = parts
                .next()
                .ok_or_else(|| err("empty chain line".into()))?
                .to_string();
            let policy = parts.next().filter(|p| *p != "-").map(String::from);
            match index.get(&name) {
                // A chain line for an existing chain flushes it.
                Some(&i) => table.chains[i].rules.clear(),
                None => {
                    index.insert(name.clone(), table.chains.len());
                    table.chains.push(SavedChain {
                        name,
                        policy,
                        rules: Vec::new(),
                    });
                }
            }
            continue;
        }
        let words = match tokenize(line_t) {
            Ok(w) => w,
            // Another agent's rule kproxy cannot split (a chain named
            // with a leading quote): kept by its words as they are.
            Err(_) if lenient => tokenize_lossy(line_t),
            Err(e) => return Err(err(e)),
        };
        let (op, chain) = match (words.first(), words.get(1)) {
            (Some(op), Some(chain)) => (op.as_str(), chain.clone()),
            _ if lenient => {
                tracing::debug!(line = n, text = %line_t, "skipping an iptables-save line kproxy cannot read");
                continue;
            }
            _ => return Err(err("expected -A/-I/-X CHAIN".into())),
        };
        if op == "-X" {
            table.chains.retain(|c| c.name != chain);
            index = table
                .chains
                .iter()
                .enumerate()
                .map(|(i, c)| (c.name.clone(), i))
                .collect();
            continue;
        }
        let (insert, rest_start) = match op {
            "-A" | "--append" => (false, 2),
            "-I" | "--insert" => {
                // An optional 1-based position follows.
                if words.get(2).is_some_and(|w| w.parse::<usize>().is_ok()) {
                    (true, 3)
                } else {
                    (true, 2)
                }
            }
            _ if lenient => {
                tracing::debug!(line = n, text = %line_t, "skipping an iptables-save line kproxy cannot read");
                continue;
            }
            other => return Err(err(format!("unsupported command {other:?}"))),
        };
        let raw = raw_after(line_t, rest_start);
        let rule = match parse_rule(&words[rest_start..]) {
            Ok(r) => Some(r),
            Err(_) if lenient => None,
            Err(e) => return Err(err(e)),
        };
        let c = match index.get(&chain).copied() {
            Some(i) => &mut table.chains[i],
            None => {
                let builtin = TableName::parse(&table.name).is_some_and(|t| t.is_builtin(&chain));
                if lenient || builtin {
                    index.insert(chain.clone(), table.chains.len());
                    table.chains.push(SavedChain {
                        name: chain.clone(),
                        policy: None,
                        rules: Vec::new(),
                    });
                    let last = table.chains.len() - 1;
                    &mut table.chains[last]
                } else {
                    return Err(err(format!("chain {chain} not declared")));
                }
            }
        };
        let sr = SavedRule { rule, raw };
        if insert {
            c.rules.insert(0, sr);
        } else {
            c.rules.push(sr);
        }
    }
    if cur.is_some() {
        return Err(ParseError::Line {
            line: text.lines().count(),
            message: "missing COMMIT".into(),
            text: String::new(),
        });
    }
    Ok(saved)
}

/// The text of `line` after its first `n` whitespace-separated words.
fn raw_after(line: &str, n: usize) -> String {
    let mut rest = line;
    for _ in 0..n {
        rest = rest.trim_start();
        let end = rest.find([' ', '\t']).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    rest.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_matches_iptables_restore() {
        assert_eq!(
            tokenize(r#"-A X -m comment --comment "a \"b\" c" -j Y"#).unwrap(),
            vec![
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "Y"
            ]
        );
        assert_eq!(tokenize(r#"--comment """#).unwrap(), vec!["--comment", ""]);
        assert!(tokenize(r#"--comment "open"#).is_err());
    }

    /// What `iptables-save` prints for foreign rules with hostile strings
    /// (as libxtables' `xtables_save_string` quotes them) between kproxy's.
    const HOSTILE_SAVE: &str = "*filter\n\
:INPUT ACCEPT [0:0]\n\
:FOO\"BAR - [0:0]\n\
:\"LEAD - [0:0]\n\
:KUBE-SERVICES - [0:0]\n\
-A INPUT -m comment --comment \"line one\n-A KUBE-SERVICES -j DROP\nCOMMIT\n*nat\" -j ACCEPT\n\
-A INPUT -m comment --comment \"q\\\"uote \\\\ back\\\\\\\" tick\\' \" -j FOO\"BAR\n\
-A INPUT -j \"LEAD\n\
-A FOO\"BAR -m owner --uid-owner 0 -m comment --comment \"a\nb\" -j LOG --log-prefix \"x\ny \"\n\
-A KUBE-SERVICES -m comment --comment \"ns/svc:p cluster IP\" -j KUBE-SVC-X\n\
COMMIT\n";

    #[test]
    fn hostile_foreign_rules_parse_as_iptables_saves_them() {
        let s = parse_save_lenient(HOSTILE_SAVE).unwrap();
        assert_eq!(s.tables.len(), 1, "a COMMIT inside a comment is text");
        let t = &s.tables[0];
        let input = t.chain("INPUT").unwrap();
        assert_eq!(input.rules.len(), 3, "{input:?}");
        assert_eq!(
            tokenize(&input.rules[0].raw).unwrap(),
            [
                "-m",
                "comment",
                "--comment",
                "line one\n-A KUBE-SERVICES -j DROP\nCOMMIT\n*nat",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(
            tokenize(&input.rules[1].raw).unwrap()[3],
            "q\"uote \\ back\\\" tick' "
        );
        assert_eq!(tokenize(&input.rules[1].raw).unwrap()[5], "FOO\"BAR");
        let foo = t.chain("FOO\"BAR").unwrap();
        assert_eq!(foo.rules.len(), 1);
        assert!(foo.rules[0].raw.contains("\"x\ny \""), "{:?}", foo.rules[0]);
        assert!(t.chain("\"LEAD").is_some());
        // kproxy's chain holds its one rule, not the forged one.
        let ours = t.chain("KUBE-SERVICES").unwrap();
        assert_eq!(ours.rules.len(), 1, "{ours:?}");
        assert!(ours.rules[0].rule.is_some());
    }

    #[test]
    fn the_streaming_joiner_gives_save_lines() {
        let long = format!("-A X -m comment --comment \"{}\n", "y".repeat(2000));
        for text in [
            HOSTILE_SAVE.to_string(),
            "*nat\n:\"X - [0:0]\n-A \"X -j ACCEPT\n-A K -j Y\nCOMMIT\n".to_string(),
            format!("*nat\n{long}-A K -j Y\n-A K -m comment --comment \"a\nb\" -j Z\nCOMMIT\n"),
            "-A K -m comment --comment \"open at the end\n-A K -j Y".to_string(),
        ] {
            let want: Vec<String> = save_lines(&text)
                .into_iter()
                .map(|(_, l)| l.into_owned())
                .collect();
            let mut got = Vec::new();
            let mut j = SaveLineJoiner::default();
            for line in text.lines() {
                j.push(line, &mut |l: &str| got.push(l.to_string()));
            }
            j.finish(&mut |l: &str| got.push(l.to_string()));
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn a_stray_quote_reaches_no_further_than_its_line() {
        // A chain named with a leading quote, then kproxy's rules: the
        // quote never closes as iptables-save would close it.
        let text = "*nat\n:\"X - [0:0]\n:KUBE-SERVICES - [0:0]\n-A \"X -j ACCEPT\n\
-A KUBE-SERVICES -m comment --comment \"ns/a:p cluster IP\" -j KUBE-SVC-A\n\
-A KUBE-SERVICES -m comment --comment \"ns/b:p cluster IP\" -j KUBE-SVC-B\nCOMMIT\n";
        let s = parse_save_lenient(text).unwrap();
        let t = &s.tables[0];
        assert_eq!(t.chain("KUBE-SERVICES").unwrap().rules.len(), 2);
        assert_eq!(t.chain("\"X").unwrap().rules.len(), 1);
        assert!(parse_save(text).is_err(), "strict parsing still refuses it");
    }

    #[test]
    fn save_spelling_parses_to_the_same_rule() {
        let ours = parse_rule(&tokenize(r#"-m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"#).unwrap()).unwrap();
        let saved = parse_rule(&tokenize(r#"! -s 10.0.0.0/8 -d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ"#).unwrap()).unwrap();
        assert_eq!(ours.canonical(), saved.canonical());

        let a = parse_rule(&tokenize("-j MARK --or-mark 0x00004000").unwrap()).unwrap();
        let b = parse_rule(&tokenize("-j MARK --set-xmark 0x4000/0x4000").unwrap()).unwrap();
        assert_eq!(a, b);
        let a = parse_rule(
            &tokenize("-m statistic --mode random --probability 0.3333333333 -j X").unwrap(),
        )
        .unwrap();
        let b = parse_rule(
            &tokenize("-m statistic --mode random --probability 0.33333333349 -j X").unwrap(),
        )
        .unwrap();
        assert_eq!(a, b);
        let a = parse_rule(
            &tokenize("-m recent --name KUBE-SEP-A --rcheck --seconds 10800 --reap -j KUBE-SEP-A")
                .unwrap(),
        )
        .unwrap();
        let b = parse_rule(&tokenize("-m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-A --mask 255.255.255.255 --rsource -j KUBE-SEP-A").unwrap()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn unexpected_negations_are_errors() {
        assert!(parse_rule(&tokenize("-p tcp -m tcp ! --dport 80 -j X").unwrap()).is_err());
        assert!(parse_rule(&tokenize("-m addrtype ! --dst-type LOCAL -j X").unwrap()).is_err());
        assert!(parse_rule(&tokenize("! -d 127.0.0.0/8 -j X").unwrap()).is_ok());
    }

    #[test]
    fn unknown_options_are_errors_naming_the_line() {
        let text =
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m owner --uid-owner 0 -j ACCEPT\nCOMMIT\n";
        let e = parse_save(text).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("owner"), "{e}");
        let s = parse_save_lenient(text).unwrap();
        let r = &s.tables[0].chains[0].rules[0];
        assert!(r.rule.is_none());
        assert_eq!(r.raw, "-m owner --uid-owner 0 -j ACCEPT");
    }
}
