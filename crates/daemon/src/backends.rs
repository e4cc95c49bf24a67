//! Backend construction and selection (`--backend`).
//!
//! Every backend crate exposes one type implementing
//! [`kproxy_graph::Backend`]; [`make_backend`] is the only place the daemon
//! names them, so wiring a new backend is a one-line change here.

use kproxy_graph::{Backend, BackendKind, ProxyMode};

/// The `--backend` flag: a concrete backend or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// Native nftables when the kernel and `nft` support it, otherwise the
    /// iptables flavour the host already uses.
    Auto,
    /// iptables rules through `iptables-legacy-restore`.
    IptablesLegacy,
    /// iptables rules through `iptables-nft-restore`.
    IptablesNft,
    /// Native nftables through `nft -f`.
    Nftables,
}

impl BackendArg {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendArg::Auto => "auto",
            BackendArg::IptablesLegacy => "iptables-legacy",
            BackendArg::IptablesNft => "iptables-nft",
            BackendArg::Nftables => "nftables",
        }
    }

    /// The concrete backend, without probing the host (`None` for `auto`).
    pub fn concrete(self) -> Option<BackendKind> {
        match self {
            BackendArg::Auto => None,
            BackendArg::IptablesLegacy => Some(BackendKind::IptablesLegacy),
            BackendArg::IptablesNft => Some(BackendKind::IptablesNft),
            BackendArg::Nftables => Some(BackendKind::Nftables),
        }
    }
}

/// The graph mode a backend needs: its defaults (nodePortAddresses,
/// localhost NodePorts) differ between kube-proxy's two modes.
pub fn mode_for(kind: BackendKind) -> ProxyMode {
    kind.mode()
}

/// Resolve `--backend` to a concrete backend. `auto` probes the host
/// (as upstream's `getNFTablesInterface` in pkg/proxy/nftables/supported.go:
/// kernel 5.13 or later): nftables when supported, otherwise the iptables
/// flavour already in use; a working `nft` is needed only with the exec
/// nftables transport. `config_mode` is the configuration file's `mode`
/// (used only when the flag was not given).
pub fn resolve_with(
    arg: Option<BackendArg>,
    config_mode: Option<ProxyMode>,
    nft_transport: kproxy_nftables::TransportKind,
) -> anyhow::Result<BackendKind> {
    match arg {
        Some(a) => match a.concrete() {
            Some(k) => Ok(k),
            None => detect_auto_with(nft_transport),
        },
        None => match config_mode {
            Some(ProxyMode::Nftables) => Ok(BackendKind::Nftables),
            Some(ProxyMode::Iptables) => detect_iptables_flavour(),
            None => detect_auto_with(nft_transport),
        },
    }
}

/// `auto`: nftables when supported (kernel 5.13 or later, as upstream's
/// `getNFTablesInterface`), else the host's
/// iptables flavour. The reason is logged, since the choice decides which
/// tools an operator uses to look at the rules.
pub fn detect_auto_with(
    nft_transport: kproxy_nftables::TransportKind,
) -> anyhow::Result<BackendKind> {
    match kproxy_nftables::supported_for(nft_transport) {
        Ok(()) => Ok(BackendKind::Nftables),
        Err(why) => {
            tracing::info!(reason = %why, "nftables backend not supported here; using iptables");
            detect_iptables_flavour()
        }
    }
}

fn detect_iptables_flavour() -> anyhow::Result<BackendKind> {
    Ok(match kproxy_iptables::detect_flavour() {
        kproxy_iptables::Flavour::Legacy => BackendKind::IptablesLegacy,
        kproxy_iptables::Flavour::Nft => BackendKind::IptablesNft,
    })
}

/// What the node tells the generators beyond the service graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendOptions {
    /// `nf_conntrack_tcp_be_liberal` is set on the node (kube-proxy's
    /// `conntrack.tcpBeLiberal` sets it): like kube-proxy, the iptables
    /// backends then leave out KUBE-FORWARD's `ctstate INVALID` drop, since
    /// the kernel no longer marks out-of-window TCP packets invalid.
    pub tcp_be_liberal: bool,
    /// How the nftables backend's transactions reach the kernel
    /// (`--nftables-transport`).
    pub nft_transport: kproxy_nftables::TransportKind,
}

/// Construct a backend with the default options (offline rendering,
/// cleanup). Construction does not touch the kernel; the first `sync`
/// does.
pub fn make_backend(kind: BackendKind) -> anyhow::Result<Box<dyn Backend>> {
    make_backend_with(kind, BackendOptions::default())
}

/// [`make_backend`] with the node's options.
pub fn make_backend_with(
    kind: BackendKind,
    options: BackendOptions,
) -> anyhow::Result<Box<dyn Backend>> {
    let iptables = |flavour| {
        let gen_options = kproxy_iptables::GenOptions {
            drop_invalid: !options.tcp_be_liberal,
            ..kproxy_iptables::GenOptions::default()
        };
        Box::new(kproxy_iptables::IptablesBackend::new(flavour).with_options(gen_options))
    };
    Ok(match kind {
        BackendKind::IptablesLegacy => iptables(kproxy_iptables::Flavour::Legacy),
        BackendKind::IptablesNft => iptables(kproxy_iptables::Flavour::Nft),
        BackendKind::Nftables => {
            Box::new(kproxy_nftables::NftablesBackend::new().transport(options.nft_transport))
        }
    })
}
