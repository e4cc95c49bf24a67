//! The iptables [`Flavour`]s (legacy, nft): their tools, lock arguments,
//! the runner the tools need ([`xtables_runner`]), and [`detect_flavour`],
//! which picks the flavour the host uses.

use kproxy_exec::Runner;
use kproxy_graph::{BackendKind, IpFamily};

/// The oldest iptables whose MASQUERADE takes `--random-fully`
/// (kube-proxy's `RandomFullyMinVersion` in pkg/util/iptables).
pub const RANDOM_FULLY_MIN_VERSION: [u32; 3] = [1, 6, 2];

/// The version in the output of `iptables --version`
/// (`iptables v1.8.7 (nf_tables)`): the first `v` followed by two or
/// three dotted numbers, as kube-proxy's `getIPTablesVersion` reads it,
/// with a missing patch number as 0 (`v1.8` is 1.8.0).
pub fn parse_iptables_version(out: &str) -> Option<[u32; 3]> {
    out.split_whitespace().find_map(|word| {
        let nums: Vec<&str> = word.strip_prefix('v')?.split('.').collect();
        if !(2..=3).contains(&nums.len()) {
            return None;
        }
        let mut v = [0; 3];
        for (slot, n) in v.iter_mut().zip(&nums) {
            *slot = n.parse().ok()?;
        }
        Some(v)
    })
}

/// Whether the iptables that printed `version_output` (its `--version`)
/// takes `--random-fully`: 1.6.2 or newer. `None` when no version is in
/// it.
pub fn random_fully_supported(version_output: &str) -> Option<bool> {
    Some(parse_iptables_version(version_output)? >= RANDOM_FULLY_MIN_VERSION)
}

/// Which iptables implementation programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// The legacy xtables kernel interface (`iptables-legacy*`): every
    /// restore replaces whole tables, serialised by the xtables lock.
    Legacy,
    /// iptables rules translated to nf_tables (`iptables-nft*`): each
    /// restore is one nf_tables transaction; no xtables lock.
    Nft,
}

impl Flavour {
    /// The backend this flavour implements.
    pub fn kind(self) -> BackendKind {
        match self {
            Flavour::Legacy => BackendKind::IptablesLegacy,
            Flavour::Nft => BackendKind::IptablesNft,
        }
    }

    fn tool(self, family: IpFamily, suffix: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let f = match self {
            Flavour::Legacy => "legacy",
            Flavour::Nft => "nft",
        };
        format!("{base}-{f}{suffix}")
    }

    /// `iptables-legacy-restore`, `ip6tables-nft-restore`, ...
    pub fn restore_binary(self, family: IpFamily) -> String {
        self.tool(family, "-restore")
    }

    /// `iptables-legacy-save`, ...
    pub fn save_binary(self, family: IpFamily) -> String {
        self.tool(family, "-save")
    }

    /// `iptables-legacy`, ...
    pub fn iptables_binary(self, family: IpFamily) -> String {
        self.tool(family, "")
    }

    /// Whether this flavour's `iptables` takes `--random-fully` on
    /// MASQUERADE, from its `iptables --version` run through `runner` (as
    /// kube-proxy's iptables runner decides `HasRandomFully`): `None` when
    /// the tool cannot be run or its version read.
    pub fn has_random_fully(self, runner: &Runner) -> Option<bool> {
        let out = runner
            .run(&self.iptables_binary(IpFamily::V4), &["--version"], None)
            .ok()?;
        random_fully_supported(&out)
    }

    /// Lock arguments: the legacy flavour serialises on the xtables lock,
    /// so wait for it up to 5 s as kube-proxy does (`-w 5`; kube-proxy's
    /// `-W 100000` poll interval is ignored by current iptables, 1.8.9
    /// only prints a deprecation warning for it); nf_tables
    /// transactions need no lock.
    pub fn lock_args(self) -> &'static [&'static str] {
        match self {
            Flavour::Legacy => &["-w", "5"],
            Flavour::Nft => &[],
        }
    }
}

/// The environment variable the iptables tools read their lock file from.
const XTABLES_LOCKFILE: &str = "XTABLES_LOCKFILE";

