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
//!
//! - here: the save-file structure ([`Saved`], [`SavedTable`],
//!   [`SavedChain`], [`SavedRule`]) and [`parse_save`];
//! - `lines`: the tokenizer ([`tokenize`]) and the line joiner
//!   ([`save_lines`], [`SaveLineJoiner`]) for quoted values that span
//!   lines;
//! - `rule`: one rule's words to a [`Rule`] ([`parse_rule`]).

mod lines;
mod rule;

use std::collections::HashMap;

use crate::ir::{Rule, TableName};

pub use lines::{SaveLineJoiner, save_lines, tokenize, tokenize_lossy};
pub use rule::parse_rule;

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

    /// The chains by name, for many lookups.
    pub(crate) fn chains_by_name(&self) -> HashMap<&str, &SavedChain> {
        self.chains.iter().map(|c| (c.name.as_str(), c)).collect()
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
