//! `kproxy-bench`: kproxy's benchmarks.
//!
//! - `kproxy-bench gen`: a seeded synthetic cluster ([`synth::Cluster`]) as
//!   Kubernetes YAML, for `kproxy run --source` or `kproxy render`;
//! - `kproxy-bench run`: the measurements ([`run::run`]), per backend
//!   ([`subjects::Subject`], including kube-proxy's nftables layout from
//!   [`kpnft`]), each kernel-facing one in fresh network namespaces
//!   ([`sys::Ns`]); results ([`results::Record`]) go to a Markdown report
//!   with SVG plots ([`report`]);
//! - hidden helpers the bench runs inside namespaces: `exec-rss` (a
//!   command's wall time and peak RSS), `serve` and `connect` (the data
//!   plane's listener and client, [`dataplane`]);
//! - `kproxy-bench drift-check` (hidden): the CPU time and memory of one
//!   drift check at a given size ([`driftcheck`]);
//! - `kproxy-bench intake`: `kproxy render` and `kproxy graph` of one
//!   cluster from YAML and from JSON, end to end ([`intake`]);
//! - `kproxy-bench conntrack-cleanup` (hidden): the time to find and delete
//!   stale UDP conntrack entries over ctnetlink ([`ctclean`]).
//!
//! Needs root (network namespaces). Never touches the host's own rules:
//! every rule goes into a namespace named `bch-<pid>-<n>`, deleted after
//! use.

mod ctclean;
mod dataplane;
mod driftcheck;
mod filesrc;
mod intake;
mod report;
mod results;
mod run;
mod subjects;
mod transports;

