//! `kproxy-proto`: the proto-tests' helper binary. Echo servers, probes and
//! sysctls run inside namespaces through it; `run` runs scenarios and
//! `demo` shows the seed article's cluster working (`make demo`).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kproxy_proto_tests::runner::Applier;
use kproxy_proto_tests::wire::{self, Target};

mod demo;

/// kproxy's data-plane test helper.
#[derive(Debug, Parser)]
#[command(name = "kproxy-proto", about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Answer connections on each --listen target with where they arrived
    /// and whom they came from; runs until stdin closes.
    Echo {
        /// Name in the answers.
        #[arg(long)]
        label: String,
        /// `<ip>:<port>/<tcp|udp|sctp>`, repeated.
        #[arg(long)]
        listen: Vec<Target>,
    },
    /// The sink's echo server (TCP and UDP on every address of one port).
    Sink {
        /// The port everything is redirected to.
        #[arg(long)]
        port: u16,
    },
    /// Connect `count` times (a fresh source port each) and print one JSON
    /// line per attempt.
    Probe {
        /// `<ip>:<port>/<proto>`.
        #[arg(long)]
        to: Target,
        /// Source address to bind.
        #[arg(long)]
        bind: Option<IpAddr>,
        /// Source port (0: any).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Send `GET /` and report the HTTP status (health-check node ports).
        #[arg(long)]
        http: bool,
        /// Attempts.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Timeout of one attempt.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Write sysctls of the current network namespace (`key=value`, dotted).
    Sysctl {
        /// `net.ipv4.ip_forward=1`, ...
        settings: Vec<String>,
    },
    /// Exit 0 when SCTP sockets can be opened.
    SctpCheck,
    /// Run scenarios (all in proto-tests/scenarios/, or those named).
    Run {
        /// Scenario names (file stems), comma-separated.
        #[arg(long, env = "PROTO_SCENARIOS", default_value = "")]
        scenarios: String,
        /// Backends, comma-separated.
        #[arg(long, env = "PROTO_BACKENDS", default_value = "")]
        backends: String,
        /// Scenarios run at once.
        #[arg(long, env = "PROTO_JOBS", default_value_t = 3)]
        jobs: usize,
        /// The kproxy binary (default: build it).
        #[arg(long, env = "KPROXY_BIN")]
        kproxy: Option<PathBuf>,
        /// `run` (kproxy run --once in the node at every step), `daemon` (one
        /// kproxy run per scenario, following its source file) or `render`
        /// (kproxy render, loaded with nft / iptables-restore).
        #[arg(long, env = "PROTO_APPLY", default_value = "run")]
        apply: String,
    },
    /// The seed article's cluster in namespaces, served by kproxy's nftables
    /// backend: requests, the ruleset, clean-up.
    Demo {
        /// The kproxy binary (default: build it).
        #[arg(long, env = "KPROXY_BIN")]
        kproxy: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kproxy-proto: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Echo { label, listen } => {
            wire::serve_echo(&label, &listen).context("echo server")?;
        }
        Cmd::Sink { port } => {
            wire::serve_sink(port).context("sink")?;
        }
        Cmd::Probe {
            to,
            bind,
            port,
            http,
            count,
            timeout_ms,
        } => {
            let mut out = std::io::stdout().lock();
            let mut timeouts = 0;
            for _ in 0..count {
                let t = Duration::from_millis(timeout_ms);
                let a = if http {
                    wire::probe_http(&to, bind, t)
                } else {
                    wire::probe(&to, bind, port, t)
                };
                writeln!(out, "{}", serde_json::to_string(&a)?)?;
                // Two timeouts tell all there is to know (a DROP, or a broken
                // path); more would only cost seconds.
                if a == wire::Attempt::Timeout {
                    timeouts += 1;
                    if timeouts >= 2 {
                        break;
                    }
                }
            }
        }
        Cmd::Sysctl { settings } => {
            for s in settings {
                let (k, v) = s
                    .split_once('=')
                    .with_context(|| format!("{s:?}: want key=value"))?;
                let path = format!("/proc/sys/{}", k.replace('.', "/"));
                std::fs::write(&path, v).with_context(|| format!("writing {path}"))?;
            }
        }
        Cmd::SctpCheck => {
            if !wire::sctp_supported() {
                anyhow::bail!("no SCTP in this kernel");
            }
        }
        Cmd::Run {
            scenarios,
            backends,
            jobs,
            kproxy,
            apply,
        } => {
            let files = kproxy_proto_tests::scenario_files(&scenarios)?;
            let backends = kproxy_proto_tests::backends(&backends)?;
            let bin = match kproxy {
                Some(b) => b,
                None => kproxy_proto_tests::kproxy_binary()?,
            };
            let me = std::env::current_exe()?;
            let reports = kproxy_proto_tests::run_suite(
                &files,
                &backends,
                &me,
                &match apply.as_str() {
                    "render" => Applier::Render { bin },
                    "daemon" => Applier::Daemon { bin },
                    "run" => Applier::Kproxy { bin },
                    other => anyhow::bail!("--apply {other:?}: want run or render"),
                },
                jobs,
            )?;
            let failed: Vec<String> = reports
                .iter()
                .filter(|r| r.failed())
                .map(|r| format!("{} on {}", r.scenario, r.backend))
                .collect();
            eprintln!(
                "proto-tests: {} runs, {} failed{}",
                reports.len(),
                failed.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", failed.join(", "))
                }
            );
            if !failed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Demo { kproxy } => return demo::run(kproxy),
    }
    Ok(ExitCode::SUCCESS)
}
