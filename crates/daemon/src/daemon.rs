//! `kproxy run`: settings, listeners, source, reconcile loop.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::RunArgs;
use crate::health::ProxyHealth;
use crate::reconcile::{LoopOptions, Reconciler};
use crate::settings::Settings;
use crate::source::{Source, SourceOptions};
use crate::state::{Shared, Status};
use crate::{backends, health, http, metrics, trace};

/// Run the daemon (or one sync with `--once`).
pub fn main(args: &RunArgs) -> anyhow::Result<ExitCode> {
    trace::init(args.log_format);
    let settings = Settings::resolve(args)?;
    tracing::info!(
        backend = %settings.backend,
        nftables_transport = settings.nftables_transport.as_str(),
        requested = args.backend.map_or("default", backends::BackendArg::as_str),
        node = %settings.proxy.node_name,
        source = %args.source,
        sync_period = ?settings.sync_period,
        min_sync_period = ?settings.min_sync_period,
        "kproxy starting"
    );
    raise_open_file_limit();
    if !args.dry_run {
        crate::sysctl::apply(&settings.sysctls);
        if let Some(adj) = settings.oom_score_adj {
            crate::sysctl::oom_score_adj(adj);
        }
    }
    // As kube-proxy, read after the configured sysctls are set: the
    // node's value decides, whoever set it.
    let options = backends::BackendOptions {
        tcp_be_liberal: crate::sysctl::tcp_be_liberal(),
        nft_transport: settings.nftables_transport,
    };
    if options.tcp_be_liberal {
        tracing::info!(
            "nf_conntrack_tcp_be_liberal is set: no DROP rule for INVALID packets (iptables)"
        );
    }
    let mut backend = backends::make_backend_with(settings.backend, options)?;
    if args.dry_run {
        // Nothing touches the kernel: each distinct ruleset is printed.
        backend = Box::new(kproxy_graph::DryRun::new(
            backend,
            Box::new(|text: &str| print!("{text}")),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The HTTP listeners get a runtime of their own, so that nothing the
    // sync loop does (a long graph update, a kernel transaction, a source
    // flooding events) can delay /livez and /healthz; their heavy answers
    // (/rules, /graph) are rendered on its blocking pool.
    let http_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .thread_name("kproxy-http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let result = rt.block_on(run(args, settings, backend, http_rt.handle().clone()));
    http_rt.shutdown_background();
    result
}

/// Raise the open-file soft limit to the hard limit: every connection,
/// netlink socket and loader pipe is a descriptor, and the usual soft
/// limit of 1024 is far below what a node's daemon may need.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

async fn run(
    args: &RunArgs,
    settings: Settings,
    backend: Box<dyn kproxy_graph::Backend>,
    http_rt: tokio::runtime::Handle,
) -> anyhow::Result<ExitCode> {
    let shared = Shared::new(
        ProxyHealth::new(settings.sync_period * 2),
        Status {
            backend: Some(settings.backend),
            source: args.source.clone(),
            dry_run: args.dry_run,
            ..Status::default()
        },
    );
    shared.set_http_runtime(http_rt.clone());
    let mut tasks = Vec::new();
    if !args.once {
        let listeners: [(&str, Option<std::net::SocketAddr>, http::Handler); 2] = [
            (
                "healthz",
                settings.healthz_addr,
                health::handler(shared.clone()),
            ),
            (
                "metrics",
                settings.metrics_addr,
                metrics::handler(shared.clone()),
            ),
        ];
        for (what, addr, handler) in listeners {
            let Some(addr) = addr else { continue };
            match http::bind(what, addr) {
                Ok(l) => {
                    tracing::info!(%addr, listener = what, "serving");
                    tasks.push(http_rt.spawn(http::serve(
                        l,
                        handler,
                        http::Limits::LISTENER,
                        None,
                    )));
                }
                // kube-proxy's bindAddressHardFail: by default a listener
                // that cannot bind is logged and the proxy works on.
                Err(e) if !settings.bind_address_hard_fail => {
                    tracing::error!(error = %format!("{e:#}"), "continuing without this listener (bindAddressHardFail is false)");
                }
                Err(e) => return Err(e),
            }
        }
    }
    let source = Source::open(
        &args.source,
        SourceOptions {
            kubeconfig: settings.client.kubeconfig.clone(),
            node_name: settings.proxy.node_name.clone(),
            proxy_name: settings.proxy.proxy_name.clone(),
            rate_limit: settings.client.rate_limit,
            on_errors: Some(error_sink(shared.clone())),
        },
    )
    .await?;
    let opts = LoopOptions {
        // A dry run removes nothing: neither other modes' rules nor flows.
        cleanup_other_modes: !args.no_cleanup_other_modes && !args.dry_run,
        conntrack_cleanup: !args.no_conntrack_cleanup && !args.dry_run,
        health_check_node_ports: !args.no_health_check_node_ports && !args.once,
        host_addresses: true,
    };
    let reconciler = Reconciler::new(settings, opts, backend, shared.clone());
    let ok = reconciler
        .run(source, args.once, config_watch(args.input.config.clone()))
        .await?;
    for t in tasks {
        t.abort();
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        let err = shared
            .status()
            .last_error
            .as_ref()
            .map(|(_, e)| e.clone())
            .unwrap_or_default();
        eprintln!("kproxy: sync failed: {err}");
        Ok(ExitCode::FAILURE)
    }
}

/// Source errors into `/status` and the metrics as they come and go (the
/// reconcile loop refreshes `/status` only at syncs, and before the first
/// list there is none).
fn error_sink(shared: std::sync::Arc<Shared>) -> crate::source::ErrorSink {
    crate::source::ErrorSink::new(move |u: &crate::source::ErrorUpdate<'_>| {
        let label = crate::metrics::KindLabel {
            kind: u.kind.to_string(),
        };
        shared
            .metrics
            .source_errors
            .get_or_create(&label)
            .set(i64::from(u.error.is_some()));
        if u.error.is_some() {
            shared
                .metrics
                .source_errors_total
                .get_or_create(&label)
                .inc();
        }
        shared.status().source_errors.clone_from(&u.current);
    })
}

/// Resolves (with the file's name) when the `--config` file's content
/// changes; never without one. The content is read now, so a change made
/// while the first sync runs is not missed; then polled every second, like
/// the file source, so ConfigMap symlink swaps are seen.
fn config_watch(path: Option<std::path::PathBuf>) -> impl std::future::Future<Output = String> {
    let initial = path.as_ref().and_then(|p| std::fs::read(p).ok());
    async move {
        let Some(path) = path else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let now = std::fs::read(&path).ok();
            // An unreadable file mid-update is not a change; a different
            // one is.
            if now.is_some() && now != initial {
                return format!("configuration file {}", path.display());
            }
        }
    }
}
