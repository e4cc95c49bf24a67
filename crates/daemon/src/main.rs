//! `kproxy`: the node daemon and the offline tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod input;

/// kproxy: a Kubernetes Service proxy for Linux nodes.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print this node's service graph: service ports, VIPs, NodePorts,
    /// chosen cluster and local endpoints, the decisions, and warnings.
    Graph {
        #[command(flatten)]
        input: input::InputArgs,
        /// Kubernetes YAML/JSON files or directories.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Graph { input, files } => {
            let config = input.proxy_config(None).context("configuration")?;
            let graph = input::load_graph(&files, &config)?;
            print!("{}", kproxy_graph::display::graph(&graph));
            Ok(ExitCode::SUCCESS)
        }
    }
}
