//! The statements of one rule: matches, lookups, marks, NAT and verdicts.

use std::net::{IpAddr, SocketAddr};

use super::super::ast::*;
use super::super::lex::{Stream, Tok};

pub(super) fn is_verdict_word(w: &str) -> bool {
    matches!(
        w,
        "accept" | "drop" | "reject" | "return" | "continue" | "jump" | "goto"
    )
}

pub(super) fn starts_selector(t: Option<&Tok>) -> bool {
    matches!(t, Some(Tok::Word(w)) if matches!(w.as_str(),
        "ip" | "ip6" | "meta" | "th" | "tcp" | "udp" | "sctp" | "ct" | "fib" | "numgen"
        | "mark" | "iif" | "iifname" | "oif" | "oifname" | "l4proto"))
}

pub(super) fn parse_sel(s: &mut Stream<'_>) -> Result<Sel, String> {
    let w = s.word()?;
    let field = |s: &mut Stream<'_>| s.word();
    Ok(match w.as_str() {
        "ip" | "ip6" => match field(s)?.as_str() {
            "saddr" => Sel::Saddr,
            "daddr" => Sel::Daddr,
            "protocol" | "nexthdr" => Sel::L4proto,
            f => return Err(format!("unsupported expression {w} {f}")),
        },
        "meta" => match field(s)?.as_str() {
            "l4proto" | "protocol" if true => Sel::L4proto,
            "mark" => Sel::Mark,
            "iif" | "iifname" => Sel::Iif,
            f => return Err(format!("unsupported expression meta {f}")),
        },
        "l4proto" => Sel::L4proto,
        "mark" => Sel::Mark,
        "iif" | "iifname" => Sel::Iif,
        "th" => match field(s)?.as_str() {
            "dport" => Sel::Dport,
            f => return Err(format!("unsupported expression th {f}")),
        },
        "tcp" | "udp" | "sctp" => {
            let p = match w.as_str() {
                "tcp" => 6,
                "udp" => 17,
                _ => 132,
            };
            match field(s)?.as_str() {
                "dport" => Sel::ProtoDport(p),
                f => return Err(format!("unsupported expression {w} {f}")),
            }
        }
        "ct" => match field(s)?.as_str() {
            "state" => Sel::CtState,
            "status" => Sel::CtStatus,
            f => return Err(format!("unsupported expression ct {f}")),
        },
        "fib" => {
            let dir = field(s)?;
            if s.peek().is_some_and(|t| t.is(".")) {
                return Err(format!("unsupported fib key {dir} . ..."));
            }
            let t = field(s)?;
            if t != "type" {
                return Err(format!("unsupported fib result {t}"));
            }
            match dir.as_str() {
                "daddr" => Sel::FibDaddrType,
                "saddr" => Sel::FibSaddrType,
                d => return Err(format!("unsupported fib key {d}")),
            }
        }
        "numgen" => {
            let kind = field(s)?;
            if kind != "random" && kind != "inc" {
                return Err(format!("unsupported numgen {kind}"));
            }
            if field(s)? != "mod" {
                return Err(format!("numgen {kind} without mod"));
            }
            let m = field(s)?;
            let modulus = parse_int(&m)
                .filter(|m| *m > 0)
                .ok_or(format!("bad modulus {m}"))?;
            // `numgen inc mod 1 offset N` is always N: kproxy writes its
            // affinity ids so. A counter with a larger modulus depends on
            // the packets before, which a trace cannot know.
            if kind == "inc" && modulus != 1 {
                return Err(format!(
                    "numgen inc mod {modulus}: only mod 1 (a constant) is supported"
                ));
            }
            let mut offset = 0;
            if s.peek().is_some_and(|t| t.is("offset")) {
                s.next();
                let o = field(s)?;
                offset = parse_int(&o).ok_or(format!("bad offset {o}"))?;
            }
            Sel::Numgen { modulus, offset }
        }
        other => return Err(format!("unsupported expression {other}")),
    })
}

pub(super) fn parse_concat(s: &mut Stream<'_>) -> Result<Vec<Sel>, String> {
    let mut v = vec![parse_sel(s)?];
    while s.peek().is_some_and(|t| t.is(".")) && starts_selector(s.peek_at(1)) {
        s.next();
        v.push(parse_sel(s)?);
    }
    if v.len() > 1 {
        // Inside a concatenation nft adds no protocol dependency, and
        // `nft list` prints a plain transport-header port load as `tcp
        // dport` even for UDP traffic (seen with nft 1.0.x listing kproxy's
        // `meta l4proto . th dport` keys): read it as `th dport`.
        for sel in &mut v {
            if matches!(sel, Sel::ProtoDport(_)) {
                *sel = Sel::Dport;
            }
        }
    }
    Ok(v)
}

