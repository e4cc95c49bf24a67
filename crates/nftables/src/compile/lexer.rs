//! Rule text split into tokens.

/// Split a rule into tokens: whitespace-separated, with braces and
/// commas on their own and quoted strings kept whole.
pub(super) fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' => i += 1,
            b'{' | b'}' | b',' => {
                out.push(&text[i..i + 1]);
                i += 1;
            }
            b'"' => {
                let end = text[i + 1..].find('"').map_or(b.len(), |e| i + 1 + e + 1);
                out.push(&text[i..end]);
                i = end;
            }
            _ => {
                let s = i;
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'{' | b'}' | b',') {
                    i += 1;
                }
                out.push(&text[s..i]);
            }
        }
    }
    out
}
