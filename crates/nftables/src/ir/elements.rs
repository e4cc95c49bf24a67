//! Elements in their rendered form, split back into key and [`Element`].

use super::Element;

/// An element as written inside `add element ... { }` (`key [comment "c"]
/// [: value]`) split back into key and [`Element`]. Keys never contain
/// ` comment "` or ` : `, and sanitised comments never contain a quote.
pub fn parse_rendered_element(e: &str) -> (String, Element) {
    // The first ` comment "` or ` : `, in one pass over the spaces.
    let b = e.as_bytes();
    let key_end = (0..b.len())
        .find(|&i| {
            b[i] == b' ' && {
                let r = &b[i + 1..];
                r.starts_with(b": ") || r.starts_with(b"comment \"")
            }
        })
        .unwrap_or(e.len());
    let key = e[..key_end].to_string();
    let mut rest = &e[key_end..];
    let mut comment = None;
    if let Some(r) = rest.strip_prefix(" comment \"") {
        let end = r.find('"').unwrap_or(r.len());
        comment = Some(r[..end].to_string());
        rest = r.get(end + 1..).unwrap_or("");
    }
    let value = rest.strip_prefix(" : ").map(str::to_string);
    (key, Element { value, comment })
}
