//! [`supported`]: whether this host can run the nftables backend.

use crate::transport::{self, Nft};

use super::TransportKind;

/// Why nftables mode cannot run here (upstream's checks:
/// `getNFTablesInterface` in pkg/proxy/nftables/supported.go).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// The kernel is older than 5.13.
    #[error("kernel {0} is older than 5.13")]
    Kernel(String),
    /// `nft` is older than 1.0.1.
    #[error("nft {0}.{1}.{2} is older than 1.0.1")]
    Nft(u32, u32, u32),
    /// `nft` or the kernel version could not be read.
    #[error("{0}")]
    Probe(String),
}

/// Whether this host can run the nftables backend: kernel ≥ 5.13 (skipped
/// when `KUBE_PROXY_NFTABLES_SKIP_KERNEL_VERSION_CHECK` is set, as
/// upstream) and, with the exec transport, `nft` ≥ 1.0.1.
pub fn supported() -> Result<(), Unsupported> {
    supported_for(TransportKind::default())
}

/// [`supported`] for a given transport.
pub fn supported_for(kind: TransportKind) -> Result<(), Unsupported> {
    match kind {
        TransportKind::Netlink => kernel_supported(),
        TransportKind::Exec => supported_with(&Nft::host()),
    }
}

/// [`supported`] with a given `nft`.
pub fn supported_with(nft: &Nft) -> Result<(), Unsupported> {
    kernel_supported()?;
    let v = nft
        .version()
        .map_err(|e| Unsupported::Probe(e.to_string()))?;
    if v < (1, 0, 1) {
        return Err(Unsupported::Nft(v.0, v.1, v.2));
    }
    Ok(())
}

/// The kernel part of [`supported`] (all the netlink transport needs).
pub fn kernel_supported() -> Result<(), Unsupported> {
    let skip = std::env::var_os("KUBE_PROXY_NFTABLES_SKIP_KERNEL_VERSION_CHECK")
        .is_some_and(|v| !v.is_empty());
    if !skip {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_err(|e| Unsupported::Probe(format!("reading the kernel version: {e}")))?;
        let release = release.trim().to_string();
        let v = transport::parse_dotted(&release).ok_or_else(|| {
            Unsupported::Probe(format!("cannot parse kernel version {release:?}"))
        })?;
        if v < (5, 13, 0) {
            return Err(Unsupported::Kernel(release));
        }
    }
    Ok(())
}
