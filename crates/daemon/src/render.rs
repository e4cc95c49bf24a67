//! The offline commands: `graph` and `render`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use kproxy_graph::BackendKind;

use crate::backends;
use crate::input::{self, InputArgs};

/// `kproxy graph`.
pub fn graph(input: &InputArgs, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let config = input.proxy_config(None).context("configuration")?;
    let graph = input::load_graph(files, &config)?;
    let text = kproxy_graph::display::graph(&graph);
    print!("{text}");
    exiting((graph, text));
    Ok(ExitCode::SUCCESS)
}

/// Leave `data` unfreed: the process ends next, and freeing a large
/// graph (about 30 M instructions at 10,000 Services) would only delay
/// the exit. The system takes the memory back; the peak is the same.
fn exiting<T>(data: T) {
    std::mem::forget(data);
}

/// `kproxy render`: the ruleset a full sync would apply.
pub fn render(kind: BackendKind, input: &InputArgs, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let config = input
        .proxy_config(Some(backends::mode_for(kind)))
        .context("configuration")?;
    let graph = input::load_graph(files, &config)?;
    for w in &graph.warnings {
        eprintln!("warning: {}", crate::trace::escape_controls(&w.to_string()));
    }
    let backend = backends::make_backend(kind)?;
    let text = backend
        .render_full(&graph)
        .with_context(|| format!("rendering {kind} rules"))?;
    print!("{text}");
    exiting((graph, text));
    Ok(ExitCode::SUCCESS)
}
