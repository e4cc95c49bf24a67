//! The daemon's resolved settings: flags over the KubeProxyConfiguration
//! file over kube-proxy's defaults (`SetDefaults_KubeProxyConfiguration` in
//! pkg/proxy/apis/config/v1alpha1/defaults.go upstream).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kproxy_graph::config::parse_go_duration;
use kproxy_graph::{BackendKind, KubeProxyConfiguration, ProxyConfig, ProxyMode};

use crate::backends;
use crate::cli::RunArgs;
use crate::source::kube::RateLimit;

/// kube-proxy's default `syncPeriod`.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
/// kube-proxy's default `minSyncPeriod`.
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// kube-proxy's default `healthzBindAddress`.
pub const DEFAULT_HEALTHZ: &str = "0.0.0.0:10256";
/// kube-proxy's default `oomScoreAdj`: the last process the OOM killer
/// picks, since losing it stops Service updates on the node.
pub const DEFAULT_OOM_SCORE_ADJ: i32 = -999;
/// kube-proxy's default `metricsBindAddress`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:10249";

/// Everything `kproxy run` needs to know, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The backend in use.
    pub backend: BackendKind,
    /// How the nftables backend reaches the kernel.
    pub nftables_transport: kproxy_nftables::TransportKind,
    /// The graph configuration (mode matches the backend).
    pub proxy: ProxyConfig,
    /// Retry, drift-check and health-timeout base.
    pub sync_period: Duration,
    /// Minimum interval between syncs.
    pub min_sync_period: Duration,
    /// Maximum interval between full syncs.
    pub full_sync_period: Duration,
    /// `/healthz`, `/livez` listener; `None` when disabled.
    pub healthz_addr: Option<SocketAddr>,
    /// `/metrics` and debug listener; `None` when disabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Exit when a listener cannot bind (`bindAddressHardFail`).
    pub bind_address_hard_fail: bool,
    /// `oomScoreAdj` for this process (kube-proxy's default -999).
    pub oom_score_adj: Option<i32>,
    /// Kernel settings to apply at start.
    pub sysctls: Vec<crate::sysctl::Sysctl>,
    /// How to reach the API server (`clientConnection`, `--kubeconfig`).
    pub client: ClientSettings,
}

/// The API client's settings: `clientConnection` and `--kubeconfig`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientSettings {
    /// The kubeconfig; `None`: inferred (`KUBECONFIG`, `~/.kube/config`,
    /// in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// `clientConnection.qps`/`burst`; `None`: no limit.
    pub rate_limit: Option<RateLimit>,
}

/// Resolve the API client's settings. As in kube-proxy, a configuration
/// file's `clientConnection.kubeconfig` wins over `--kubeconfig` (a
/// warning says so when both are given and differ); unlike kube-proxy,
/// `--kubeconfig` is used when the file leaves it empty (kube-proxy would
/// then ignore the flag and use the in-cluster configuration).
pub fn client_settings(
    flag: Option<&PathBuf>,
    file: Option<&KubeProxyConfiguration>,
) -> anyhow::Result<ClientSettings> {
    let cc = match file {
        Some(f) => f.client_connection.resolve().context("configuration")?,
        None => kproxy_graph::config::ClientConnectionConfiguration::default()
            .resolve()
            .context("configuration")?,
    };
    let kubeconfig = match (cc.kubeconfig, flag) {
        (Some(from_file), Some(from_flag)) => {
            if &from_file != from_flag {
                tracing::warn!(
                    used = %from_file.display(),
                    ignored = %from_flag.display(),
                    "clientConnection.kubeconfig in the configuration file wins over --kubeconfig (KUBECONFIG), as in kube-proxy"
                );
            }
            Some(from_file)
        }
        (from_file, from_flag) => from_file.or_else(|| from_flag.cloned()),
    };
    Ok(ClientSettings {
        kubeconfig,
        rate_limit: cc.qps.map(|qps| RateLimit {
            qps,
            burst: cc.burst,
        }),
    })
}

