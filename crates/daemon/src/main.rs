//! `kproxy`: the node daemon and the offline tools (the command line over
//! the `kproxy_daemon` library).

use std::process::ExitCode;

use clap::Parser as _;
use kproxy_daemon::{cleanup, cli, cmd_diff, cmd_trace, daemon, render, trace};

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
