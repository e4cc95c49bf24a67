//! `kproxy`: the node daemon and the offline tools.
//!
//! Modules: [`cli`] (arguments), [`input`] (YAML input and configuration),
//! [`settings`] (flags over the KubeProxyConfiguration file),
//! [`backends`] (construction and `auto` selection), [`render`] (offline
//! `graph` and `render`), [`daemon`] (`run`), [`source`] (API and file
//! sources), [`reconcile`] (the sync loop), [`hostaddrs`], [`health`], [`hcports`],
//! [`metrics`], [`http`], [`state`], [`conntrack`], [`sysctl`], [`cleanup`], [`trace`].

use std::process::ExitCode;

use clap::Parser as _;

mod backends;
mod cleanup;
mod cli;
mod cmd_diff;
mod cmd_trace;
mod conntrack;
mod daemon;
mod hcports;
mod health;
mod hostaddrs;
mod http;
mod input;
mod metrics;
mod reconcile;
mod render;
mod settings;
mod source;
mod state;
mod sysctl;
mod trace;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        cli::Command::Graph { input, files } => render::graph(&input, &files),
        cli::Command::Render {
            backend,
            input,
            files,
        } => render::render(backend.into(), &input, &files),
        cli::Command::Run(args) => daemon::main(&args),
        cli::Command::Trace(args) => cmd_trace::run(&args),
        cli::Command::Diff(args) => cmd_diff::run(&args),
        cli::Command::Cleanup { backend } => {
            trace::init(cli::LogFormat::Text);
            let errors = cleanup::run(backend);
            for e in &errors {
                eprintln!("kproxy cleanup: {e}");
            }
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