impl Settings {
    /// Resolve the settings of `run`.
    pub fn resolve(args: &RunArgs) -> anyhow::Result<Self> {
        let file = args.input.config_file()?;
        let config_mode = match file.as_ref().and_then(|f| f.mode.as_deref()) {
            None | Some("") => None,
            Some("iptables") => Some(ProxyMode::Iptables),
            Some("nftables") => Some(ProxyMode::Nftables),
            Some(other) => bail!(
                "KubeProxyConfiguration field mode: {other:?} is not supported by kproxy (iptables or nftables)"
            ),
        };
        let nftables_transport = match (
            args.nftables_transport,
            file.as_ref().and_then(|f| f.nftables.transport.as_deref()),
        ) {
            (Some(a), _) => a.into(),
            (None, None | Some("")) => kproxy_nftables::TransportKind::default(),
            (None, Some("netlink")) => kproxy_nftables::TransportKind::Netlink,
            (None, Some("exec")) => kproxy_nftables::TransportKind::Exec,
            (None, Some(other)) => bail!(
                "KubeProxyConfiguration field nftables.transport: {other:?} is not netlink or exec"
            ),
        };
        let backend = backends::resolve_with(args.backend, config_mode, nftables_transport)?;
        // Like kube-proxy, the node name defaults to the host name.
        let mut input = args.input.clone();
        let named_in_file = file
            .as_ref()
            .and_then(|f| f.hostname_override.as_deref())
            .is_some_and(|h| !h.trim().is_empty());
        if input.node_name.is_none() && !named_in_file {
            input.node_name = host_name();
        }
        let mut proxy = input
            .proxy_config_with(file.as_ref(), Some(backends::mode_for(backend)))
            .context("configuration")?;
        if let Some(name) = &args.proxy_name {
            proxy.proxy_name = Some(name.clone());
        }
        let empty = KubeProxyConfiguration::default();
        let f = file.as_ref().unwrap_or(&empty);
        let (mode_sync, mode_min) = match backend.mode() {
            ProxyMode::Nftables => (f.nftables.sync_period, f.nftables.min_sync_period),
            ProxyMode::Iptables => (f.iptables.sync_period, f.iptables.min_sync_period),
        };
        let sync_period = duration_setting(
            "--sync-period",
            args.sync_period.as_deref(),
            f.sync_period.or(mode_sync).map(|d| d.0),
            DEFAULT_SYNC_PERIOD,
        )?;
        let min_sync_period = duration_setting(
            "--min-sync-period",
            args.min_sync_period.as_deref(),
            f.min_sync_period.or(mode_min).map(|d| d.0),
            DEFAULT_MIN_SYNC_PERIOD,
        )?;
        if sync_period.is_zero() {
            bail!("syncPeriod must be greater than 0");
        }
        if min_sync_period > sync_period {
            bail!(
                "minSyncPeriod ({min_sync_period:?}) must not exceed syncPeriod ({sync_period:?})"
            );
        }
        let full_sync_period = parse_go_duration(&args.full_sync_period).with_context(|| {
            format!(
                "--full-sync-period: {:?} is not a duration (30s, 1h)",
                args.full_sync_period
            )
        })?;
        let healthz_addr = bind_setting(
            "healthzBindAddress",
            args.healthz_bind_address
                .as_deref()
                .or(f.healthz_bind_address.as_deref())
                .unwrap_or(DEFAULT_HEALTHZ),
            10256,
        )?;
        let metrics_addr = bind_setting(
            "metricsBindAddress",
            args.metrics_bind_address
                .as_deref()
                .or(f.metrics_bind_address.as_deref())
                .unwrap_or(DEFAULT_METRICS),
            10249,
        )?;
        let client = client_settings(args.kubeconfig.as_ref(), file.as_ref())?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sysctls = crate::sysctl::wanted(file.as_ref(), &proxy, backend, cores);
        let oom_score_adj = match args.oom_score_adj.or(f.oom_score_adj) {
            Some(v) if !(-1000..=1000).contains(&v) => {
                bail!("oomScoreAdj: {v} is outside -1000..1000")
            }
            Some(v) => Some(v),
            None => Some(DEFAULT_OOM_SCORE_ADJ),
        };
        Ok(Settings {
            client,
            bind_address_hard_fail: args.bind_address_hard_fail
                || f.bind_address_hard_fail.unwrap_or(false),
            oom_score_adj,
            sysctls,
            backend,
            nftables_transport,
            proxy,
            sync_period,
            min_sync_period,
            full_sync_period,
            healthz_addr,
            metrics_addr,
        })
    }
}

