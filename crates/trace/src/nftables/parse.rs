//! The parser: `nft -f` scripts (flat `add`/`flush`/`delete` commands)
//! and `nft list` output (nested blocks) into an [`NftRuleset`]; rule
//! statements are read by [`stmt`].

mod stmt;

use super::ast::*;
use super::lex::{Stream, Tok, tokenize};
use crate::{Hook, TraceError};
use stmt::{join_tokens, parse_elements, parse_rule_stmts};

pub(super) struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    src: Vec<String>,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn line(&self) -> usize {
        self.toks
            .get(self.pos.min(self.toks.len().saturating_sub(1)))
            .map(|t| t.1)
            .unwrap_or(0)
    }

    fn err(&self, reason: impl Into<String>) -> TraceError {
        let line = self.line();
        TraceError::Parse {
            line,
            text: self
                .src
                .get(line.wrapping_sub(1))
                .cloned()
                .unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }

    fn word(&mut self) -> Result<String, TraceError> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w),
            Some(Tok::Str(s)) => Ok(s),
            other => Err(self.err(format!("expected a word, found {other:?}"))),
        }
    }

    fn expect(&mut self, t: Tok) -> Result<(), TraceError> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            other => Err(self.err(format!("expected {}, found {other:?}", t.text()))),
        }
    }

    /// Tokens up to the end of the statement: a newline or `;` outside
    /// braces (or a closing brace of the enclosing block).
    fn statement(&mut self) -> Vec<(Tok, usize)> {
        let mut depth = 0i32;
        let mut out = Vec::new();
        while let Some(t) = self.peek().cloned() {
            match t {
                Tok::Newline | Tok::Semi if depth == 0 => break,
                Tok::RBrace if depth == 0 => break,
                Tok::LBrace => depth += 1,
                Tok::RBrace => depth -= 1,
                Tok::Newline => {
                    self.pos += 1;
                    continue;
                }
                _ => {}
            }
            out.push(self.toks[self.pos].clone());
            self.pos += 1;
        }
        out
    }

    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(Tok::Newline | Tok::Semi)) {
            self.pos += 1;
        }
    }

    /// Consumes `t` if it comes next.
    fn eat(&mut self, t: &Tok) -> bool {
        let next = self.peek() == Some(t);
        if next {
            self.pos += 1;
        }
        next
    }

    /// The next statement of a `{ ... }` block and its line; `None` once
    /// the closing brace is consumed. `unterminated` is the error when the
    /// input ends first.
    fn block_statement(&mut self, unterminated: &str) -> Result<Option<Statement>, TraceError> {
        self.skip_separators();
        if self.eat(&Tok::RBrace) {
            return Ok(None);
        }
        let line = self.line();
        let stmt = self.statement();
        if stmt.is_empty() {
            return Err(self.err(unterminated));
        }
        Ok(Some((line, stmt)))
    }
}

/// A statement's line and tokens.
type Statement = (usize, Vec<(Tok, usize)>);

pub(super) fn hook_of(s: &str) -> Option<Hook> {
    Some(match s {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    })
}

pub(super) fn priority_value(words: &[String]) -> Option<i32> {
    let joined: String = words.concat();
    let named = kproxy_nftables::ir::Priority::standard;
    if let Ok(v) = joined.parse::<i32>() {
        return Some(v);
    }
    for (i, c) in joined.char_indices() {
        if (c == '+' || c == '-') && i > 0 {
            let base = named(&joined[..i])?;
            let off: i32 = joined[i + 1..].parse().ok()?;
            return Some(if c == '+' { base + off } else { base - off });
        }
    }
    named(&joined)
}

