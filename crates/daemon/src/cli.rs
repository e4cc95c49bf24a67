//! Command-line arguments of `kproxy`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::backends::BackendArg;
use crate::input::InputArgs;

/// kproxy: a Kubernetes Service proxy for Linux nodes.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print this node's service graph: service ports, VIPs, NodePorts,
    /// chosen cluster and local endpoints, the decisions, and warnings.
    Graph {
        #[allow(missing_docs, reason = "a flattened group: its fields are documented")]
        #[command(flatten)]
        input: InputArgs,
        /// Kubernetes YAML/JSON files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the complete ruleset a full sync would apply, in the backend's
    /// own loader syntax (iptables-restore input or `nft -f` input).
    Render {
        /// The backend whose rules to print.
        #[arg(long, value_enum)]
        backend: RenderBackend,
        #[allow(missing_docs, reason = "a flattened group: its fields are documented")]
        #[command(flatten)]
        input: InputArgs,
        /// Kubernetes YAML/JSON files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The node daemon: keep the kernel's rules equal to the service graph.
    Run(Box<RunArgs>),
    /// Remove everything kproxy (and kube-proxy) installed, and nothing else.
    Cleanup {
        /// Which backend's rules to remove; `all` removes every mode's.
        #[arg(long, value_enum, default_value = "all")]
        backend: CleanupBackend,
    },
    /// Explain what a backend's rules do to one new connection, chain by
    /// chain: the path, the endpoints with their probabilities,
    /// masquerading, or REJECT / DROP / not handled.
    Trace(Box<crate::cmd_trace::TraceArgs>),
    /// Show what the next full sync would change in the kernel (chains,
    /// rules, sets, elements), without applying it.
    Diff(Box<crate::cmd_diff::DiffArgs>),
}

/// `render --backend`: a concrete backend (rendering never probes the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RenderBackend {
    /// iptables-restore input for iptables-legacy.
    IptablesLegacy,
    /// iptables-restore input for iptables-nft.
    IptablesNft,
    /// `nft -f` input.
    Nftables,
}

impl From<RenderBackend> for kproxy_graph::BackendKind {
    fn from(b: RenderBackend) -> Self {
        match b {
            RenderBackend::IptablesLegacy => kproxy_graph::BackendKind::IptablesLegacy,
            RenderBackend::IptablesNft => kproxy_graph::BackendKind::IptablesNft,
            RenderBackend::Nftables => kproxy_graph::BackendKind::Nftables,
        }
    }
}

/// `cleanup --backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CleanupBackend {
    /// Every mode: kproxy's and kube-proxy's iptables (both flavours) and
    /// nftables rules.
    All,
    /// iptables-legacy rules only.
    IptablesLegacy,
    /// iptables-nft rules only.
    IptablesNft,
    /// nftables tables only.
    Nftables,
}

impl CleanupBackend {
    /// The backends whose cleanup runs.
    pub fn kinds(self) -> Vec<kproxy_graph::BackendKind> {
        use kproxy_graph::BackendKind;
        match self {
            CleanupBackend::All => BackendKind::ALL.to_vec(),
            CleanupBackend::IptablesLegacy => vec![BackendKind::IptablesLegacy],
            CleanupBackend::IptablesNft => vec![BackendKind::IptablesNft],
            CleanupBackend::Nftables => vec![BackendKind::Nftables],
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `--nftables-transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NftTransportArg {
    /// One nf_tables netlink batch per transaction (no `nft` process).
    Netlink,
    /// `nft -f -`.
    Exec,
}

impl From<NftTransportArg> for kproxy_nftables::TransportKind {
    fn from(a: NftTransportArg) -> Self {
        match a {
            NftTransportArg::Netlink => kproxy_nftables::TransportKind::Netlink,
            NftTransportArg::Exec => kproxy_nftables::TransportKind::Exec,
        }
    }
}

/// `kproxy run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The backend; `auto` picks nftables when supported, else the host's
    /// iptables flavour. Default: the config file's `mode`, else `auto`.
    #[arg(long, value_enum, env = "KPROXY_BACKEND")]
    pub backend: Option<BackendArg>,
    /// Where the cluster state comes from: `kube` (the API server) or a
    /// path to Kubernetes YAML (a file or a directory), re-read on change.
    #[arg(long, default_value = "kube")]
    pub source: String,
    /// kubeconfig for `--source kube` (default: the config file's
    /// clientConnection.kubeconfig, which wins over this flag as in
    /// kube-proxy; else ~/.kube/config, then in-cluster). On a node, name
    /// the control-plane endpoint, not the `kubernetes` Service.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Answer to Services labelled service.kubernetes.io/service-proxy-name
    /// with this value (instead of to unlabelled Services).
    #[arg(long)]
    pub proxy_name: Option<String>,
    /// Apply one full sync and exit (0 on success).
    #[arg(long)]
    pub once: bool,
    /// Do not touch the kernel: print what each sync would apply.
    #[arg(long)]
    pub dry_run: bool,
    /// How the nftables backend reaches the kernel: `netlink` (one
    /// nf_tables netlink batch per sync, no `nft` needed) or `exec`
    /// (`nft -f -`). Default: the config file's `nftables.transport`,
    /// else netlink.
    #[arg(long, value_enum, env = "KPROXY_NFTABLES_TRANSPORT")]
    pub nftables_transport: Option<NftTransportArg>,
    /// Sync at least this often (Go duration: 30s, 1m). Also the drift check
    /// and failure retry interval; /healthz fails after 2x this without a
    /// sync while changes are pending.
    #[arg(long)]
    pub sync_period: Option<String>,
    /// Sync no more often than this (Go duration).
    #[arg(long)]
    pub min_sync_period: Option<String>,
    /// A full sync at least this often, even without drift (Go duration).
    #[arg(long, default_value = "1h")]
    pub full_sync_period: String,
    /// Address of /healthz and /livez (empty: off).
    #[arg(long)]
    pub healthz_bind_address: Option<String>,
    /// Address of /metrics, /rules, /graph, /status (empty: off).
    #[arg(long)]
    pub metrics_bind_address: Option<String>,
    /// Exit when the healthz or metrics listener cannot bind (default: log
    /// and continue without it).
    #[arg(long)]
    pub bind_address_hard_fail: bool,
    /// OOM score adjustment for this process (-1000..1000; default -999).
    #[arg(long, allow_hyphen_values = true)]
    pub oom_score_adj: Option<i32>,
    /// Do not remove other modes' rules (kproxy's or kube-proxy's) after
    /// the first successful sync.
    #[arg(long)]
    pub no_cleanup_other_modes: bool,
    /// Do not delete stale UDP conntrack entries after syncs.
    #[arg(long)]
    pub no_conntrack_cleanup: bool,
    /// Do not serve health-check node ports for eTP=Local services.
    #[arg(long)]
    pub no_health_check_node_ports: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[allow(missing_docs, reason = "a flattened group: its fields are documented")]
    #[command(flatten)]
    pub input: InputArgs,
}