use kproxy_bench::{kpnft, synth, sys};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// When the process started (log timestamps).
pub static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// kproxy's benchmarks.
#[derive(Debug, Parser)]
#[command(name = "kproxy-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write a synthetic cluster as Kubernetes YAML (one `kind: List`).
    Gen {
        /// Number of Services.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Endpoints per Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Nodes the endpoints are spread over (node 0 is `bench-node`).
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Zones the nodes are spread over.
        #[arg(long, default_value_t = 3)]
        zones: usize,
        /// Seed (same seed, same cluster).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Percentage of Services with ClientIP affinity.
        #[arg(long, default_value_t = 5)]
        affinity_percent: u64,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print kube-proxy's nftables layout (the comparison baseline) for a
    /// synthetic cluster with the data-plane target, as `nft -f` input.
    KubeProxyNft {
        /// Number of Services.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Endpoints per Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the measurements and write the report.
    Run(Box<RunArgs>),
    /// The file source's change-to-kernel time: `kproxy run --source DIR`
    /// (nftables, in a fresh namespace) with a large cluster in one file;
    /// a small file beside it changes, timed until the sync that carried
    /// it ends. Prints the median, min and max.
    FileSource {
        /// Services in the large file.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Endpoints per Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Changes measured.
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// How the daemon finds changes (`KPROXY_FILE_WATCH`): auto, inotify, poll.
        #[arg(long, default_value = "auto")]
        watch: String,
        /// The `kproxy` binary (default: next to kproxy-bench).
        #[arg(long)]
        kproxy: Option<PathBuf>,
    },
    /// Intake speed: `kproxy render` and `kproxy graph` of one synthetic
    /// cluster from YAML and from JSON, each a process, runs alternating.
    /// Prints the median, min and max.
    Intake {
        /// Number of Services.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Endpoints per Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Runs per command and input.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// The backend `kproxy render` renders for.
        #[arg(long, default_value = "nftables")]
        backend: String,
        /// The `kproxy` binary (default: next to kproxy-bench).
        #[arg(long)]
        kproxy: Option<PathBuf>,
    },
    /// (internal) Run a command; print its wall time and peak RSS.
    #[command(hide = true)]
    ExecRss {
        /// The command.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        argv: Vec<String>,
    },
    /// (internal) The CPU time and memory of one drift check
    /// (`Backend::check`) after a full sync of a synthetic cluster.
    #[command(hide = true)]
    DriftCheck {
        /// `nftables`, `iptables-nft` or `iptables-legacy`.
        #[arg(long)]
        backend: String,
        /// Number of Services.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Endpoints per Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Checks to measure.
        #[arg(long, default_value_t = 5)]
        checks: usize,
    },
    /// (internal) The time to find and delete stale UDP conntrack entries
    /// over ctnetlink, as the daemon's cleanup does.
    #[command(hide = true)]
    ConntrackCleanup {
        /// Stale flows (to a gone endpoint) to delete.
        #[arg(long, default_value_t = 10_000)]
        stale: usize,
        /// Flows to the serving endpoint, kept.
        #[arg(long, default_value_t = 10_000)]
        kept: usize,
        /// Repeats, each in a fresh namespace.
        #[arg(long, default_value_t = 7)]
        repeats: usize,
        /// Also time the same cleanup done with the `conntrack` tool.
        #[arg(long)]
        compare_tool: bool,
    },
    /// The nftables backend's netlink and exec transports side by side:
    /// full syncs at each size, endpoint changes at the last.
    NftTransports {
        /// Numbers of Services.
        #[arg(long, value_delimiter = ',', default_values_t = vec![10_000, 50_000])]
        sizes: Vec<usize>,
        /// Endpoints per Service.
        #[arg(long, default_value_t = 10)]
        endpoints: usize,
        /// Full syncs per size and transport.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Endpoint changes at the last size.
        #[arg(long, default_value_t = 5)]
        changes: usize,
        /// Transports to measure (`exec`, `netlink`); the ratio needs both.
        #[arg(long, value_delimiter = ',', default_values_t = vec!["exec".to_string(), "netlink".to_string()])]
        transports: Vec<String>,
    },
    /// (internal) Accept TCP connections and reset them, until killed.
    #[command(hide = true)]
    Serve {
        /// Address to listen on.
        #[arg(long)]
        addr: SocketAddr,
    },
    /// (internal) Open TCP connections one after another; print statistics.
    #[command(hide = true)]
    Connect {
        /// Where to connect.
        #[arg(long)]
        to: SocketAddr,
        /// For how long.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// At most this many connections.
        #[arg(long, default_value_t = 1_000_000)]
        count: usize,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Cluster sizes (Services) for the control-plane measurements.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000,50000")]
    sizes: Vec<usize>,
    /// Sizes at which the data plane is measured.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000,50000")]
    dataplane_sizes: Vec<usize>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// What to measure: nftables, iptables-nft, iptables-legacy, kube-proxy-nft.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "nftables,iptables-nft,iptables-legacy,kube-proxy-nft"
    )]
    backends: Vec<String>,
    /// Repeats per measurement (at least 3; sizes up to 1000 get at least 5).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Largest size kube-proxy's nftables layout is loaded at (never above 10000).
    #[arg(long, default_value_t = 10_000)]
    kube_nft_max: usize,
    /// Per-backend size caps for the control plane, `BACKEND=N` (its full
    /// sync takes minutes beyond; the data plane is still measured).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "iptables-nft=10000,iptables-legacy=10000"
    )]
    cap: Vec<String>,
    /// Per-backend size caps for the data plane above the control-plane
    /// cap (rules loaded with a plain restore), `BACKEND=N`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "iptables-nft=10000,iptables-legacy=10000"
    )]
    dp_cap: Vec<String>,
    /// Churn run: cluster size.
    #[arg(long, default_value_t = 10_000)]
    churn_services: usize,
    /// Churn run: seconds (0 skips it).
    #[arg(long, default_value_t = 60.0)]
    churn_seconds: f64,
    /// Churn run: endpoint changes per second.
    #[arg(long, default_value_t = 10.0)]
    churn_rate: f64,
    /// Data plane: seconds per repeat.
    #[arg(long, default_value_t = 2.0)]
    dp_seconds: f64,
    /// Data plane: at most this many connections per repeat.
    #[arg(long, default_value_t = 30_000)]
    dp_max: usize,
    /// Timeout of any one kernel-facing command, seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Sizes (and the churn run) not started this many minutes after the
    /// start are skipped, with a note in the report.
    #[arg(long, default_value_t = 20.0)]
    deadline_minutes: f64,
    /// The `kproxy` binary (default: next to kproxy-bench).
    #[arg(long)]
    kproxy: Option<PathBuf>,
    /// Seed of the synthetic cluster.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tiny sizes, short runs, and a failure unless every available
    /// backend measured something (for `make test`); never writes docs/.
    #[arg(long)]
    quick: bool,
    /// The Markdown report to write (plots and results.json go to
    /// `<stem>/` beside it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A remark for the report (for example that the machine was shared).
    #[arg(long)]
    note: Vec<String>,
}

