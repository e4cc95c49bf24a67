//! The kernel settings kube-proxy manages (its `conntrack` configuration,
//! pkg/proxy/apis/config/types.go upstream): conntrack
//! table size and timeouts from `conntrack.*`, and `route_localnet` for
//! localhost NodePorts in iptables mode.
//!
//! Differences from kube-proxy, on purpose: `nf_conntrack_max` (and the
//! hash size in /sys, which is host-global even inside a network
//! namespace) are only changed when `conntrack.maxPerCore`/`min` or their
//! flags are set explicitly, never from defaults; and a setting that
//! cannot be written (a read-only /proc/sys in an unprivileged container)
//! is a warning, not a fatal error, since the proxy works without it.

use std::path::Path;
use std::time::Duration;

use kproxy_graph::{BackendKind, KubeProxyConfiguration, ProxyConfig};

/// kube-proxy's default `conntrack.tcpEstablishedTimeout`.
pub const DEFAULT_TCP_ESTABLISHED: Duration = Duration::from_secs(24 * 3600);
/// kube-proxy's default `conntrack.tcpCloseWaitTimeout`.
pub const DEFAULT_TCP_CLOSE_WAIT: Duration = Duration::from_secs(3600);

/// One sysctl to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Path under /proc/sys, dotted (`net.netfilter.nf_conntrack_max`).
    pub name: &'static str,
    /// The value.
    pub value: String,
}

/// The sysctls the configuration asks for.
pub fn wanted(
    file: Option<&KubeProxyConfiguration>,
    proxy: &ProxyConfig,
    backend: BackendKind,
    cores: usize,
) -> Vec<Sysctl> {
    let empty = KubeProxyConfiguration::default();
    let ct = &file.unwrap_or(&empty).conntrack;
    let mut out = Vec::new();
    let secs = |d: Duration| d.as_secs().to_string();
    // maxPerCore 0 means "leave as is", as upstream.
    if ct.max_per_core.is_some() || ct.min.is_some() {
        let per_core = ct.max_per_core.unwrap_or(32768).max(0) as u64;
        let min = ct.min.unwrap_or(131072).max(0) as u64;
        if per_core > 0 {
            let max = (per_core * cores as u64).max(min);
            out.push(Sysctl {
                name: "net.netfilter.nf_conntrack_max",
                value: max.to_string(),
            });
        }
    }
    let timeouts = [
        (
            "net.netfilter.nf_conntrack_tcp_timeout_established",
            ct.tcp_established_timeout,
            DEFAULT_TCP_ESTABLISHED,
        ),
        (
            "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
            ct.tcp_close_wait_timeout,
            DEFAULT_TCP_CLOSE_WAIT,
        ),
    ];
    for (name, set, default) in timeouts {
        let t = set.map(|d| d.0).unwrap_or(default);
        if !t.is_zero() {
            out.push(Sysctl {
                name,
                value: secs(t),
            });
        }
    }
    if ct.tcp_be_liberal == Some(true) {
        out.push(Sysctl {
            name: "net.netfilter.nf_conntrack_tcp_be_liberal",
            value: "1".into(),
        });
    }
    if let Some(d) = ct.udp_timeout.filter(|d| !d.0.is_zero()) {
        out.push(Sysctl {
            name: "net.netfilter.nf_conntrack_udp_timeout",
            value: secs(d.0),
        });
    }
    if let Some(d) = ct.udp_stream_timeout.filter(|d| !d.0.is_zero()) {
        out.push(Sysctl {
            name: "net.netfilter.nf_conntrack_udp_timeout_stream",
            value: secs(d.0),
        });
    }
    // 127.0.0.1:<nodePort> needs the kernel to route to loopback
    // destinations after DNAT (iptables backends only; nftables mode has no
    // localhost NodePorts), and only when nodePortAddresses admits
    // loopback, as kube-proxy.
    if backend.mode() == kproxy_graph::ProxyMode::Iptables && proxy.ipv4_localhost_nodeports() {
        out.push(Sysctl {
            name: "net.ipv4.conf.all.route_localnet",
            value: "1".into(),
        });
    }
    out
}