/// The host name, lower-cased (kube-proxy's default node name).
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
}

fn duration_setting(
    flag: &str,
    from_flag: Option<&str>,
    from_file: Option<Duration>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match from_flag {
        Some(s) => parse_go_duration(s)
            .with_context(|| format!("{flag}: {s:?} is not a duration (30s, 1m, 500ms)")),
        None => Ok(from_file.unwrap_or(default)),
    }
}

/// Parse a bind address: `ip:port`, `[v6]:port`, a bare IP (default port)
/// or empty (disabled). Port 0 also disables, as in kube-proxy.
pub fn bind_setting(field: &str, s: &str, default_port: u16) -> anyhow::Result<Option<SocketAddr>> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let addr = if let Ok(a) = s.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        SocketAddr::new(ip, default_port)
    } else if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .with_context(|| format!("{field}: {s:?} has an invalid port"))?;
        SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)
    } else {
        bail!("{field}: {s:?} is not an address (ip:port)");
    };
    Ok((addr.port() != 0).then_some(addr))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn resolve(config: &str, flags: &[&str]) -> anyhow::Result<Settings> {
        let path = std::env::temp_dir().join(format!(
            "kproxy-settings-{}-{}.yaml",
            std::process::id(),
            flags.len() + config.len()
        ));
        std::fs::write(&path, config).unwrap();
        let mut argv = vec!["kproxy", "run", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(flags);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let r = Settings::resolve(&args);
        std::fs::remove_file(&path).unwrap();
        r
    }

    const BASE: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhostnameOverride: n1\n";

    #[test]
    fn flags_override_the_file() {
        let cfg = format!(
            "{BASE}mode: nftables\nsyncPeriod: 10s\nnftables:\n  minSyncPeriod: 2s\nhealthzBindAddress: 127.0.0.2:9999\nmetricsBindAddress: 127.0.0.1:1\n"
        );
        let s = resolve(&cfg, &["--sync-period", "5s", "--metrics-bind-address", ""]).unwrap();
        assert_eq!(s.backend, BackendKind::Nftables, "mode from the file");
        assert_eq!(s.proxy.mode, ProxyMode::Nftables);
        assert_eq!(s.sync_period, Duration::from_secs(5));
        assert_eq!(s.min_sync_period, Duration::from_secs(2));
        assert_eq!(s.healthz_addr, Some("127.0.0.2:9999".parse().unwrap()));
        assert_eq!(s.metrics_addr, None, "an empty flag disables");
        assert_eq!(s.proxy.node_name, "n1");
        let s = resolve(&cfg, &["--backend", "iptables-legacy", "--node-name", "n2"]).unwrap();
        assert_eq!(s.backend, BackendKind::IptablesLegacy);
        assert_eq!(
            s.proxy.mode,
            ProxyMode::Iptables,
            "the graph follows the backend"
        );
        assert_eq!(s.proxy.node_name, "n2");
        assert_eq!(s.sync_period, Duration::from_secs(10));
        assert_eq!(
            s.min_sync_period, DEFAULT_MIN_SYNC_PERIOD,
            "nftables.* is not iptables'"
        );
    }

    #[test]
    fn invalid_values_name_the_field() {
        let e = |cfg: &str, flags: &[&str]| format!("{:#}", resolve(cfg, flags).unwrap_err());
        assert!(
            e(&format!("{BASE}healthzBindAddress: nowhere\n"), &[]).contains("healthzBindAddress")
        );
        assert!(e(&format!("{BASE}mode: ipvs\n"), &[]).contains("mode"));
        assert!(
            e(
                &format!("{BASE}syncPeriod: 1s\nminSyncPeriod: 2s\n"),
                &["--backend", "nftables"]
            )
            .contains("minSyncPeriod")
        );
        assert!(
            e(
                &format!("{BASE}syncPeriod: often\n"),
                &["--backend", "nftables"]
            )
            .contains("often")
        );
        assert!(
            e(
                &format!("{BASE}clusterCIDRs: 10.0.0.0/8\n"),
                &["--backend", "nftables"]
            )
            .contains("clusterCIDRs")
        );
        assert!(
            e(BASE, &["--backend", "nftables", "--min-sync-period", "x"])
                .contains("--min-sync-period")
        );
        assert!(
            e(
                &format!("{BASE}oomScoreAdj: -2000\n"),
                &["--backend", "nftables"]
            )
            .contains("oomScoreAdj")
        );
    }

    #[test]
    fn client_connection_settings() {
        let s = resolve(BASE, &["--backend", "nftables"]).unwrap();
        assert_eq!(
            s.client,
            ClientSettings {
                kubeconfig: None,
                rate_limit: Some(RateLimit {
                    qps: 5.0,
                    burst: 10
                }),
            },
            "kube-proxy's defaults"
        );
        let cfg = format!(
            "{BASE}clientConnection:\n  kubeconfig: /etc/kproxy/kubeconfig\n  qps: 50\n  burst: 100\n  contentType: \"\"\n"
        );
        let s = resolve(&cfg, &["--backend", "nftables"]).unwrap();
        assert_eq!(
            s.client.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/kproxy/kubeconfig"))
        );
        assert_eq!(
            s.client.rate_limit,
            Some(RateLimit {
                qps: 50.0,
                burst: 100
            })
        );
        // The file wins over the flag, as in kube-proxy...
        let s = resolve(&cfg, &["--backend", "nftables", "--kubeconfig", "/flag"]).unwrap();
        assert_eq!(
            s.client.kubeconfig.as_deref(),
            Some(std::path::Path::new("/etc/kproxy/kubeconfig"))
        );
        // ...and the flag is used when the file says nothing.
        let s = resolve(BASE, &["--backend", "nftables", "--kubeconfig", "/flag"]).unwrap();
        assert_eq!(
            s.client.kubeconfig.as_deref(),
            Some(std::path::Path::new("/flag"))
        );
        let e = format!(
            "{:#}",
            resolve(
                &format!(
                    "{BASE}clientConnection:\n  contentType: application/vnd.kubernetes.protobuf\n"
                ),
                &["--backend", "nftables"]
            )
            .unwrap_err()
        );
        assert!(e.contains("clientConnection.contentType"), "{e}");
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(
            bind_setting("f", "0.0.0.0:10256", 1).unwrap(),
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            bind_setting("f", "127.0.0.1", 10249).unwrap(),
            Some("127.0.0.1:10249".parse().unwrap())
        );
        assert_eq!(
            bind_setting("f", ":9000", 1).unwrap(),
            Some("0.0.0.0:9000".parse().unwrap())
        );
        assert_eq!(bind_setting("f", "", 1).unwrap(), None);
        assert_eq!(bind_setting("f", "1.2.3.4:0", 1).unwrap(), None);
        let e = bind_setting("healthzBindAddress", "nowhere", 1).unwrap_err();
        assert!(e.to_string().contains("healthzBindAddress"), "{e}");
    }
}
