//! Lines and words of `iptables-save` output: the tokenizer
//! ([`tokenize`], libxtables' quoting) and the joiner of values quoted
//! across lines ([`save_lines`], [`SaveLineJoiner`]).

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
