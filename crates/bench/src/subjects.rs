//! What is measured: kproxy's three backends and kube-proxy's nftables
//! layout (rendered by [`crate::kpnft`]). kube-proxy's iptables layout is
//! kproxy's iptables backends' output (they reproduce it rule for rule),
//! so its kernel cost is the iptables loaders' figures.

use std::fmt;
use std::path::Path;

use anyhow::{Context as _, bail};
use kproxy_graph::{Backend, BackendKind, ProxyMode, ServiceGraph};

use crate::sys::Ns;

/// One thing the bench measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A kproxy backend.
    Ours(BackendKind),
    /// kube-proxy's nftables layout (comparison baseline).
    KubeProxyNft,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Ours(k) => write!(f, "{k}"),
            Subject::KubeProxyNft => f.write_str("kube-proxy-nft"),
        }
    }
}

impl Subject {
    /// Parse a `--backends` entry.
    pub fn parse(s: &str) -> anyhow::Result<Subject> {
        Ok(match s.trim() {
            "nftables" => Subject::Ours(BackendKind::Nftables),
            "iptables-nft" => Subject::Ours(BackendKind::IptablesNft),
            "iptables-legacy" => Subject::Ours(BackendKind::IptablesLegacy),
            "kube-proxy-nft" => Subject::KubeProxyNft,
            other => bail!(
                "--backends: unknown backend {other:?} (nftables, iptables-nft, iptables-legacy, kube-proxy-nft)"
            ),
        })
    }

    /// Every subject, in report order.
    pub const ALL: [Subject; 4] = [
        Subject::Ours(BackendKind::Nftables),
        Subject::Ours(BackendKind::IptablesNft),
        Subject::Ours(BackendKind::IptablesLegacy),
        Subject::KubeProxyNft,
    ];

    /// The graph mode the subject's rules are built for.
    pub fn mode(self) -> ProxyMode {
        match self {
            Subject::Ours(BackendKind::Nftables) | Subject::KubeProxyNft => ProxyMode::Nftables,
            Subject::Ours(_) => ProxyMode::Iptables,
        }
    }

    /// Whether the subject uses nft (rather than iptables-restore).
    fn is_nft(self) -> bool {
        self.mode() == ProxyMode::Nftables
    }

    /// The full ruleset text, in the loader's syntax.
    pub fn render(self, graph: &ServiceGraph) -> anyhow::Result<String> {
        match self {
            Subject::Ours(kind) => {
                let b = backend(kind, None)?;
                b.render_full(graph)
                    .with_context(|| format!("{kind}: rendering the full ruleset"))
            }
            Subject::KubeProxyNft => Ok(crate::kpnft::render(graph)),
        }
    }

    /// Make a fresh namespace ready for this subject's loader: the
    /// iptables renders match kube-proxy's nfacct counters, which must
    /// exist before `-m nfacct` loads (the backend creates them at start).
    pub fn prepare(self, ns: &Ns) -> anyhow::Result<()> {
        if matches!(
            self,
            Subject::Ours(BackendKind::IptablesNft | BackendKind::IptablesLegacy)
        ) && !kproxy_iptables::nfacct::ensure_counters(Some(ns.name()))
        {
            anyhow::bail!("{self}: cannot create the nfacct counters in {}", ns.name());
        }
        Ok(())
    }

    /// The loader's command line for a file holding the full ruleset:
    /// what a full sync runs, without the daemon.
    pub fn loader_argv(self, file: &Path) -> Vec<String> {
        let f = file.to_string_lossy().into_owned();
        match self {
            Subject::Ours(BackendKind::Nftables) | Subject::KubeProxyNft => {
                vec!["nft".into(), "-f".into(), f]
            }
            // Plain: into an empty namespace the result is the same, and
            // iptables-nft 1.8.9's `--noflush` is quadratic in the chains
            // named (over 600 s at 10,000 Services), which is the tool's
            // cost, not the kernel's; kproxy splits large syncs instead.
            Subject::Ours(BackendKind::IptablesNft) => {
                vec!["iptables-nft-restore".into(), f]
            }
            Subject::Ours(BackendKind::IptablesLegacy) => {
                vec!["iptables-legacy-restore".into(), "--noflush".into(), f]
            }
        }
    }

    /// iptables-nft's loader as one `--noflush` restore (what a naive
    /// sync of the whole text would run); `None` for the others.
    pub fn noflush_loader_argv(self, file: &Path) -> Option<Vec<String>> {
        (self == Subject::Ours(BackendKind::IptablesNft)).then(|| {
            vec![
                "iptables-nft-restore".into(),
                "--noflush".into(),
                file.to_string_lossy().into_owned(),
            ]
        })
    }

    /// The loader's command line without `--noflush` (iptables only; for
    /// nft the same as [`Subject::loader_argv`]): a plain restore, which
    /// replaces whole tables instead of checking every chain against the
    /// kernel's. Used to show where iptables-nft's time goes and to load
    /// the data-plane rules at sizes the `--noflush` restore cannot reach
    /// in time.
    pub fn plain_loader_argv(self, file: &Path) -> Vec<String> {
        let mut argv = self.loader_argv(file);
        argv.retain(|a| a != "--noflush");
        argv
    }

    /// How many rules (nft statements in chains; iptables `-A` lines) the
    /// namespace holds: proof that a sync put something in the kernel.
    pub fn rules_in(self, ns: &Ns, timeout: std::time::Duration) -> anyhow::Result<usize> {
        if self.is_nft() {
            let text = ns.exec_timeout(&["nft", "list", "ruleset"], timeout)?;
            // Rules are the indented lines inside chains that are not
            // declarations.
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    !l.is_empty()
                        && !l.starts_with("table ")
                        && !l.starts_with("chain ")
                        && !l.starts_with("set ")
                        && !l.starts_with("map ")
                        && !l.starts_with("type ")
                        && !l.starts_with("flags ")
                        && !l.starts_with("elements ")
                        && !l.starts_with("comment ")
                        && !l.starts_with("timeout ")
                        && !l.starts_with("size ")
                        && l != &"}"
                })
                .count())
        } else {
            let save = match self {
                Subject::Ours(BackendKind::IptablesLegacy) => "iptables-legacy-save",
                _ => "iptables-nft-save",
            };
            let text = ns.exec_timeout(&[save], timeout)?;
            Ok(text.lines().filter(|l| l.starts_with("-A ")).count())
        }
    }
}

/// A kproxy backend, bound to a namespace when `ns` is given (rendering
/// alone needs none).
pub fn backend(kind: BackendKind, ns: Option<&str>) -> anyhow::Result<Box<dyn Backend>> {
    Ok(match (kind, ns) {
        (BackendKind::Nftables, Some(ns)) => {
            Box::new(kproxy_nftables::NftablesBackend::in_netns(ns))
        }
        (BackendKind::Nftables, None) => Box::new(kproxy_nftables::NftablesBackend::new()),
        (BackendKind::IptablesNft, Some(ns)) => Box::new(
            kproxy_iptables::IptablesBackend::in_netns(kproxy_iptables::Flavour::Nft, ns),
        ),
        (BackendKind::IptablesNft, None) => Box::new(kproxy_iptables::IptablesBackend::new(
            kproxy_iptables::Flavour::Nft,
        )),
        (BackendKind::IptablesLegacy, Some(ns)) => Box::new(
            kproxy_iptables::IptablesBackend::in_netns(kproxy_iptables::Flavour::Legacy, ns),
        ),
        (BackendKind::IptablesLegacy, None) => Box::new(kproxy_iptables::IptablesBackend::new(
            kproxy_iptables::Flavour::Legacy,
        )),
    })
}
