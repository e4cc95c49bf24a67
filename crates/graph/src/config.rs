//! Proxy configuration: the validated [`ProxyConfig`] the graph is built
//! with, and [`KubeProxyConfiguration`], kube-proxy's configuration file
//! (`kubeproxy.config.k8s.io/v1alpha1`), which kproxy reads so a node can
//! switch without rewriting its configuration.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::model::IpFamily;

/// Which kind of rules the graph is built for. kube-proxy's two modes differ
/// in a few defaults (docs/backends/nftables.md, "Differences"), which the
/// graph resolves once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyMode {
    /// iptables-legacy or iptables-nft.
    #[default]
    Iptables,
    /// Native nftables.
    Nftables,
}

/// kube-proxy's `detectLocalMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DetectLocalMode {
    /// Pods are the sources inside `clusterCIDR` (the default).
    #[default]
    ClusterCidr,
    /// Pods are the sources inside the Node's `spec.podCIDRs`.
    NodeCidr,
    /// Pod traffic arrives on `detectLocal.bridgeInterface`.
    BridgeInterface,
    /// Pod traffic arrives on interfaces named `detectLocal.interfaceNamePrefix*`.
    InterfaceNamePrefix,
}

/// One entry of `nodePortAddresses`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodePortAddress {
    /// The node's primary address of each family.
    Primary,
    /// Node addresses inside this CIDR.
    Cidr(IpNet),
}

/// The configuration a service graph is built with. Built from flags and a
/// [`KubeProxyConfiguration`]; every field is already validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyConfig {
    /// The node whose graph this is (`hostnameOverride` or the host name).
    pub node_name: String,
    /// Which rule flavour the graph is for (resolves mode-specific defaults).
    pub mode: ProxyMode,
    /// The families to program.
    pub families: Vec<IpFamily>,
    /// `clusterCIDR`(s), at most one per family is used.
    pub cluster_cidrs: Vec<IpNet>,
    /// `detectLocalMode`.
    pub detect_local_mode: DetectLocalMode,
    /// `detectLocal.bridgeInterface`.
    pub bridge_interface: Option<String>,
    /// `detectLocal.interfaceNamePrefix`.
    pub interface_name_prefix: Option<String>,
    /// `masqueradeAll`.
    pub masquerade_all: bool,
    /// `masqueradeBit` (0..=31).
    pub masquerade_bit: u8,
    /// `nodePortAddresses`; empty means the mode's default (all local
    /// addresses for iptables, `primary` for nftables).
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// `iptables.localhostNodePorts`.
    pub localhost_nodeports: bool,
    /// Service CIDRs (nftables drops traffic to unallocated ClusterIPs in
    /// them).
    pub service_cidrs: Vec<IpNet>,
    /// The `service.kubernetes.io/service-proxy-name` value kproxy answers
    /// to; Services labelled with any other value are skipped.
    pub proxy_name: Option<String>,
    /// Extra node addresses (the daemon adds the host's interface addresses).
    pub extra_node_ips: Vec<IpAddr>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            node_name: String::new(),
            mode: ProxyMode::Iptables,
            families: IpFamily::ALL.to_vec(),
            cluster_cidrs: Vec::new(),
            detect_local_mode: DetectLocalMode::ClusterCidr,
            bridge_interface: None,
            interface_name_prefix: None,
            masquerade_all: false,
            masquerade_bit: 14,
            nodeport_addresses: Vec::new(),
            localhost_nodeports: true,
            service_cidrs: Vec::new(),
            proxy_name: None,
            extra_node_ips: Vec::new(),
        }
    }
}