pub(super) fn val_of(t: &Tok) -> Result<Val, String> {
    match t {
        Tok::Word(w) => Ok(parse_val(w)),
        Tok::Str(s) => Ok(Val::Sym(s.clone())),
        other => Err(format!("expected a value, found {}", other.text())),
    }
}

/// A concatenated literal: `v [. v]*`.
pub(super) fn parse_lit_concat(s: &mut Stream<'_>) -> Result<Vec<Val>, String> {
    let first = s.next().ok_or("missing value")?;
    let mut v = vec![val_of(first)?];
    while s.peek().is_some_and(|t| t.is(".")) {
        s.next();
        let t = s.next().ok_or("missing value after .")?;
        v.push(val_of(t)?);
    }
    Ok(v)
}

pub(super) fn parse_verdict(s: &mut Stream<'_>) -> Result<VerdictStmt, String> {
    let w = s.word()?;
    Ok(match w.as_str() {
        "accept" => VerdictStmt::Accept,
        "drop" => VerdictStmt::Drop,
        "return" => VerdictStmt::Return,
        "continue" => VerdictStmt::Continue,
        "reject" => VerdictStmt::Reject,
        "jump" => VerdictStmt::Jump(s.word()?),
        "goto" => VerdictStmt::Goto(s.word()?),
        other => return Err(format!("expected a verdict, found {other}")),
    })
}

/// Elements inside `{ ... }` (the opening brace already consumed).
pub(super) fn parse_elements(s: &mut Stream<'_>, map: bool) -> Result<Vec<SetElem>, String> {
    let mut out = Vec::new();
    loop {
        match s.peek() {
            Some(Tok::RBrace) => {
                s.next();
                return Ok(out);
            }
            Some(Tok::Comma) => {
                s.next();
                continue;
            }
            None => return Err("unterminated element list".into()),
            _ => {}
        }
        let start = s.pos;
        let key = parse_lit_concat(s)?;
        // Per-element options.
        loop {
            match s.peek() {
                Some(t) if t.is("comment") => {
                    s.next();
                    s.next();
                }
                Some(t) if t.is("timeout") || t.is("expires") => {
                    s.next();
                    s.next();
                }
                Some(t) if t.is("counter") => {
                    s.next();
                    if s.peek().is_some_and(|t| t.is("packets")) {
                        s.pos += 4;
                    }
                }
                _ => break,
            }
        }
        let value = if s.peek().is_some_and(|t| t.is(":")) {
            s.next();
            if matches!(s.peek(), Some(Tok::Word(w)) if is_verdict_word(w)) {
                Some(ElemValue::Verdict(parse_verdict(s)?))
            } else {
                Some(ElemValue::Data(parse_lit_concat(s)?))
            }
        } else {
            None
        };
        if map && value.is_none() {
            return Err("map element without a value".into());
        }
        let end = s.pos.min(s.toks.len());
        let text = join_tokens(&s.toks[start..end]);
        out.push(SetElem { text, key, value });
    }
}

pub(super) fn parse_map_ref(s: &mut Stream<'_>) -> Result<MapRef, String> {
    match s.next() {
        Some(Tok::Word(w)) if w.starts_with('@') => Ok(MapRef::Named(w[1..].to_string())),
        Some(Tok::LBrace) => Ok(MapRef::Anon(parse_elements(s, true)?)),
        other => Err(format!("expected @map or {{...}}, found {other:?}")),
    }
}

pub(super) fn parse_mark_value(s: &mut Stream<'_>) -> Result<MarkOp, String> {
    let num = |w: String| -> Result<u32, String> {
        parse_int(&w)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or(format!("bad mark {w}"))
    };
    if s.peek().is_some_and(|t| t.is("meta") || t.is("mark")) {
        if s.peek().is_some_and(|t| t.is("meta")) {
            s.next();
        }
        if s.word()? != "mark" {
            return Err("expected mark".into());
        }
        let op = s.word()?;
        let v = num(s.word()?)?;
        return Ok(match op.as_str() {
            "|" | "or" => MarkOp::Or(v),
            "^" | "xor" => MarkOp::Xor(v),
            "&" | "and" => MarkOp::And(v),
            other => return Err(format!("unsupported mark operator {other}")),
        });
    }
    Ok(MarkOp::Set(num(s.word()?)?))
}