fn proc_path(name: &str) -> std::path::PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

/// Apply `sysctls`, skipping values already set; failures are logged.
pub fn apply(sysctls: &[Sysctl]) {
    for s in sysctls {
        let path = proc_path(s.name);
        match std::fs::read_to_string(&path) {
            Ok(cur) if cur.trim() == s.value => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(sysctl = s.name, error = %e, "cannot read sysctl (is nf_conntrack loaded?)");
                continue;
            }
        }
        match std::fs::write(&path, &s.value) {
            Ok(()) => tracing::info!(sysctl = s.name, value = %s.value, "set sysctl"),
            Err(e) => tracing::warn!(sysctl = s.name, value = %s.value, error = %e,
                "cannot set sysctl; continuing without it"),
        }
    }
}

/// Whether `net.netfilter.nf_conntrack_tcp_be_liberal` is set (non-zero)
/// on this node; `false` when it cannot be read (no nf_conntrack), as
/// kube-proxy.
pub fn tcp_be_liberal() -> bool {
    std::fs::read_to_string(proc_path("net.netfilter.nf_conntrack_tcp_be_liberal"))
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|v| v != 0)
}

/// Set this process's OOM score adjustment; failures are logged.
pub fn oom_score_adj(value: i32) {
    match std::fs::write("/proc/self/oom_score_adj", value.to_string()) {
        Ok(()) => tracing::debug!(value, "set oom_score_adj"),
        Err(e) => tracing::warn!(value, error = %e, "cannot set oom_score_adj"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_sysctls_follow_the_configuration() {
        let cfg = KubeProxyConfiguration::from_yaml(
            "conntrack:\n  maxPerCore: 1000\n  min: 5000\n  tcpEstablishedTimeout: 2h\n  tcpBeLiberal: true\n  udpTimeout: 30s\n",
        )
        .unwrap();
        let pc = ProxyConfig::default();
        let s = wanted(Some(&cfg), &pc, BackendKind::Nftables, 2);
        let get = |n: &str| s.iter().find(|x| x.name == n).map(|x| x.value.clone());
        for (name, want) in [
            ("net.netfilter.nf_conntrack_max", Some("5000")),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                Some("7200"),
            ),
            (
                "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
                Some("3600"),
            ),
            ("net.netfilter.nf_conntrack_tcp_be_liberal", Some("1")),
            ("net.netfilter.nf_conntrack_udp_timeout", Some("30")),
            // Not in nftables mode.
            ("net.ipv4.conf.all.route_localnet", None),
        ] {
            assert_eq!(get(name).as_deref(), want, "{name}");
        }

        let s = wanted(None, &pc, BackendKind::IptablesNft, 2);
        assert!(
            s.iter().all(|x| x.name != "net.netfilter.nf_conntrack_max"),
            "never from defaults"
        );
        assert!(
            s.iter()
                .any(|x| x.name == "net.ipv4.conf.all.route_localnet")
        );
    }

    #[test]
    fn route_localnet_only_when_nodeport_addresses_admit_loopback() {
        use kproxy_graph::config::parse_nodeport_addresses;
        let with = |entries: &[&str]| {
            let pc = ProxyConfig {
                nodeport_addresses: parse_nodeport_addresses(
                    "nodePortAddresses",
                    &entries.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                )
                .unwrap(),
                ..ProxyConfig::default()
            };
            wanted(None, &pc, BackendKind::IptablesLegacy, 2)
                .iter()
                .any(|x| x.name == "net.ipv4.conf.all.route_localnet")
        };
        assert!(with(&[]), "unset: every address, loopback included");
        assert!(with(&["127.0.0.0/8"]));
        assert!(with(&["0.0.0.0/0"]));
        assert!(with(&["fd00::/64"]), "no IPv4 entry: every IPv4 address");
        assert!(!with(&["192.168.0.0/24"]), "a CIDR excluding loopback");
        assert!(!with(&["primary"]));
        assert!(!with(&["192.168.0.0/24", "fd00::/64"]));
    }
}
