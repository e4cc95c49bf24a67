//! Every manifest in deploy/ parses into its Kubernetes type with no field
//! lost (so a misspelt field fails), the ConfigMap's configuration is a
//! valid KubeProxyConfiguration, and the DaemonSet and RBAC say what the
//! design requires.

#![allow(
    clippy::disallowed_methods,
    reason = "test code: starts the binary under test, `ip netns` and shells itself"
)]
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
    // The runtime's default seccomp filter (not Unconfined).
    let seccomp = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"));
    assert_eq!(spec.service_account_name.as_deref(), Some("kproxy"));
    let c = &spec.containers[0];
    // A pinned release: the workspace version, never :latest.
    let image = c.image.as_deref().unwrap();
    assert_eq!(
        image.rsplit_once(':').map(|(_, tag)| tag),
        Some(format!("v{}", env!("CARGO_PKG_VERSION")).as_str()),
        "{image}"
    );
    if let Some(p) = c
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
    {
        assert_eq!(
            p.type_, "RuntimeDefault",
            "the container must not loosen it"
        );
    }
    // The API server is reached through the ConfigMap's kubeconfig.
    let config_mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "config")
        .expect("the ConfigMap is mounted");
    assert_eq!(config_mount.mount_path, CONFIG_DIR);
    assert!(
        c.env.iter().flatten().all(|e| e.name != "KUBECONFIG"),
        "the kubeconfig comes from clientConnection"
    );
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
    kproxy_testkit::run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_kproxy"))
            .args(&cmd[1..])
            .arg("--help"),
        format_args!("{cmd:?}"),
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
            "discovery.k8s.io/endpointslices:list,watch",
            "networking.k8s.io/servicecidrs:list,watch"
        ]
    );
}

/// Where the DaemonSet mounts the ConfigMap.
const CONFIG_DIR: &str = "/var/lib/kproxy";
/// The service-account files every pod gets.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn check_configmap(cm: &ConfigMap) {
    let data = cm.data.as_ref().expect("data");
    let text = data.get("config.conf").expect("config.conf");
    let cfg =
        KubeProxyConfiguration::from_yaml(text).unwrap_or_else(|e| panic!("config.conf: {e}"));
    let mut pc = ProxyConfig::default();
    cfg.apply_to(&mut pc)
        .unwrap_or_else(|e| panic!("config.conf: {e}"));
    assert!(!pc.cluster_cidrs.is_empty());
    // clientConnection is honoured, and names the ConfigMap's kubeconfig
    // as mounted.
    let client = cfg
        .client_connection
        .resolve()
        .unwrap_or_else(|e| panic!("config.conf: {e}"));
    let kubeconfig_path = client.kubeconfig.expect("clientConnection.kubeconfig");
    let key = kubeconfig_path
        .strip_prefix(CONFIG_DIR)
        .unwrap_or_else(|_| panic!("{} is not in {CONFIG_DIR}", kubeconfig_path.display()));
    let kubeconfig = data
        .get(key.to_str().unwrap())
        .unwrap_or_else(|| panic!("the ConfigMap has no {}", key.display()));
    // The control-plane endpoint with the service account's credentials,
    // as kubeadm's kube-proxy: never the `kubernetes` Service.
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig)
        .unwrap_or_else(|e| panic!("kubeconfig.conf: {e}"));
    let cluster = kc.clusters[0].cluster.as_ref().unwrap();
    let server = cluster.server.as_deref().unwrap();
    assert!(server.starts_with("https://"), "{server}");
    for not_a_clusterip in ["kubernetes.default", "10.96.0.1", "172.30.0.1"] {
        assert!(!server.contains(not_a_clusterip), "{server}");
    }
    assert_eq!(
        cluster.certificate_authority.as_deref(),
        Some(format!("{SA_DIR}/ca.crt").as_str())
    );
    let user = kc.auth_infos[0].auth_info.as_ref().unwrap();
    assert_eq!(
        user.token_file.as_deref(),
        Some(format!("{SA_DIR}/token").as_str())
    );
}

#[test]
fn configmap_kubeconfig_is_one_kproxy_loads() {
    // The shipped kubeconfig, with files that exist, is accepted by the
    // client kproxy builds from it.
    let (_, doc) = documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "ConfigMap")
        .unwrap();
    let text = doc["data"]["kubeconfig.conf"].as_str().unwrap();
    let dir = std::env::temp_dir().join(format!("kproxy-deploy-kc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.crt");
    let token = dir.join("token");
    // Any PEM certificate does for loading; the emulator has none, so a
    // throwaway self-signed one is written.
    std::fs::write(&ca, TEST_CA).unwrap();
    std::fs::write(&token, "t0ken").unwrap();
    let text = text
        .replace(&format!("{SA_DIR}/ca.crt"), ca.to_str().unwrap())
        .replace(&format!("{SA_DIR}/token"), token.to_str().unwrap());
    let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = rt
        .block_on(kube::Config::from_custom_kubeconfig(
            kc,
            &kube::config::KubeConfigOptions::default(),
        ))
        .unwrap();
    assert!(config.cluster_url.to_string().starts_with("https://"));
    std::fs::remove_dir_all(&dir).unwrap();
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

/// A self-signed certificate (no key kept) standing in for the cluster CA.
const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBiDCCAS+gAwIBAgIUNK798q70L2NGfyO0nIWuRUZrji8wCgYIKoZIzj0EAwIw\n\
GTEXMBUGA1UEAwwOa3Byb3h5LXRlc3QtY2EwIBcNMjYxMjA3MDAyMTM5WhgPMjEy\n\
NjExMTMwMDIxMzlaMBkxFzAVBgNVBAMMDmtwcm94eS10ZXN0LWNhMFkwEwYHKoZI\n\
zj0CAQYIKoZIzj0DAQcDQgAEnpIrUiJTw23lmWrZO/+jinBJy9h/vqlTS/peE+vG\n\
QMxF2wYSLPwPgciQsgEVA+7cARFj6hWzEGQP2GTX5ScbSKNTMFEwHQYDVR0OBBYE\n\
FPlW5xQOFP2idx49ix/DI8njuLdGMB8GA1UdIwQYMBaAFPlW5xQOFP2idx49ix/D\n\
I8njuLdGMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgTPTuTCiH\n\
aSscUQRePDqP9IfKwzqERnCuB2kCh423v54CIDhNjH+s4l/DYgc+CHv39xmiLrWS\n\
pyrZ1Jzi5SGoQMGr\n\
-----END CERTIFICATE-----\n\
";