/// Parse a rule's statements into `out`; on error, `out` holds the
/// statements before the one not understood.
pub(super) fn parse_rule_stmts(toks: &[(Tok, usize)], out: &mut Vec<Stmt>) -> Result<(), String> {
    let mut s = Stream { toks, pos: 0 };
    while !s.done() {
        let t = s.peek().ok_or("unexpected end")?;
        if starts_selector(Some(t)) {
            let lhs = parse_concat(&mut s)?;
            match s.peek() {
                Some(t) if t.is("set") => {
                    s.next();
                    if lhs != [Sel::Mark] {
                        return Err(format!("unsupported assignment to {lhs:?}"));
                    }
                    out.push(Stmt::MarkSet(parse_mark_value(&mut s)?));
                    continue;
                }
                Some(t) if t.is("vmap") => {
                    s.next();
                    out.push(Stmt::Vmap(lhs, parse_map_ref(&mut s)?));
                    continue;
                }
                _ => {}
            }
            let mut mask = None;
            if s.peek().is_some_and(|t| t.is("&") || t.is("and")) {
                s.next();
                let m = s.word()?;
                mask = Some(parse_int(&m).ok_or(format!("bad mask {m}"))?);
            }
            let mut negated = false;
            match s.peek() {
                Some(t) if t.is("!=") || t.is("ne") => {
                    negated = true;
                    s.next();
                }
                Some(t) if t.is("==") || t.is("eq") => {
                    s.next();
                }
                Some(Tok::Word(w))
                    if matches!(w.as_str(), "<" | ">" | "<=" | ">=" | "lt" | "gt") =>
                {
                    return Err(format!("unsupported comparison {w}"));
                }
                _ => {}
            }
            let rhs = match s.peek() {
                Some(Tok::Word(w)) if w.starts_with('@') => {
                    s.next();
                    Rhs::SetRef(w[1..].to_string())
                }
                Some(Tok::LBrace) => {
                    s.next();
                    let elems = parse_elements(&mut s, false)?;
                    Rhs::Lit(elems.into_iter().map(|e| e.key).collect())
                }
                _ => {
                    let mut alts = vec![parse_lit_concat(&mut s)?];
                    while matches!(s.peek(), Some(Tok::Comma)) {
                        s.next();
                        alts.push(parse_lit_concat(&mut s)?);
                    }
                    Rhs::Lit(alts)
                }
            };
            out.push(Stmt::Cmp {
                lhs,
                mask,
                negated,
                rhs,
            });
            continue;
        }
        let w = match t {
            Tok::Word(w) => w.clone(),
            other => return Err(format!("unexpected {}", other.text())),
        };
        match w.as_str() {
            "accept" | "drop" | "return" | "continue" | "jump" | "goto" => {
                out.push(Stmt::Verdict(parse_verdict(&mut s)?));
            }
            "reject" => {
                s.next();
                if s.peek().is_some_and(|t| t.is("with")) {
                    s.next();
                    let kind = s.word()?;
                    if kind != "tcp" && s.peek().is_some_and(|t| t.is("type")) {
                        s.next();
                    }
                    s.word()?;
                }
                out.push(Stmt::Verdict(VerdictStmt::Reject));
            }
            "counter" => {
                s.next();
                if s.peek().is_some_and(|t| t.is("packets")) {
                    s.pos += 4;
                }
            }
            "comment" => {
                s.next();
                s.next();
            }
            "log" => {
                s.next();
                while s.peek().is_some_and(|t| t.is("prefix") || t.is("level")) {
                    s.pos += 2;
                }
            }
            "masquerade" => {
                s.next();
                while matches!(s.peek(), Some(Tok::Word(w)) if matches!(w.as_str(), "fully-random" | "random" | "persistent"))
                    || matches!(s.peek(), Some(Tok::Comma))
                {
                    s.next();
                }
                out.push(Stmt::Masquerade);
            }
            "dnat" => {
                s.next();
                if s.peek().is_some_and(|t| t.is("ip") || t.is("ip6")) {
                    s.next();
                }
                if s.peek().is_some_and(|t| t.is("addr")) {
                    // `addr . port to ...`: the map yields address . port.
                    s.pos += 3;
                }
                if s.word()? != "to" {
                    return Err("dnat without to".into());
                }
                if starts_selector(s.peek()) {
                    let key = parse_concat(&mut s)?;
                    if s.word()? != "map" {
                        return Err("dnat to EXPR without map".into());
                    }
                    out.push(Stmt::Dnat(DnatTo::Map(key, parse_map_ref(&mut s)?)));
                } else {
                    let a = s.word()?;
                    let lit = parse_dnat_lit(&a).ok_or(format!("bad dnat target {a}"))?;
                    let lit = match lit {
                        (ip, None) if s.peek().is_some_and(|t| t.is(".")) => {
                            s.next();
                            let p = s.word()?;
                            (ip, Some(p.parse().map_err(|_| format!("bad port {p}"))?))
                        }
                        (ip, None) if s.peek().is_some_and(|t| t.is(":")) => {
                            s.next();
                            let p = s.word()?;
                            (ip, Some(p.parse().map_err(|_| format!("bad port {p}"))?))
                        }
                        other => other,
                    };
                    out.push(Stmt::Dnat(DnatTo::Lit(lit.0, lit.1)));
                }
                while matches!(s.peek(), Some(Tok::Word(w)) if matches!(w.as_str(), "fully-random" | "random" | "persistent"))
                {
                    s.next();
                }
            }
            "update" | "add" => {
                // `update @set { ip saddr }`: remembers the client for
                // affinity; no effect on the first packet.
                s.next();
                s.next();
                if !matches!(s.next(), Some(Tok::LBrace)) {
                    return Err(format!("{w} @set without {{ ... }}"));
                }
                let mut depth = 1;
                while depth > 0 {
                    match s.next() {
                        Some(Tok::LBrace) => depth += 1,
                        Some(Tok::RBrace) => depth -= 1,
                        None => return Err("unterminated set update".into()),
                        _ => {}
                    }
                }
            }
            other => return Err(format!("unsupported statement {other:?}")),
        }
    }
    Ok(())
}