impl NftRuleset {
    /// Parse an `nft -f` script or `nft list` output.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let toks = tokenize(text)?;
        let mut p = Parser {
            toks,
            pos: 0,
            src: text.lines().map(str::to_string).collect(),
        };
        let mut rs = NftRuleset::default();
        loop {
            p.skip_separators();
            let Some(t) = p.peek().cloned() else { break };
            let w = match t {
                Tok::Word(w) => w,
                other => return Err(p.err(format!("unexpected {}", other.text()))),
            };
            p.pos += 1;
            match w.as_str() {
                "table" => {
                    let (fam, name) = (p.word()?, p.word()?);
                    rs.table_mut(&fam, &name);
                    p.expect(Tok::LBrace)?;
                    rs.parse_table_block(&mut p, &fam, &name)?;
                }
                "add" | "create" | "insert" => {
                    let insert = w == "insert";
                    let kind = p.word()?;
                    rs.parse_add(&mut p, &kind, insert)?;
                }
                "flush" => {
                    let kind = p.word()?;
                    if kind == "ruleset" {
                        rs.tables.clear();
                        continue;
                    }
                    let (fam, table) = (p.word()?, p.word()?);
                    let t = rs.table_mut(&fam, &table);
                    match kind.as_str() {
                        "table" => {
                            for c in t.chains.values_mut() {
                                c.rules.clear();
                            }
                            for s in t.sets.values_mut() {
                                s.elements.clear();
                            }
                        }
                        "chain" => {
                            let n = p.word()?;
                            if let Some(c) = t.chains.get_mut(&n) {
                                c.rules.clear();
                            }
                        }
                        "set" | "map" => {
                            let n = p.word()?;
                            if let Some(s) = t.sets.get_mut(&n) {
                                s.elements.clear();
                            }
                        }
                        other => return Err(p.err(format!("unsupported flush {other}"))),
                    }
                }
                "delete" | "destroy" => {
                    let kind = p.word()?;
                    let (fam, table) = (p.word()?, p.word()?);
                    match kind.as_str() {
                        "table" => rs.tables.retain(|t| !(t.family == fam && t.name == table)),
                        "chain" => {
                            let n = p.word()?;
                            rs.table_mut(&fam, &table).chains.remove(&n);
                        }
                        "set" | "map" => {
                            let n = p.word()?;
                            rs.table_mut(&fam, &table).sets.remove(&n);
                        }
                        "element" => {
                            let n = p.word()?;
                            let stmt = p.statement();
                            let mut s = Stream {
                                toks: &stmt,
                                pos: 0,
                            };
                            if !matches!(s.next(), Some(Tok::LBrace)) {
                                return Err(p.err("delete element without { ... }"));
                            }
                            let gone = parse_elements(&mut s, false).map_err(|e| p.err(e))?;
                            if let Some(set) = rs.table_mut(&fam, &table).sets.get_mut(&n) {
                                set.elements
                                    .retain(|e| !gone.iter().any(|g| g.key == e.key));
                            }
                        }
                        other => return Err(p.err(format!("unsupported delete {other}"))),
                    }
                }
                other => return Err(p.err(format!("unsupported command {other:?}"))),
            }
            let rest = p.statement();
            if !rest.is_empty() {
                return Err(p.err(format!("unexpected {}", join_tokens(&rest))));
            }
        }
        Ok(rs)
    }

    fn table_mut(&mut self, fam: &str, name: &str) -> &mut NftTable {
        let idx = match self
            .tables
            .iter()
            .position(|t| t.family == fam && t.name == name)
        {
            Some(i) => i,
            None => {
                self.tables.push(NftTable {
                    family: fam.to_string(),
                    name: name.to_string(),
                    ..NftTable::default()
                });
                self.tables.len() - 1
            }
        };
        &mut self.tables[idx]
    }

    fn parse_add(&mut self, p: &mut Parser, kind: &str, insert: bool) -> Result<(), TraceError> {
        let (fam, table) = (p.word()?, p.word()?);
        match kind {
            "table" => {
                self.table_mut(&fam, &table);
                if p.eat(&Tok::LBrace) {
                    let _ = p.statement();
                    p.skip_separators();
                    p.expect(Tok::RBrace)?;
                }
            }
            "chain" => {
                let name = p.word()?;
                let mut chain = NftChain::default();
                if p.eat(&Tok::LBrace) {
                    while let Some((_, stmt)) =
                        p.block_statement("unterminated chain declaration")?
                    {
                        apply_chain_decl(&mut chain, &stmt).map_err(|e| p.err(e))?;
                    }
                }
                let t = self.table_mut(&fam, &table);
                let c = t.chains.entry(name).or_default();
                if chain.base.is_some() {
                    c.base = chain.base;
                }
            }
            "rule" => {
                let chain = p.word()?;
                let line = p.line();
                let stmt = p.statement();
                if stmt
                    .iter()
                    .any(|t| t.0.is("position") || t.0.is("index") || t.0.is("handle"))
                {
                    return Err(p.err("rule positions are not supported"));
                }
                if !balanced(&stmt) {
                    return Err(p.err("unbalanced braces"));
                }
                let rule = make_rule(&stmt, line);
                let t = self.table_mut(&fam, &table);
                let c = t.chains.entry(chain).or_default();
                if insert {
                    c.rules.insert(0, rule);
                } else {
                    c.rules.push(rule);
                }
            }
            "set" | "map" => {
                let (name, set) = parse_set(p, kind == "map")?;
                let t = self.table_mut(&fam, &table);
                let e = t.sets.entry(name).or_default();
                e.is_map = set.is_map;
                e.decl = set.decl;
                e.elements.extend(set.elements);
            }
            "element" => {
                let name = p.word()?;
                let stmt = p.statement();
                let t = self.table_mut(&fam, &table);
                let Some(set) = t.sets.get_mut(&name) else {
                    return Err(p.err(format!("element for undeclared set {name}")));
                };
                let mut s = Stream {
                    toks: &stmt,
                    pos: 0,
                };
                if !matches!(s.next(), Some(Tok::LBrace)) {
                    return Err(p.err("add element without { ... }"));
                }
                let is_map = set.is_map;
                let elems = parse_elements(&mut s, is_map).map_err(|e| p.err(e))?;
                set.elements.extend(elems);
            }
            other => return Err(p.err(format!("unsupported add {other}"))),
        }
        Ok(())
    }

    fn parse_table_block(
        &mut self,
        p: &mut Parser,
        fam: &str,
        name: &str,
    ) -> Result<(), TraceError> {
        loop {
            p.skip_separators();
            let t = p.next();
            match t {
                Some(Tok::RBrace) => return Ok(()),
                Some(Tok::Word(w)) if w == "chain" => {
                    let cname = p.word()?;
                    p.expect(Tok::LBrace)?;
                    let mut chain = NftChain::default();
                    while let Some((line, stmt)) = p.block_statement("unexpected token in chain")? {
                        if stmt[0].0.is("type") || stmt[0].0.is("policy") || stmt[0].0.is("comment")
                        {
                            apply_chain_decl(&mut chain, &stmt).map_err(|e| p.err(e))?;
                        } else {
                            if !balanced(&stmt) {
                                return Err(p.err("unbalanced braces"));
                            }
                            chain.rules.push(make_rule(&stmt, line));
                        }
                    }
                    self.table_mut(fam, name).chains.insert(cname, chain);
                }
                Some(Tok::Word(w)) if w == "set" || w == "map" => {
                    let (sname, set) = parse_set(p, w == "map")?;
                    self.table_mut(fam, name).sets.insert(sname, set);
                }
                Some(Tok::Word(w)) if w == "comment" || w == "flags" => {
                    let _ = p.statement();
                }
                other => return Err(p.err(format!("unexpected {other:?} in table"))),
            }
        }
    }
}

