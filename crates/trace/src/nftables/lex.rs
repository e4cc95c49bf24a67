//! The lexer: `nft` text to tokens with their line numbers, and a
//! cursor over one statement's tokens.

use crate::TraceError;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Word(String),
    Str(String),
    LBrace,
    RBrace,
    Comma,
    Semi,
    Newline,
}

impl Tok {
    pub(super) fn text(&self) -> String {
        match self {
            Tok::Word(w) => w.clone(),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::LBrace => "{".into(),
            Tok::RBrace => "}".into(),
            Tok::Comma => ",".into(),
            Tok::Semi => ";".into(),
            Tok::Newline => "\n".into(),
        }
    }

    pub(super) fn is(&self, w: &str) -> bool {
        matches!(self, Tok::Word(x) if x == w)
    }
}

pub(super) fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, TraceError> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let ln = idx + 1;
        let mut chars = line.chars().peekable();
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut Vec<(Tok, usize)>| {
            if !word.is_empty() {
                out.push((Tok::Word(std::mem::take(word)), ln));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '#' if word.is_empty() => break,
                '"' => {
                    flush(&mut word, &mut out);
                    let mut s = String::new();
                    loop {
                        match chars.next() {
                            Some('\\') => {
                                if let Some(e) = chars.next() {
                                    s.push(e);
                                }
                            }
                            Some('"') => break,
                            Some(o) => s.push(o),
                            None => {
                                return Err(TraceError::Parse {
                                    line: ln,
                                    text: line.to_string(),
                                    reason: "unterminated string".into(),
                                });
                            }
                        }
                    }
                    out.push((Tok::Str(s), ln));
                }
                '{' | '}' | ',' | ';' => {
                    flush(&mut word, &mut out);
                    out.push((
                        match c {
                            '{' => Tok::LBrace,
                            '}' => Tok::RBrace,
                            ',' => Tok::Comma,
                            _ => Tok::Semi,
                        },
                        ln,
                    ));
                }
                c if c.is_whitespace() => flush(&mut word, &mut out),
                c => word.push(c),
            }
        }
        flush(&mut word, &mut out);
        out.push((Tok::Newline, ln));
    }
    Ok(out)
}

/// A cursor over one statement's tokens.
pub(super) struct Stream<'a> {
    pub(super) toks: &'a [(Tok, usize)],
    pub(super) pos: usize,
}

impl<'a> Stream<'a> {
    pub(super) fn peek(&self) -> Option<&'a Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    pub(super) fn peek_at(&self, k: usize) -> Option<&'a Tok> {
        self.toks.get(self.pos + k).map(|t| &t.0)
    }
    pub(super) fn next(&mut self) -> Option<&'a Tok> {
        let t = self.toks.get(self.pos).map(|t| &t.0);
        self.pos += 1;
        t
    }
    pub(super) fn word(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w.clone()),
            Some(Tok::Str(s)) => Ok(s.clone()),
            other => Err(format!("expected a word, found {other:?}")),
        }
    }
    pub(super) fn done(&self) -> bool {
        self.pos >= self.toks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<Tok> {
        tokenize(text)
            .expect("tokenizes")
            .into_iter()
            .map(|t| t.0)
            .collect()
    }

    #[test]
    fn words_punctuation_and_line_ends() {
        let w = |s: &str| Tok::Word(s.into());
        assert_eq!(
            kinds("add rule ip t c { a, b };"),
            [
                w("add"),
                w("rule"),
                w("ip"),
                w("t"),
                w("c"),
                Tok::LBrace,
                w("a"),
                Tok::Comma,
                w("b"),
                Tok::RBrace,
                Tok::Semi,
                Tok::Newline
            ]
        );
        let lines: Vec<usize> = tokenize("a\n\nb")
            .expect("ok")
            .iter()
            .map(|t| t.1)
            .collect();
        assert_eq!(lines, [1, 1, 2, 3, 3]);
    }

    #[test]
    fn strings_and_comments() {
        assert_eq!(
            kinds(r#"comment "a \"b\" # c" # the rest"#),
            [
                Tok::Word("comment".into()),
                Tok::Str(r#"a "b" # c"#.into()),
                Tok::Newline
            ]
        );
        // `#` inside a word is part of it (no comment starts there).
        assert_eq!(kinds("a#b")[0], Tok::Word("a#b".into()));
        let err = tokenize("ok\nx \"open").expect_err("unterminated");
        assert!(
            matches!(&err, TraceError::Parse { line: 2, reason, .. } if reason == "unterminated string"),
            "{err:?}"
        );
    }

    #[test]
    fn token_text_and_stream_cursor() {
        assert_eq!(Tok::Str("x y".into()).text(), "\"x y\"");
        assert!(Tok::Word("jump".into()).is("jump") && !Tok::Semi.is(";"));
        let toks = tokenize("ip daddr 10.0.0.1").expect("ok");
        let mut s = Stream {
            toks: &toks[..3],
            pos: 0,
        };
        assert_eq!(s.peek_at(1), Some(&Tok::Word("daddr".into())));
        assert_eq!(s.word().as_deref(), Ok("ip"));
        assert_eq!(s.next(), Some(&Tok::Word("daddr".into())));
        assert!(!s.done());
        assert_eq!(s.word().as_deref(), Ok("10.0.0.1"));
        assert!(s.done() && s.word().is_err());
    }

    use kproxy_testkit::proptest::prelude::*;

    fn token() -> impl Strategy<Value = Tok> {
        prop_oneof![
            "[a-z0-9@][a-z0-9._:/@*-]{0,11}".prop_map(Tok::Word),
            "[ a-zA-Z0-9._:/#,;{}-]{0,12}".prop_map(Tok::Str),
            Just(Tok::LBrace),
            Just(Tok::RBrace),
            Just(Tok::Comma),
            Just(Tok::Semi),
        ]
    }

    proptest! {
        /// Tokens written out with their text, one line, come back the
        /// same, each on line 1, followed by the line's end.
        #[test]
        fn tokens_round_trip_through_their_text(toks in prop::collection::vec(token(), 1..24)) {
            let text: Vec<String> = toks.iter().map(Tok::text).collect();
            let got = tokenize(&text.join(" ")).expect("tokenizes");
            let mut want: Vec<(Tok, usize)> = toks.into_iter().map(|t| (t, 1)).collect();
            want.push((Tok::Newline, 1));
            prop_assert_eq!(got, want);
        }
    }
}