/// `runner` as the iptables tools need it. The legacy tools serialise on
/// the host-wide `/run/xtables.lock`, although a namespace's tables are
/// its own; inside a network namespace they get a lock file of their own
/// (`XTABLES_LOCKFILE`) so that a long restore elsewhere on the machine
/// cannot make their commands time out.
pub fn xtables_runner(runner: &Runner) -> Runner {
    match runner.netns() {
        Some(ns) if runner.env(XTABLES_LOCKFILE).is_none() => {
            let lock = std::env::temp_dir().join(format!("kproxy-xtables-{ns}.lock"));
            runner
                .clone()
                .with_env(XTABLES_LOCKFILE, &lock.to_string_lossy())
        }
        _ => runner.clone(),
    }
}

fn has_hint(save: &str) -> bool {
    save.lines()
        .any(|l| l.starts_with(":KUBE-IPTABLES-HINT") || l.starts_with(":KUBE-KUBELET-CANARY"))
}

fn rule_lines(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with('-')).count()
}

/// Which flavour the host uses, decided as kubernetes-sigs/iptables-wrappers
/// does (its `iptables-wrapper-installer.sh`).
pub fn detect_flavour() -> Flavour {
    detect_flavour_with(&Runner::host())
}

/// [`detect_flavour`] through `runner` (tests run it in a namespace):
/// 1. kubelet's hint chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`)
///    in nft's mangle table → nft;
/// 2. the same in legacy's tables (read without `-t mangle`, so the table
///    is not created) → legacy;
/// 3. else the flavour with more rules; nft on a tie.
pub fn detect_flavour_with(runner: &Runner) -> Flavour {
    let runner = xtables_runner(runner);
    let out = |program: &str, args: &[&str]| -> String {
        runner.run(program, args, None).unwrap_or_default()
    };
    let nft_mangle = out("xtables-nft-multi", &["iptables-save", "-t", "mangle"])
        + &out("xtables-nft-multi", &["ip6tables-save", "-t", "mangle"]);
    if has_hint(&nft_mangle) {
        return Flavour::Nft;
    }
    let legacy = out("xtables-legacy-multi", &["iptables-save"])
        + &out("xtables-legacy-multi", &["ip6tables-save"]);
    if has_hint(&legacy) {
        return Flavour::Legacy;
    }
    let nft = out("xtables-nft-multi", &["iptables-save"])
        + &out("xtables-nft-multi", &["ip6tables-save"]);
    if rule_lines(&legacy) > rule_lines(&nft) {
        Flavour::Legacy
    } else {
        Flavour::Nft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_iptables_version() {
        for (out, want) in [
            ("iptables v1.8.7 (nf_tables)\n", Some([1, 8, 7])),
            ("iptables v1.8.9 (legacy)\n", Some([1, 8, 9])),
            ("ip6tables v1.6.1\n", Some([1, 6, 1])),
            ("iptables v1.8 (legacy)", Some([1, 8, 0])),
            ("iptables version v2", None),
            ("iptables-legacy: command not found", None),
            ("iptables vX.Y.Z", None),
            ("", None),
        ] {
            assert_eq!(parse_iptables_version(out), want, "{out:?}");
        }
    }

    #[test]
    fn random_fully_from_1_6_2() {
        let has = random_fully_supported;
        assert_eq!(has("iptables v1.6.1"), Some(false));
        assert_eq!(has("iptables v1.6.2"), Some(true));
        assert_eq!(has("iptables v1.4.21"), Some(false));
        assert_eq!(has("iptables v1.8.7 (nf_tables)"), Some(true));
        assert_eq!(has("iptables v1.10.0 (legacy)"), Some(true));
        assert_eq!(has("iptables: unknown option"), None);
    }

    #[test]
    fn asks_the_flavours_iptables() {
        // Through the runner, as the backend asks before its first sync:
        // the node's iptables is 1.8, so both flavours take the flag.
        for flavour in [Flavour::Legacy, Flavour::Nft] {
            assert_eq!(
                flavour.has_random_fully(&Runner::host()),
                Some(true),
                "{flavour:?}"
            );
        }
    }
}