/// `NAME { ... }` after `set` / `map`.
fn parse_set(p: &mut Parser, is_map: bool) -> Result<(String, NftSet), TraceError> {
    let name = p.word()?;
    p.expect(Tok::LBrace)?;
    let mut set = NftSet {
        is_map,
        ..NftSet::default()
    };
    let mut decl = Vec::new();
    while let Some((_, stmt)) = p.block_statement("unterminated set")? {
        if stmt[0].0.is("elements") {
            let mut s = Stream {
                toks: &stmt[1..],
                pos: 0,
            };
            if s.peek().is_some_and(|t| t.is("=")) {
                s.next();
            }
            if !matches!(s.next(), Some(Tok::LBrace)) {
                return Err(p.err("elements without { ... }"));
            }
            set.elements
                .extend(parse_elements(&mut s, set.is_map).map_err(|e| p.err(e))?);
        } else {
            decl.push(join_tokens(&stmt));
        }
    }
    set.decl = decl.join("; ");
    Ok((name, set))
}

pub(super) fn apply_chain_decl(chain: &mut NftChain, stmt: &[(Tok, usize)]) -> Result<(), String> {
    let mut s = Stream { toks: stmt, pos: 0 };
    while !s.done() {
        let w = s.word()?;
        match w.as_str() {
            "type" => {
                let kind = s.word()?;
                if s.word()? != "hook" {
                    return Err("chain type without hook".into());
                }
                let h = s.word()?;
                let hook = hook_of(&h).ok_or(format!("unsupported hook {h}"))?;
                let mut priority = 0;
                if s.peek().is_some_and(|t| t.is("priority")) {
                    s.next();
                    let mut words = Vec::new();
                    while let Some(Tok::Word(w)) = s.peek() {
                        if w == "policy" {
                            break;
                        }
                        words.push(w.clone());
                        s.next();
                    }
                    priority = priority_value(&words)
                        .ok_or(format!("bad priority {}", words.join(" ")))?;
                }
                chain.base = Some(BaseChain {
                    kind,
                    hook,
                    priority,
                    policy_drop: false,
                });
            }
            "policy" => {
                let pol = s.word()?;
                if let Some(b) = chain.base.as_mut() {
                    b.policy_drop = pol == "drop";
                }
            }
            "comment" => {
                s.next();
            }
            "device" | "devices" => return Err("netdev chains are not supported".into()),
            other => return Err(format!("unexpected {other} in chain declaration")),
        }
        while matches!(s.peek(), Some(Tok::Semi)) {
            s.next();
        }
    }
    Ok(())
}