/// The daemon's allocator (crates/daemon/src/main.rs), so that what this
/// binary measures in process is what the `kproxy` binary does.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    LazyLock::force(&START);
    if let Err(e) = real_main() {
        eprintln!("kproxy-bench: error: {e:#}");
        std::process::exit(1);
    }
}

/// The `kproxy` binary: the one given, or the one next to kproxy-bench.
fn kproxy_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(k) => Ok(k),
        None => Ok(std::env::current_exe()
            .context("locating kproxy-bench")?
            .with_file_name("kproxy")),
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Gen {
            services,
            endpoints,
            nodes,
            zones,
            seed,
            affinity_percent,
            output,
        } => {
            let c = synth::Cluster::generate(synth::Params {
                services,
                endpoints,
                nodes,
                zones,
                seed,
                affinity_pct: affinity_percent,
                only: None,
            })?;
            let yaml = c.to_yaml()?;
            match output {
                Some(p) => {
                    std::fs::write(&p, yaml).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{yaml}"),
            }
            eprintln!("kproxy-bench gen: {:?}", c.mix);
            Ok(())
        }
        Cmd::KubeProxyNft {
            services,
            endpoints,
            seed,
        } => {
            let mut c = synth::Cluster::generate(synth::Params {
                seed,
                ..synth::Params::sized(services, endpoints)
            })?;
            c.add_target()?;
            print!(
                "{}",
                kpnft::render(&c.graph(kproxy_graph::ProxyMode::Nftables)?)
            );
            Ok(())
        }
        Cmd::FileSource {
            services,
            endpoints,
            changes,
            watch,
            kproxy,
        } => filesrc::run(&filesrc::Opts {
            kproxy: &kproxy_binary(kproxy)?,
            cluster: synth::Params::sized(services, endpoints),
            changes,
            watch: &watch,
        }),
        Cmd::Intake {
            services,
            endpoints,
            repeats,
            backend,
            kproxy,
        } => intake::run(&intake::Opts {
            kproxy: &kproxy_binary(kproxy)?,
            services,
            endpoints,
            repeats,
            backend: &backend,
        }),
        Cmd::Run(args) => run_cmd(*args),
        Cmd::ExecRss { argv } => sys::exec_rss(&argv),
        Cmd::DriftCheck {
            backend,
            services,
            endpoints,
            checks,
        } => {
            let kind = kproxy_graph::BackendKind::ALL
                .into_iter()
                .find(|k| k.as_str() == backend)
                .with_context(|| format!("unknown backend {backend:?}"))?;
            driftcheck::run(kind, services, endpoints, checks)
        }
        Cmd::ConntrackCleanup {
            stale,
            kept,
            repeats,
            compare_tool,
        } => ctclean::run(stale, kept, repeats, compare_tool),
        Cmd::NftTransports {
            sizes,
            endpoints,
            reps,
            changes,
            transports,
        } => transports::run(&sizes, endpoints, reps, changes, &transports),
        Cmd::Serve { addr } => dataplane::serve(addr),
        Cmd::Connect { to, seconds, count } => dataplane::connect(to, seconds, count),
    }
}

