//! Offline input: Kubernetes YAML files and the flags that build a
//! [`ProxyConfig`] (shared by `graph`, `render` and `run --source PATH`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use kproxy_graph::config::{parse_cidrs, parse_detect_local_mode, parse_nodeport_addresses};
use kproxy_graph::{
    IpFamily, KubeProxyConfiguration, Objects, ProxyConfig, ProxyMode, ServiceGraph, Warning,
    input_files,
};

/// Flags that shape the graph; they mirror KubeProxyConfiguration fields
/// and override the `--config` file.
#[derive(Debug, Clone, clap::Args)]
pub struct InputArgs {
    /// This node's name (endpoints on it are local); kube-proxy's
    /// `--hostname-override` is accepted too.
    #[arg(long, env = "KPROXY_NODE_NAME", alias = "hostname-override")]
    pub node_name: Option<String>,
    /// A KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1).
    #[arg(long, env = "KPROXY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Pod network CIDRs, comma-separated (one per family).
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Vec<String>,
    /// How pod traffic is recognised: ClusterCIDR, NodeCIDR, BridgeInterface, InterfaceNamePrefix.
    #[arg(long)]
    pub detect_local_mode: Option<String>,
    /// Masquerade all traffic to ClusterIPs.
    #[arg(long)]
    pub masquerade_all: bool,
    /// Addresses that accept NodePorts: `primary` and/or CIDRs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Service CIDRs, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub service_cidr: Vec<String>,
    /// Only program these IP families (ipv4, ipv6); default both.
    #[arg(long, value_delimiter = ',')]
    pub ip_families: Vec<String>,
}

impl InputArgs {
    /// The configuration: defaults, then the file, then flags.
    pub fn proxy_config(&self, mode: Option<ProxyMode>) -> anyhow::Result<ProxyConfig> {
        let file = self.config_file()?;
        self.proxy_config_with(file.as_ref(), mode)
    }

    /// The `--config` file, parsed (not yet applied).
    pub fn config_file(&self) -> anyhow::Result<Option<KubeProxyConfiguration>> {
        let Some(path) = &self.config else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg = KubeProxyConfiguration::from_yaml(&text)
            .with_context(|| format!("in {}", path.display()))?;
        Ok(Some(cfg))
    }

    /// The configuration from an already parsed file: defaults, then the
    /// file, then flags.
    pub fn proxy_config_with(
        &self,
        file: Option<&KubeProxyConfiguration>,
        mode: Option<ProxyMode>,
    ) -> anyhow::Result<ProxyConfig> {
        let mut pc = ProxyConfig::default();
        if let Some(cfg) = file {
            let path = self
                .config
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            cfg.apply_to(&mut pc)
                .with_context(|| format!("in {path}"))?;
        }
        if let Some(mode) = mode {
            pc.mode = mode;
        }
        if let Some(n) = &self.node_name {
            pc.node_name = n.clone();
        }
        if !self.cluster_cidr.is_empty() {
            pc.cluster_cidrs = parse_cidrs("--cluster-cidr", &self.cluster_cidr)?;
        }
        if let Some(m) = &self.detect_local_mode {
            pc.detect_local_mode = parse_detect_local_mode(m)?;
        }
        if self.masquerade_all {
            pc.masquerade_all = true;
        }
        if !self.nodeport_addresses.is_empty() {
            pc.nodeport_addresses =
                parse_nodeport_addresses("--nodeport-addresses", &self.nodeport_addresses)?;
        }
        if !self.service_cidr.is_empty() {
            pc.service_cidrs = parse_cidrs("--service-cidr", &self.service_cidr)?;
        }
        if !self.ip_families.is_empty() {
            pc.families = self
                .ip_families
                .iter()
                .map(|f| match f.to_ascii_lowercase().as_str() {
                    "ipv4" | "4" => Ok(IpFamily::V4),
                    "ipv6" | "6" => Ok(IpFamily::V6),
                    other => bail!("--ip-families: {other:?} is not ipv4 or ipv6"),
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if pc.node_name.is_empty() {
            bail!("--node-name (or hostnameOverride in --config) is required");
        }
        Ok(pc)
    }
}

/// Read objects from files.
pub fn load_objects(paths: &[PathBuf]) -> anyhow::Result<(Objects, Vec<Warning>)> {
    let mut objects = Objects::default();
    let mut warnings = Vec::new();
    for f in input_files(paths)? {
        let text = read(&f)?;
        warnings.extend(objects.add_yaml(&f.display().to_string(), &text)?);
    }
    Ok((objects, warnings))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Read files and build the graph; file-level warnings are merged in.
pub fn load_graph(paths: &[PathBuf], config: &ProxyConfig) -> anyhow::Result<ServiceGraph> {
    let (objects, warnings) = load_objects(paths)?;
    let mut g = ServiceGraph::build(&objects, config);
    g.warnings.extend(warnings);
    g.warnings.sort();
    Ok(g)
}
