//! Objects from Kubernetes YAML or JSON files (`kubectl get -o yaml`
//! output, multi-document files, `kind: List`), for the command-line
//! emulator.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{EmulatorError, Kind};

/// The objects of the kinds the emulator serves in `text` (other kinds are
/// returned by name in the second list, so the caller can say they were
/// skipped). `source` names the text in errors.
pub fn parse_objects(text: &str, source: &str) -> Result<(Vec<Value>, Vec<String>), EmulatorError> {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let yaml = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).map_err(|e| {
            EmulatorError::InvalidObject(format!("{source}: document {}: {e}", i + 1))
        })?;
        let value = serde_json::to_value(yaml).map_err(|e| {
            EmulatorError::InvalidObject(format!("{source}: document {}: {e}", i + 1))
        })?;
        collect(value, &mut objects, &mut skipped);
    }
    Ok((objects, skipped))
}

fn collect(value: Value, objects: &mut Vec<Value>, skipped: &mut Vec<String>) {
    if value.is_null() {
        return; // an empty document
    }
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
        if let Some(Value::Array(items)) = value.get("items").cloned() {
            for item in items {
                collect(item, objects, skipped);
            }
        }
        return;
    }
    if Kind::from_kind(kind).is_some() {
        objects.push(value);
    } else {
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>");
        skipped.push(format!("{kind} {name}"));
    }
}

fn read_error(path: &Path, source: std::io::Error) -> EmulatorError {
    EmulatorError::Read {
        path: path.display().to_string(),
        source,
    }
}

/// Reads every file: (objects, skipped objects).
pub fn load_files(paths: &[PathBuf]) -> Result<(Vec<Value>, Vec<String>), EmulatorError> {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    for file in kproxy_graph::input_files(paths)? {
        let text = std::fs::read_to_string(&file).map_err(|source| read_error(&file, source))?;
        let (o, s) = parse_objects(&text, &file.display().to_string())?;
        objects.extend(o);
        skipped.extend(s);
    }
    Ok((objects, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_lists_and_other_kinds() {
        let text = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: default}
- apiVersion: v1
  kind: Pod
  metadata: {name: p}
---
---
apiVersion: v1
kind: Node
metadata: {name: n}
";
        let (objects, skipped) = parse_objects(text, "t.yaml").unwrap();
        let names: Vec<&str> = objects
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "n"]);
        assert_eq!(skipped, ["Pod p"]);
        let err = parse_objects("a: [", "bad.yaml").unwrap_err();
        assert!(err.to_string().contains("bad.yaml: document 1"), "{err}");
    }
}