pub(super) fn parse_dnat_lit(a: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return Some((sa.ip(), Some(sa.port())));
    }
    if let Ok(ip) = a.parse::<IpAddr>() {
        return Some((ip, None));
    }
    if let Some((ip, port)) = a.rsplit_once(':')
        && let (Ok(ip), Ok(port)) = (ip.parse::<std::net::Ipv4Addr>(), port.parse::<u16>())
    {
        return Some((IpAddr::V4(ip), Some(port)));
    }
    None
}

pub(super) fn join_tokens(toks: &[(Tok, usize)]) -> String {
    let mut out = String::new();
    for (t, _) in toks {
        let s = t.text();
        if !out.is_empty() && !matches!(t, Tok::Comma) {
            out.push(' ');
        }
        out.push_str(&s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::super::lex::tokenize;
    use super::*;

    fn stmts(rule: &str) -> Result<Vec<Stmt>, String> {
        let mut toks = tokenize(rule).expect("tokenizes");
        toks.retain(|t| t.0 != Tok::Newline);
        let mut out = Vec::new();
        parse_rule_stmts(&toks, &mut out).map(|()| out)
    }

    #[test]
    fn matches_and_verdicts() {
        let got = stmts("ip daddr 10.96.0.1 tcp dport 80 jump svc-x").expect("parses");
        assert_eq!(
            got,
            [
                Stmt::Cmp {
                    lhs: vec![Sel::Daddr],
                    mask: None,
                    negated: false,
                    rhs: Rhs::Lit(vec![vec![Val::Net("10.96.0.1/32".parse().expect("net"))]]),
                },
                Stmt::Cmp {
                    lhs: vec![Sel::ProtoDport(6)],
                    mask: None,
                    negated: false,
                    rhs: Rhs::Lit(vec![vec![Val::Int(80)]]),
                },
                Stmt::Verdict(VerdictStmt::Jump("svc-x".into())),
            ]
        );
        let got = stmts("meta mark set meta mark | 0x4000 masquerade").expect("parses");
        assert_eq!(got, [Stmt::MarkSet(MarkOp::Or(0x4000)), Stmt::Masquerade]);
    }

    #[test]
    fn maps_sets_and_dnat() {
        let got = stmts("ip daddr . meta l4proto vmap @services").expect("parses");
        assert_eq!(
            got,
            [Stmt::Vmap(
                vec![Sel::Daddr, Sel::L4proto],
                MapRef::Named("services".into())
            )]
        );
        let got = stmts("dnat to 10.0.0.5:8080").expect("parses");
        assert_eq!(
            got,
            [Stmt::Dnat(DnatTo::Lit(
                "10.0.0.5".parse().expect("ip"),
                Some(8080)
            ))]
        );
        let got = stmts("ip saddr != @local-ips drop").expect("parses");
        assert!(matches!(
            &got[0],
            Stmt::Cmp { negated: true, rhs: Rhs::SetRef(s), .. } if s == "local-ips"
        ));
        assert_eq!(
            parse_dnat_lit("[fd00::5]:53"),
            Some(("fd00::5".parse().expect("ip"), Some(53)))
        );
        assert_eq!(parse_dnat_lit("nonsense"), None);
    }

    #[test]
    fn unknown_statements_keep_what_came_before() {
        let mut toks = tokenize("ip daddr 10.0.0.1 frobnicate").expect("tokenizes");
        toks.retain(|t| t.0 != Tok::Newline);
        let mut out = Vec::new();
        let err = parse_rule_stmts(&toks, &mut out).expect_err("unknown statement");
        assert!(err.contains("frobnicate"), "{err}");
        assert_eq!(out.len(), 1);
        assert_eq!(join_tokens(&toks), "ip daddr 10.0.0.1 frobnicate");
        assert!(is_verdict_word("goto") && !is_verdict_word("dnat"));
    }
}