impl ProxyConfig {
    /// Whether IPv4 NodePorts are open on 127.0.0.1 (and so route_localnet
    /// and KUBE-FIREWALL's localnet rule are needed): the iptables mode,
    /// `iptables.localhostNodePorts` on, IPv4 among the families, and an
    /// IPv4 `nodePortAddresses` entry overlapping 127.0.0.0/8 or no IPv4
    /// entry at all (kube-proxy's `NodePortAddresses.ContainsIPv4Loopback`).
    pub fn ipv4_localhost_nodeports(&self) -> bool {
        if self.mode != ProxyMode::Iptables
            || !self.localhost_nodeports
            || !self.families.contains(&IpFamily::V4)
        {
            return false;
        }
        let loopback = IpFamily::V4.loopback_net();
        let v4: Vec<&IpNet> = self
            .nodeport_addresses
            .iter()
            .filter_map(|e| match e {
                NodePortAddress::Cidr(n) if IpFamily::of_net(n) == IpFamily::V4 => Some(n),
                _ => None,
            })
            .collect();
        let primary = self.nodeport_addresses.contains(&NodePortAddress::Primary);
        (v4.is_empty() && !primary)
            || v4
                .iter()
                .any(|n| loopback.contains(&n.network()) || n.contains(&loopback.network()))
    }

    /// `1 << masquerade_bit`.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << (self.masquerade_bit.min(31))
    }
}

/// A configuration error, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid YAML / does not match the schema (unknown
    /// fields included); the message names the field.
    #[error("reading KubeProxyConfiguration: {0}")]
    Parse(String),
    /// A field has a value kproxy cannot use.
    #[error("KubeProxyConfiguration field {field}: {reason}")]
    Invalid {
        /// The field, as written in the file (`iptables.masqueradeBit`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A Go `metav1.Duration` (`30s`, `1m0s`, `1h30m`, `500ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_go_duration(&s)
            .map(GoDuration)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {s:?}")))
    }
}

/// Parse a Go duration string (`1h2m3.5s`, `250ms`, `0`).
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
    }
    if !total.is_finite() || total < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

/// kube-proxy's `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`).
/// Unknown fields are an error that names them; known fields kproxy has no
/// use for are accepted and ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct KubeProxyConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub mode: Option<String>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub detect_local_mode: Option<String>,
    #[serde(default)]
    pub detect_local: DetectLocalConfiguration,
    #[serde(default)]
    pub node_port_addresses: Vec<String>,
    #[serde(default)]
    pub iptables: IptablesConfiguration,
    #[serde(default)]
    pub nftables: NftablesConfiguration,
    #[serde(default)]
    pub ipvs: serde_json::Value,
    #[serde(default)]
    pub winkernel: serde_json::Value,
    #[serde(default)]
    pub conntrack: ConntrackConfiguration,
    #[serde(default)]
    pub linux: serde_json::Value,
    #[serde(default)]
    pub windows: serde_json::Value,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
    pub config_sync_period: Option<GoDuration>,
    pub bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub enable_profiling: Option<bool>,
    pub hostname_override: Option<String>,
    #[serde(rename = "nodeIPOverride")]
    pub node_ip_override: Option<Vec<String>>,
    #[serde(default)]
    pub client_connection: ClientConnectionConfiguration,
    #[serde(default)]
    pub feature_gates: serde_json::Value,
    #[serde(default)]
    pub logging: serde_json::Value,
    pub oom_score_adj: Option<i32>,
    pub port_range: Option<String>,
    pub show_hidden_metrics_for_version: Option<String>,
    pub udp_idle_timeout: Option<GoDuration>,
}

/// `clientConnection`: how to reach the API server.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ClientConnectionConfiguration {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

/// kube-proxy's default `clientConnection.qps` (its `--kube-api-qps`).
pub const DEFAULT_CLIENT_QPS: f64 = 5.0;
/// kube-proxy's default `clientConnection.burst` (its `--kube-api-burst`).
pub const DEFAULT_CLIENT_BURST: u32 = 10;

/// `clientConnection`, validated: what kproxy's API client uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConnection {
    /// `kubeconfig`; `None`: in-cluster (or the command line's).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// `qps`: requests per second in the long run; `None`: unlimited (a
    /// negative `qps`, as in client-go).
    pub qps: Option<f64>,
    /// `burst`: requests at once.
    pub burst: u32,
}

/// The content types kproxy's client speaks: JSON only (Kubernetes
/// protobuf is not implemented by its client).
const JSON: &str = "application/json";

