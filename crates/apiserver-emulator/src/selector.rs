//! Label and field selectors, parsed from the query strings clients send.
//!
//! Label selectors follow `k8s.io/apimachinery/pkg/labels`: `key`, `!key`,
//! `key=value`, `key==value`, `key!=value`, `key in (a,b)`,
//! `key notin (a,b)`, joined with commas. As in Kubernetes, `!=` and
//! `notin` also match objects that lack the key.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector (all requirements must hold).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// A parsed field selector; only `metadata.name` and `metadata.namespace`
/// are supported, as for most built-in kinds in the real API server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

fn split_top_level(s: &str) -> Vec<&str> {
    // Commas inside `in (a,b)` sets do not separate requirements.
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("label selector {whole:?}: expected a parenthesised set"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl LabelSelector {
    /// Parses a label selector; the empty string selects everything.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(LabelSelector { requirements });
        }
        for part in split_top_level(s) {
            let part = part.trim();
            if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                if !valid_key(key) {
                    return Err(format!("label selector {part:?}: invalid key {key:?}"));
                }
                requirements.push(Requirement::NotExists(key.to_string()));
                continue;
            }
            let key_end = part
                .find(|c: char| c.is_whitespace() || matches!(c, '=' | '!' | '('))
                .unwrap_or(part.len());
            let key = &part[..key_end];
            if !valid_key(key) {
                return Err(format!("label selector {part:?}: invalid key {key:?}"));
            }
            let rest = part[key_end..].trim_start();
            let req = if rest.is_empty() {
                Requirement::Exists(key.to_string())
            } else if let Some(v) = rest.strip_prefix("!=") {
                Requirement::NotEquals(key.to_string(), v.trim().to_string())
            } else if let Some(v) = rest.strip_prefix("==") {
                Requirement::Equals(key.to_string(), v.trim().to_string())
            } else if let Some(v) = rest.strip_prefix('=') {
                Requirement::Equals(key.to_string(), v.trim().to_string())
            } else if let Some(v) = rest.strip_prefix("notin") {
                Requirement::NotIn(key.to_string(), parse_set(v, part)?)
            } else if let Some(v) = rest.strip_prefix("in") {
                Requirement::In(key.to_string(), parse_set(v, part)?)
            } else {
                return Err(format!("label selector {part:?}: unknown operator"));
            };
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
        })
    }
}

impl FieldSelector {
    /// Parses a field selector; the empty string selects everything.
    pub fn parse(s: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(FieldSelector { terms });
        }
        for part in s.split(',') {
            let part = part.trim();
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!("field selector {part:?}: expected field=value"));
            };
            let field = field.trim();
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!(
                    "field selector {part:?}: field label not supported: {field}"
                ));
            }
            terms.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector { terms })
    }

    /// Both selectors' terms.
    pub fn and(mut self, other: FieldSelector) -> FieldSelector {
        self.terms.extend(other.terms);
        self
    }

    /// Whether an object's fields satisfy every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|(field, equal, value)| {
            let pointer = match field.as_str() {
                "metadata.name" => "/metadata/name",
                _ => "/metadata/namespace",
            };
            let actual = object
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("");
            (actual == value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn kube_proxy_selector() {
        let s = LabelSelector::parse(
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
        )
        .unwrap();
        assert!(s.matches(&obj(json!({"app": "x"}))));
        assert!(s.matches(&json!({"metadata": {"name": "a"}})));
        assert!(!s.matches(&obj(json!({"service.kubernetes.io/headless": ""}))));
        assert!(!s.matches(&obj(
            json!({"service.kubernetes.io/service-proxy-name": "other"})
        )));
    }

    #[test]
    fn equality_and_sets() {
        let l = obj(json!({"a": "1", "b": "2"}));
        assert!(LabelSelector::parse("a=1").unwrap().matches(&l));
        assert!(LabelSelector::parse("a==1,b").unwrap().matches(&l));
        assert!(!LabelSelector::parse("a!=1").unwrap().matches(&l));
        assert!(LabelSelector::parse("c!=1").unwrap().matches(&l));
        assert!(LabelSelector::parse("a in (3, 1)").unwrap().matches(&l));
        assert!(!LabelSelector::parse("a notin (1,3),b").unwrap().matches(&l));
        assert!(LabelSelector::parse("c notin (1)").unwrap().matches(&l));
        assert!(LabelSelector::parse("a in 1").is_err());
        assert!(LabelSelector::parse("=1").is_err());
    }

    #[test]
    fn fields() {
        let o = obj(json!({}));
        assert!(FieldSelector::parse("metadata.name=a").unwrap().matches(&o));
        assert!(!FieldSelector::parse("metadata.name=b").unwrap().matches(&o));
        assert!(
            FieldSelector::parse("metadata.namespace==ns,metadata.name!=b")
                .unwrap()
                .matches(&o)
        );
        assert!(FieldSelector::parse("spec.nodeName=x").is_err());
    }
}