/// Braces open and close within the statement (a missing `}` would
/// otherwise swallow the rest of the file into one rule).
pub(super) fn balanced(stmt: &[(Tok, usize)]) -> bool {
    let mut depth = 0i32;
    for (t, _) in stmt {
        match t {
            Tok::LBrace => depth += 1,
            Tok::RBrace => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

pub(super) fn make_rule(stmt: &[(Tok, usize)], line: usize) -> NftRule {
    let mut stmts = Vec::new();
    let unknown = parse_rule_stmts(stmt, &mut stmts).err();
    NftRule {
        text: join_tokens(stmt),
        line,
        stmts,
        unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
add table ip kube-proxy
add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain ip kube-proxy svc-x
add map ip kube-proxy services { type ipv4_addr . inet_proto . inet_service : verdict ; }
add element ip kube-proxy services { 10.96.0.1 . tcp . 80 : goto svc-x }
add rule ip kube-proxy nat-prerouting ip daddr . meta l4proto . th dport vmap @services
add rule ip kube-proxy svc-x dnat to 10.0.0.5:8080
";

    const LISTED: &str = "\
table ip kube-proxy {
	map services {
		type ipv4_addr . inet_proto . inet_service : verdict
		elements = { 10.96.0.1 . tcp . 80 : goto svc-x }
	}

	chain nat-prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr . meta l4proto . th dport vmap @services
	}

	chain svc-x {
		dnat to 10.0.0.5:8080
	}
}
";

    fn shape(rs: &NftRuleset) -> Vec<String> {
        let mut out = Vec::new();
        for t in &rs.tables {
            for (name, c) in &t.chains {
                out.push(format!("chain {name} {:?}", c.base));
                for r in &c.rules {
                    out.push(format!("  {:?} {:?}", r.stmts, r.unknown));
                }
            }
            for (name, s) in &t.sets {
                let keys: Vec<_> = s.elements.iter().map(|e| (&e.key, &e.value)).collect();
                out.push(format!("set {name} map={} {keys:?}", s.is_map));
            }
        }
        out
    }

    #[test]
    fn scripts_and_listings_give_the_same_ruleset() {
        let script = NftRuleset::parse(SCRIPT).expect("script parses");
        let listed = NftRuleset::parse(LISTED).expect("listing parses");
        assert_eq!(script.tables.len(), 1);
        let t = &script.tables[0];
        assert_eq!((t.family.as_str(), t.name.as_str()), ("ip", "kube-proxy"));
        let base = t.chains["nat-prerouting"]
            .base
            .as_ref()
            .expect("base chain");
        assert_eq!(
            (base.hook, base.priority, base.policy_drop),
            (Hook::Prerouting, -100, false)
        );
        assert_eq!(t.sets["services"].elements.len(), 1);
        assert_eq!(shape(&script), shape(&listed));
    }

    #[test]
    fn flush_and_delete() {
        let text = format!(
            "{SCRIPT}flush chain ip kube-proxy svc-x\ndelete element ip kube-proxy services {{ 10.96.0.1 . tcp . 80 }}\n"
        );
        let rs = NftRuleset::parse(&text).expect("parses");
        let t = &rs.tables[0];
        assert!(t.chains["svc-x"].rules.is_empty());
        assert!(t.sets["services"].elements.is_empty());
        let rs = NftRuleset::parse(&format!("{SCRIPT}flush ruleset\n")).expect("parses");
        assert!(rs.tables.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let err = NftRuleset::parse("add table ip t\nfrob ip t\n").expect_err("unknown command");
        assert!(matches!(err, TraceError::Parse { line: 2, .. }), "{err:?}");
        let err = NftRuleset::parse(
            "add table ip t\nadd chain ip t c { type nat hook egress priority 0; }\n",
        )
        .expect_err("unknown hook");
        assert!(err.to_string().contains("egress"), "{err}");
    }

    #[test]
    fn priorities_hooks_and_braces() {
        let p = |s: &str| priority_value(&s.split(' ').map(String::from).collect::<Vec<_>>());
        assert_eq!(p("dstnat"), Some(-100));
        assert_eq!(p("srcnat + 10"), Some(110));
        assert_eq!(p("filter -5"), Some(-5));
        assert_eq!(p("-110"), Some(-110));
        assert_eq!(p("bogus"), None);
        assert_eq!(hook_of("output"), Some(Hook::Output));
        assert_eq!(hook_of("ingress"), None);
        let toks = tokenize("{ a { b } }").expect("ok");
        assert!(balanced(&toks));
        let toks = tokenize("{ a } }").expect("ok");
        assert!(!balanced(&toks));
    }
}
