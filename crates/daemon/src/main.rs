//! `kproxy`: the node daemon and the offline tools (the command line over
//! the `kproxy_daemon` library).

use std::process::ExitCode;

use clap::Parser as _;
use kproxy_daemon::{cleanup, cli, cmd_diff, cmd_trace, daemon, render, trace};

/// jemalloc instead of the system allocator (glibc malloc), which keeps
/// freed memory in its arenas: lower steady RSS and less CPU at 50,000
/// Services (docs/performance.md, "The allocator: jemalloc"; mimalloc was
/// measured as well and held more). Its options (one arena, a 1 s decay)
/// are compiled in from .cargo/config.toml; docs/operations.md, "Memory",
/// says why. Only the binary picks an allocator, never the libraries;
/// `--no-default-features` builds with the system allocator.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