impl ClientConnectionConfiguration {
    /// Validate, naming the field of anything kproxy cannot honour.
    pub fn resolve(&self) -> Result<ClientConnection, ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: format!("clientConnection.{field}"),
            reason,
        };
        // A request body is never sent (kproxy only lists and watches);
        // the content type still decides the Accept header when
        // acceptContentTypes is empty, as in client-go.
        for (field, value) in [
            ("contentType", &self.content_type),
            ("acceptContentTypes", &self.accept_content_types),
        ] {
            let v = value.as_deref().unwrap_or("").trim();
            if !(v.is_empty() || v == JSON) {
                return Err(invalid(
                    field,
                    format!(
                        "{v:?}: kproxy's API client speaks {JSON} only; leave it empty or set {JSON}"
                    ),
                ));
            }
        }
        let qps = match self.qps {
            Some(q) if !q.is_finite() => {
                return Err(invalid("qps", format!("{q} is not a number")));
            }
            None => Some(DEFAULT_CLIENT_QPS),
            Some(0.0) => Some(DEFAULT_CLIENT_QPS),
            Some(q) if q < 0.0 => None,
            Some(q) => Some(q),
        };
        let burst = match self.burst {
            None | Some(0) => DEFAULT_CLIENT_BURST,
            Some(b) => u32::try_from(b)
                .ok()
                .filter(|b| *b >= 1)
                .ok_or_else(|| invalid("burst", format!("{b} is not a positive count")))?,
        };
        let kubeconfig = self
            .kubeconfig
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(std::path::PathBuf::from);
        Ok(ClientConnection {
            kubeconfig,
            qps,
            burst,
        })
    }
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DetectLocalConfiguration {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
    #[serde(default, rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<String>,
}

/// `iptables`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct IptablesConfiguration {
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<i64>,
    pub localhost_node_ports: Option<bool>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
}

/// `nftables`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct NftablesConfiguration {
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<i64>,
    pub sync_period: Option<GoDuration>,
    pub min_sync_period: Option<GoDuration>,
    /// kproxy's extension: how the nftables backend reaches the kernel
    /// (`netlink` or `exec`; `--nftables-transport` wins).
    pub transport: Option<String>,
}

/// `conntrack`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ConntrackConfiguration {
    pub max_per_core: Option<i64>,
    pub min: Option<i64>,
    pub tcp_established_timeout: Option<GoDuration>,
    pub tcp_close_wait_timeout: Option<GoDuration>,
    pub tcp_be_liberal: Option<bool>,
    pub udp_timeout: Option<GoDuration>,
    pub udp_stream_timeout: Option<GoDuration>,
}

