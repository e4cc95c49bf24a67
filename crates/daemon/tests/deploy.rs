//! Every manifest in deploy/ parses into its Kubernetes type with no field
//! lost (so a misspelt field fails), the ConfigMap's configuration is a
//! valid KubeProxyConfiguration, and the DaemonSet and RBAC say what the
//! design requires.

// Test helpers panic on unexpected I/O errors: that is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kproxy_graph::{KubeProxyConfiguration, ProxyConfig};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Drop nulls and empty objects/arrays, which serialisation may add or
/// omit without meaning anything.
fn normalise(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalise(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Deserialise into `T` and back; any field `T` does not know is lost and
/// the comparison fails, naming the document.
fn roundtrip<T>(name: &str, doc: &Value) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{name}: does not parse: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        normalise(&back),
        normalise(doc),
        "{name}: some field is unknown to the Kubernetes type (misspelt?)"
    );
    typed
}

fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, d) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let v: Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: document {}: {e}", f.display(), i + 1));
            if !v.is_null() {
                out.push((format!("{} #{}", f.display(), i + 1), v));
            }
        }
    }
    out
}

#[test]
fn manifests_parse_into_their_types() {
    let mut kinds = Vec::new();
    for (name, doc) in documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "DaemonSet" => check_daemonset(&roundtrip::<DaemonSet>(&name, &doc)),
            "ServiceAccount" => {
                roundtrip::<ServiceAccount>(&name, &doc);
            }
            "ClusterRole" => check_cluster_role(&roundtrip::<ClusterRole>(&name, &doc)),
            "ClusterRoleBinding" => {
                let b = roundtrip::<ClusterRoleBinding>(&name, &doc);
                assert_eq!(b.role_ref.name, "kproxy");
            }
            "ConfigMap" => check_configmap(&roundtrip::<ConfigMap>(&name, &doc)),
            other => panic!("{name}: unexpected kind {other:?}"),
        }
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "ServiceAccount"
        ]
    );
}

fn check_daemonset(ds: &DaemonSet) {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(spec.host_network, Some(true));
    assert_eq!(spec.service_account_name.as_deref(), Some("kproxy"));
    let c = &spec.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_ne!(sc.privileged, Some(true), "capabilities, not privileged");
    let caps = sc.capabilities.as_ref().unwrap();
    let mut add = caps.add.clone().unwrap_or_default();
    add.sort();
    assert_eq!(add, ["NET_ADMIN", "NET_RAW"]);
    let mounts: Vec<&str> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounts.contains(&"/run/xtables.lock"), "{mounts:?}");
    assert!(mounts.contains(&"/lib/modules"), "{mounts:?}");
    // The command must be one kproxy accepts.
    let cmd = c.command.as_ref().unwrap();
    assert_eq!(cmd[1], "run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kproxy"))
        .args(&cmd[1..])
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_cluster_role(r: &ClusterRole) {
    let mut grants = Vec::new();
    for rule in r.rules.iter().flatten() {
        for g in rule.api_groups.iter().flatten() {
            for res in rule.resources.iter().flatten() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                grants.push(format!("{g}/{res}:{}", verbs.join(",")));
            }
        }
    }
    grants.sort();
    assert_eq!(
        grants,
        [
            "/nodes:list,watch",
            "/services:list,watch",
            "discovery.k8s.io/endpointslices:list,watch"
        ]
    );
}

fn check_configmap(cm: &ConfigMap) {
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get("config.conf"))
        .expect("config.conf");
    let cfg =
        KubeProxyConfiguration::from_yaml(text).unwrap_or_else(|e| panic!("config.conf: {e}"));
    let mut pc = ProxyConfig::default();
    cfg.apply_to(&mut pc)
        .unwrap_or_else(|e| panic!("config.conf: {e}"));
    assert!(!pc.cluster_cidrs.is_empty());
}

#[test]
fn a_misspelt_field_is_caught() {
    let doc: Value = serde_yaml_ng::from_str(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x, namespce: kube-system}\n",
    )
    .unwrap();
    let r = std::panic::catch_unwind(|| roundtrip::<ServiceAccount>("typo", &doc));
    assert!(r.is_err(), "namespce must not pass");
}
