//! Backend construction and selection (`--backend`).
//!
//! Every backend crate exposes one type implementing
//! [`kproxy_graph::Backend`]; [`make_backend`] is the only place the daemon
//! names them, so wiring a new backend is a one-line change here.

use anyhow::bail;
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
    match kind {
        BackendKind::Nftables => ProxyMode::Nftables,
        BackendKind::IptablesLegacy | BackendKind::IptablesNft => ProxyMode::Iptables,
    }
}

/// Resolve `--backend` to a concrete backend. `auto` probes the host
/// (reference §2.9): nftables when supported, otherwise the iptables
/// flavour already in use. `config_mode` is the configuration file's
/// `mode` (used only when the flag was not given).
pub fn resolve(
    arg: Option<BackendArg>,
    config_mode: Option<ProxyMode>,
) -> anyhow::Result<BackendKind> {
    match arg {
        Some(a) => match a.concrete() {
            Some(k) => Ok(k),
            None => detect_auto(),
        },
        None => match config_mode {
            Some(ProxyMode::Nftables) => Ok(BackendKind::Nftables),
            Some(ProxyMode::Iptables) => detect_iptables_flavour(),
            None => detect_auto(),
        },
    }
}

/// `auto`: nftables when supported, else the host's iptables flavour.
pub fn detect_auto() -> anyhow::Result<BackendKind> {
    if nftables_supported() {
        return Ok(BackendKind::Nftables);
    }
    detect_iptables_flavour()
}

fn nftables_supported() -> bool {
    probe::nft_usable()
}

fn detect_iptables_flavour() -> anyhow::Result<BackendKind> {
    probe::iptables_flavour()
}

/// Construct a backend. Construction does not touch the kernel; the first
/// `sync` does.
pub fn make_backend(kind: BackendKind) -> anyhow::Result<Box<dyn Backend>> {
    match kind {
        BackendKind::IptablesLegacy => not_yet(kind),
        BackendKind::IptablesNft => not_yet(kind),
        BackendKind::Nftables => not_yet(kind),
    }
}

fn not_yet(kind: BackendKind) -> anyhow::Result<Box<dyn Backend>> {
    bail!("backend {kind} is not available in this build yet")
}

/// Host probes used by `auto` until the backend crates provide their own
/// (`kproxy_iptables::detect_flavour`, `kproxy_nftables::supported`).
mod probe {
    use std::process::{Command, Stdio};

    use anyhow::bail;
    use kproxy_graph::BackendKind;

    /// `nft` runs and the kernel accepts an nftables table (checked by
    /// listing, which needs nf_tables in the kernel).
    pub fn nft_usable() -> bool {
        Command::new("nft")
            .args(["list", "tables"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The flavour whose tables hold more rules (kube-proxy's and kubelet's
    /// heuristic); nft when neither holds any and both exist.
    pub fn iptables_flavour() -> anyhow::Result<BackendKind> {
        let count = |prog: &str| -> Option<usize> {
            let out = Command::new(prog).stderr(Stdio::null()).output().ok()?;
            if !out.status.success() {
                return None;
            }
            Some(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A "))
                    .count(),
            )
        };
        let legacy = count("iptables-legacy-save");
        let nft = count("iptables-nft-save");
        match (legacy, nft) {
            (Some(l), Some(n)) if l > n => Ok(BackendKind::IptablesLegacy),
            (_, Some(_)) => Ok(BackendKind::IptablesNft),
            (Some(_), None) => Ok(BackendKind::IptablesLegacy),
            (None, None) => bail!(
                "--backend auto: neither nft, iptables-nft-save nor iptables-legacy-save works on this host"
            ),
        }
    }
}