impl KubeProxyConfiguration {
    /// Parse the YAML (or JSON) text of a configuration file.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg: KubeProxyConfiguration =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if let Some(kind) = &cfg.kind
            && kind != "KubeProxyConfiguration"
        {
            return Err(ConfigError::Invalid {
                field: "kind".into(),
                reason: format!("expected KubeProxyConfiguration, got {kind:?}"),
            });
        }
        if let Some(v) = &cfg.api_version
            && v != "kubeproxy.config.k8s.io/v1alpha1"
        {
            return Err(ConfigError::Invalid {
                field: "apiVersion".into(),
                reason: format!("expected kubeproxy.config.k8s.io/v1alpha1, got {v:?}"),
            });
        }
        Ok(cfg)
    }

    /// Apply this file's settings on top of `base`, validating every field.
    pub fn apply_to(&self, base: &mut ProxyConfig) -> Result<(), ConfigError> {
        if let Some(mode) = &self.mode {
            base.mode = match mode.as_str() {
                "" | "iptables" => ProxyMode::Iptables,
                "nftables" => ProxyMode::Nftables,
                other => {
                    return Err(ConfigError::Invalid {
                        field: "mode".into(),
                        reason: format!(
                            "{other:?} is not supported by kproxy (iptables or nftables)"
                        ),
                    });
                }
            };
        }
        let mut cidrs: Vec<String> = Vec::new();
        if let Some(c) = &self.cluster_cidr {
            cidrs.extend(
                c.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
        }
        cidrs.extend(self.detect_local.cluster_cidrs.iter().cloned());
        if !cidrs.is_empty() {
            base.cluster_cidrs = parse_cidrs("clusterCIDR", &cidrs)?;
        }
        if let Some(m) = &self.detect_local_mode {
            base.detect_local_mode = parse_detect_local_mode(m)?;
        }
        if let Some(b) = &self.detect_local.bridge_interface {
            base.bridge_interface = Some(b.clone());
        }
        if let Some(p) = &self.detect_local.interface_name_prefix {
            base.interface_name_prefix = Some(p.clone());
        }
        if !self.node_port_addresses.is_empty() {
            base.nodeport_addresses =
                parse_nodeport_addresses("nodePortAddresses", &self.node_port_addresses)?;
        }
        let (masq_all, masq_bit, masq_field) = match base.mode {
            ProxyMode::Iptables => (
                self.iptables.masquerade_all,
                self.iptables.masquerade_bit,
                "iptables.masqueradeBit",
            ),
            ProxyMode::Nftables => (
                self.nftables
                    .masquerade_all
                    .or(self.iptables.masquerade_all),
                self.nftables
                    .masquerade_bit
                    .or(self.iptables.masquerade_bit),
                "nftables.masqueradeBit",
            ),
        };
        if let Some(all) = masq_all {
            base.masquerade_all = all;
        }
        if let Some(bit) = masq_bit {
            if !(0..=31).contains(&bit) {
                return Err(ConfigError::Invalid {
                    field: masq_field.into(),
                    reason: format!("{bit} is outside 0..31"),
                });
            }
            base.masquerade_bit = bit as u8;
        }
        if let Some(l) = self.iptables.localhost_node_ports {
            base.localhost_nodeports = l;
        }
        if let Some(h) = &self.hostname_override
            && !h.trim().is_empty()
        {
            base.node_name = h.trim().to_string();
        }
        if let Some(ips) = &self.node_ip_override {
            for (i, s) in ips.iter().enumerate() {
                let ip: IpAddr = s.trim().parse().map_err(|_| ConfigError::Invalid {
                    field: format!("nodeIPOverride[{i}]"),
                    reason: format!("{s:?} is not an IP address"),
                })?;
                base.extra_node_ips.push(ip);
            }
        }
        Ok(())
    }
}

/// Parse a `detectLocalMode` value.
pub fn parse_detect_local_mode(s: &str) -> Result<DetectLocalMode, ConfigError> {
    match s {
        "" | "ClusterCIDR" => Ok(DetectLocalMode::ClusterCidr),
        "NodeCIDR" => Ok(DetectLocalMode::NodeCidr),
        "BridgeInterface" => Ok(DetectLocalMode::BridgeInterface),
        "InterfaceNamePrefix" => Ok(DetectLocalMode::InterfaceNamePrefix),
        other => Err(ConfigError::Invalid {
            field: "detectLocalMode".into(),
            reason: format!(
                "{other:?} is not one of ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix"
            ),
        }),
    }
}

/// Parse a list of CIDRs, naming `field` in errors.
pub fn parse_cidrs(field: &str, values: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.trim().parse::<IpNet>().map_err(|_| ConfigError::Invalid {
                field: format!("{field}[{i}]"),
                reason: format!("{s:?} is not a CIDR"),
            })
        })
        .collect()
}