fn parse_caps(
    flag: &str,
    list: &[String],
) -> anyhow::Result<std::collections::BTreeMap<subjects::Subject, usize>> {
    let mut caps = std::collections::BTreeMap::new();
    for c in list.iter().filter(|c| !c.is_empty()) {
        let (b, n) = c
            .split_once('=')
            .with_context(|| format!("{flag} {c:?}: expected BACKEND=N"))?;
        let n: usize = n
            .trim()
            .parse()
            .with_context(|| format!("{flag} {c:?}: {n:?} is not a number"))?;
        caps.insert(subjects::Subject::parse(b)?, n);
    }
    Ok(caps)
}

fn run_cmd(a: RunArgs) -> anyhow::Result<()> {
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let subjects = a
        .backends
        .iter()
        .map(|s| subjects::Subject::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let caps = parse_caps("--cap", &a.cap)?;
    let dp_caps = parse_caps("--dp-cap", &a.dp_cap)?;
    let kproxy = match a.kproxy {
        Some(p) => Some(p),
        None => {
            let me = std::env::current_exe().context("locating kproxy-bench")?;
            let p = me.with_file_name("kproxy");
            p.is_file().then_some(p)
        }
    };
    let scratch = std::env::temp_dir().join(format!("kproxy-bench-{}", std::process::id()));
    let mut opts = run::RunOpts {
        sizes: a.sizes,
        dataplane_sizes: a.dataplane_sizes,
        endpoints: a.endpoints,
        subjects,
        repeats: a.repeats.max(3),
        kube_nft_max: a.kube_nft_max.min(10_000),
        caps,
        dp_caps,
        churn_services: a.churn_services,
        churn_seconds: a.churn_seconds,
        churn_rate: a.churn_rate,
        dp_seconds: a.dp_seconds,
        dp_max: a.dp_max,
        kproxy,
        timeout: Duration::from_secs(a.timeout),
        scratch: scratch.clone(),
        seed: a.seed,
        strict: a.quick,
        deadline: Duration::from_secs_f64(a.deadline_minutes.max(0.0) * 60.0),
    };
    if a.quick {
        opts.sizes = vec![20, 200];
        opts.dataplane_sizes = vec![10, 200];
        opts.endpoints = opts.endpoints.min(3);
        opts.repeats = 3;
        opts.churn_services = 200;
        opts.churn_seconds = 2.0;
        opts.churn_rate = 20.0;
        opts.dp_seconds = 0.3;
        opts.dp_max = 2000;
        opts.timeout = Duration::from_secs(60);
        // Exercise the above-the-cap path too (data plane loaded with a
        // plain restore, churn skipped).
        opts.caps.insert(
            subjects::Subject::Ours(kproxy_graph::BackendKind::IptablesNft),
            20,
        );
    }
    if opts.kproxy.is_none() {
        eprintln!(
            "kproxy-bench: no kproxy binary next to kproxy-bench (build kproxy-daemon): end-to-end full syncs skipped"
        );
    }
    let out = match (&a.out, a.quick) {
        (Some(p), _) => p.clone(),
        (None, true) => std::env::temp_dir().join("kproxy-bench-quick/performance.md"),
        (None, false) => PathBuf::from("docs/performance.md"),
    };
    let partial = |o: &run::Outcome| {
        if let Err(e) = report::write(&out, &opts, o, &command_line) {
            eprintln!("kproxy-bench: partial report: {e:#}");
        }
    };
    let outcome = run::run(&opts, &partial);
    let _ = std::fs::remove_dir_all(&scratch);
    let mut outcome = outcome?;
    if opts.kproxy.is_none() {
        outcome
            .notes
            .push("no kproxy binary found: `kproxy run --once` not measured".into());
    }
    outcome.notes.extend(a.note.iter().cloned());
    report::write(&out, &opts, &outcome, &command_line)?;
    eprintln!("kproxy-bench: wrote {}", out.display());
    if a.quick {
        report::check_quick(&opts, &outcome)?;
        eprintln!(
            "kproxy-bench: quick run measured {} figures",
            outcome.records.len()
        );
    }
    Ok(())
}
