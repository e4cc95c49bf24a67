//! `kproxy diff`: what the next full sync would change in the kernel, as a
//! readable diff of chains, rules, sets and elements, without applying
//! anything (kproxy-trace's diffs: compared by meaning, so the kernel's
//! re-printing of kproxy's own rules is not a change).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use kproxy_graph::{BackendKind, Objects, ProxyConfig, ServiceGraph};

use crate::backends;
use crate::cli::RenderBackend;
use crate::input::{self, InputArgs};

/// `kproxy diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// The backend whose rules to compare.
    #[arg(long, value_enum)]
    pub backend: RenderBackend,
    /// Where the next sync's cluster state comes from, as for `kproxy
    /// run`: `kube` (the API server: one initial listing) or Kubernetes
    /// YAML/JSON (a file or a directory).
    #[arg(long)]
    pub source: Option<String>,
    /// kubeconfig for `--source kube` (default: the config file's
    /// clientConnection.kubeconfig, which wins over this flag as in
    /// kube-proxy; else ~/.kube/config, then in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Compare with a saved ruleset instead of the kernel's.
    #[arg(long)]
    pub current: Option<PathBuf>,
    /// Exit with status 1 when there are changes (for scripts).
    #[arg(long)]
    pub exit_code: bool,
    #[allow(missing_docs, reason = "a flattened group: its fields are documented")]
    #[command(flatten)]
    pub input: InputArgs,
}

/// How long to wait for the API server's initial lists.
const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The objects the API server holds now (the daemon's own source, until its
/// initial lists are complete).
fn list_from_api(args: &DiffArgs, config: &ProxyConfig) -> anyhow::Result<Objects> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let client = crate::settings::client_settings(
            args.kubeconfig.as_ref(),
            args.input.config_file()?.as_ref(),
        )?;
        let opts = crate::source::SourceOptions {
            kubeconfig: client.kubeconfig,
            node_name: config.node_name.clone(),
            proxy_name: config.proxy_name.clone(),
            rate_limit: client.rate_limit,
            on_errors: None,
        };
        let mut src = crate::source::Source::open("kube", opts).await?;
        tokio::time::timeout(API_TIMEOUT, src.changed())
            .await
            .map_err(|_| {
                anyhow::anyhow!("no complete listing from the API server within {API_TIMEOUT:?}")
            })??;
        anyhow::Ok(src.snapshot())
    })
}

/// Run `kproxy diff`.
pub fn run(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let kind: BackendKind = args.backend.into();
    let Some(source) = &args.source else {
        bail!("--source kube|PATH is required (the cluster state the next sync would apply)");
    };
    let config = args
        .input
        .proxy_config(Some(backends::mode_for(kind)))
        .context("configuration")?;
    let graph = if source == "kube" {
        ServiceGraph::build(&list_from_api(args, &config)?, &config)
    } else {
        input::load_graph(&[PathBuf::from(source)], &config)?
    };
    for w in &graph.warnings {
        eprintln!("warning: {w}");
    }
    let desired = backends::make_backend(kind)?
        .render_full(&graph)
        .with_context(|| format!("rendering {kind} rules"))?;
    let current = match &args.current {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => {
            let mut backend = backends::make_backend(kind)?;
            let mut text = String::new();
            for fam in &config.families {
                // Nothing loaded yet: everything is an addition.
                match backend.dump_live(*fam)? {
                    Some(t) => text.push_str(&t),
                    None => eprintln!("note: no {fam} rules of kproxy are loaded ({kind})"),
                }
            }
            text
        }
    };
    let diff =
        kproxy_trace::diff::between(kind, &current, &desired).context("comparing rulesets")?;
    print!("{}", diff.render());
    Ok(if args.exit_code && !diff.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