/// Parse `nodePortAddresses` entries (`primary` or CIDRs).
pub fn parse_nodeport_addresses(
    field: &str,
    values: &[String],
) -> Result<Vec<NodePortAddress>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s.trim();
            if s == "primary" {
                return Ok(NodePortAddress::Primary);
            }
            s.parse::<IpNet>()
                .map(NodePortAddress::Cidr)
                .map_err(|_| ConfigError::Invalid {
                    field: format!("{field}[{i}]"),
                    reason: format!("{s:?} is neither \"primary\" nor a CIDR"),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("1m0s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration("10"), None);
    }

    #[test]
    fn config_file_fields_apply() {
        let text = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
nodePortAddresses: ["primary", "192.168.0.0/24"]
nftables:
  masqueradeBit: 15
  masqueradeAll: true
hostnameOverride: node-01
syncPeriod: 30s
"#;
        let cfg = KubeProxyConfiguration::from_yaml(text).unwrap();
        let mut pc = ProxyConfig::default();
        cfg.apply_to(&mut pc).unwrap();
        assert_eq!(pc.mode, ProxyMode::Nftables);
        assert_eq!(pc.cluster_cidrs.len(), 2);
        assert_eq!(pc.masquerade_mark(), 0x8000);
        assert!(pc.masquerade_all);
        assert_eq!(pc.node_name, "node-01");
        assert_eq!(pc.nodeport_addresses[0], NodePortAddress::Primary);
    }

    #[test]
    fn unknown_and_invalid_fields_are_named() {
        let err =
            KubeProxyConfiguration::from_yaml("kind: KubeProxyConfiguration\nclusterCidr: x\n")
                .unwrap_err();
        assert!(err.to_string().contains("clusterCidr"), "{err}");

        let cfg = KubeProxyConfiguration::from_yaml("iptables:\n  masqueradeBit: 40\n").unwrap();
        let err = cfg.apply_to(&mut ProxyConfig::default()).unwrap_err();
        assert!(err.to_string().contains("iptables.masqueradeBit"), "{err}");

        let cfg =
            KubeProxyConfiguration::from_yaml("nodePortAddresses: [\"10.0.0.0/33\"]\n").unwrap();
        let err = cfg.apply_to(&mut ProxyConfig::default()).unwrap_err();
        assert!(err.to_string().contains("nodePortAddresses[0]"), "{err}");

        let cfg = KubeProxyConfiguration::from_yaml("mode: ipvs\n").unwrap();
        assert!(cfg.apply_to(&mut ProxyConfig::default()).is_err());
    }

    #[test]
    fn client_connection_is_honoured_or_rejected_by_name() {
        // kubeadm's kube-proxy ConfigMap: empty values mean the defaults.
        let cfg = KubeProxyConfiguration::from_yaml(
            "clientConnection:\n  acceptContentTypes: \"\"\n  burst: 0\n  contentType: \"\"\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n  qps: 0\n",
        )
        .unwrap();
        assert_eq!(
            cfg.client_connection.resolve().unwrap(),
            ClientConnection {
                kubeconfig: Some("/var/lib/kube-proxy/kubeconfig.conf".into()),
                qps: Some(DEFAULT_CLIENT_QPS),
                burst: DEFAULT_CLIENT_BURST,
            }
        );
        let cfg = KubeProxyConfiguration::from_yaml(
            "clientConnection:\n  qps: 20.5\n  burst: 40\n  contentType: application/json\n",
        )
        .unwrap();
        let c = cfg.client_connection.resolve().unwrap();
        assert_eq!((c.kubeconfig, c.qps, c.burst), (None, Some(20.5), 40));
        let c = KubeProxyConfiguration::from_yaml("clientConnection: {qps: -1}\n")
            .unwrap()
            .client_connection
            .resolve()
            .unwrap();
        assert_eq!(c.qps, None, "a negative qps turns the limit off");

        for (text, field) in [
            (
                "clientConnection: {contentType: application/vnd.kubernetes.protobuf}",
                "clientConnection.contentType",
            ),
            (
                "clientConnection: {acceptContentTypes: \"application/vnd.kubernetes.protobuf,application/json\"}",
                "clientConnection.acceptContentTypes",
            ),
            ("clientConnection: {burst: -3}", "clientConnection.burst"),
        ] {
            let err = KubeProxyConfiguration::from_yaml(text)
                .unwrap()
                .client_connection
                .resolve()
                .unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        // An unknown field inside clientConnection is named too.
        let err =
            KubeProxyConfiguration::from_yaml("clientConnection: {kubeConfig: x}\n").unwrap_err();
        assert!(err.to_string().contains("kubeConfig"), "{err}");
    }
}
