//! `kproxy diff`: what the next full sync would change in the kernel, as a
//! readable diff of chains, rules, sets and elements, without applying
//! anything (kproxy-trace's diffs: compared by meaning, so the kernel's
//! re-printing of kproxy's own rules is not a change).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use kproxy_graph::{BackendKind, IpFamily};

use crate::backends;
use crate::cli::RenderBackend;
use crate::cmd_trace::live_rules;
use crate::input::{self, InputArgs};

/// `kproxy diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// The backend whose rules to compare.
    #[arg(long, value_enum)]
    pub backend: RenderBackend,
    /// Kubernetes YAML/JSON (a file or a directory) the next sync would
    /// render, as `kproxy run --source PATH` reads it.
    #[arg(long)]
    pub source: Vec<PathBuf>,
    /// Compare with a saved ruleset instead of the kernel's.
    #[arg(long)]
    pub current: Option<PathBuf>,
    /// Exit with status 1 when there are changes (for scripts).
    #[arg(long)]
    pub exit_code: bool,
    #[command(flatten)]
    pub input: InputArgs,
}

/// Run `kproxy diff`.
pub fn run(args: &DiffArgs) -> anyhow::Result<ExitCode> {
    let kind: BackendKind = args.backend.into();
    if args.source.is_empty() {
        bail!("--source PATH is required (the Kubernetes YAML the next sync would apply)");
    }
    let config = args
        .input
        .proxy_config(Some(backends::mode_for(kind)))
        .context("configuration")?;
    let graph = input::load_graph(&args.source, &config)?;
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
            let mut text = String::new();
            for fam in &config.families {
                match live_rules(kind, *fam) {
                    Ok(t) => text.push_str(&t),
                    // No table yet: everything is an addition.
                    Err(e) if kind == BackendKind::Nftables => {
                        eprintln!("note: {e:#}");
                    }
                    Err(e) => return Err(e),
                }
                if kind == BackendKind::Nftables && *fam == IpFamily::V6 {
                    text.push('\n');
                }
            }
            text
        }
    };
    let diff = match kind {
        BackendKind::Nftables => kproxy_trace::diff::nftables(&current, &desired),
        _ => kproxy_trace::diff::iptables(&current, &desired),
    }
    .context("comparing rulesets")?;
    print!("{}", diff.render());
    Ok(if args.exit_code && !diff.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
