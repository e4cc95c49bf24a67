//! `kproxy trace`: explain what a backend's rules do to one new connection,
//! chain by chain, from the rules' own text (kproxy-trace).
//!
//! Offline, the rules are rendered from Kubernetes YAML exactly as a full
//! sync would write them (`Backend::render_full`); with `--live` they are
//! read from the kernel of the network namespace kproxy runs in
//! (`iptables-save` of the flavour, or `nft list table`), and the node's
//! addresses from `ip -o addr`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use kproxy_graph::{BackendKind, IpFamily, ProxyConfig, ServiceGraph};
use kproxy_trace::{Node, Packet, report};

use crate::backends;
use crate::cli::RenderBackend;
use crate::input::{self, InputArgs};

/// Output format of `trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TraceFormat {
    /// The walk, chain by chain, then the path and the outcome.
    #[default]
    Text,
    /// The trace, path and outcome as JSON.
    Json,
    /// A Graphviz digraph of the chains the traffic can take.
    Dot,
}

/// `kproxy trace`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// The backend whose rules to trace.
    #[arg(long, value_enum)]
    pub backend: RenderBackend,
    /// Trace the rules the kernel holds now instead of rendering FILEs.
    #[arg(long)]
    pub live: bool,
    /// Trace a saved ruleset (iptables-save / restore text, nft script or
    /// listing) instead of rendering FILEs; give the node's addresses with
    /// `--node-ip`.
    #[arg(long, conflicts_with = "live")]
    pub rules: Option<PathBuf>,
    /// Source address of the connection. A node address means the node
    /// itself opens it (output path); any other address arrives from
    /// outside or from a pod (prerouting path).
    #[arg(long, required_unless_present = "service")]
    pub from: Option<IpAddr>,
    /// Destination: IP:PORT/PROTO (`10.96.0.10:53/udp`, `[fd00::1]:80/tcp`).
    #[arg(long, required_unless_present = "service")]
    pub to: Option<String>,
    /// Instead of one connection, trace a Service's (NAMESPACE/NAME)
    /// representative connections: each ClusterIP from a pod, from outside
    /// and from the node, each NodePort, external and LoadBalancer IP from
    /// outside (offline only). With `--format dot`, one picture of every
    /// chain its traffic can take.
    #[arg(long, conflicts_with_all = ["from", "to", "live", "rules"])]
    pub service: Option<String>,
    /// The interface the connection arrives on (for interface-based
    /// local-traffic detection); default `eth0`.
    #[arg(long)]
    pub iif: Option<String>,
    /// Extra node addresses (besides the graph's, or the host's with
    /// `--live`), for `addrtype LOCAL` / `fib type local`.
    #[arg(long, value_delimiter = ',')]
    pub node_ip: Vec<IpAddr>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: TraceFormat,
    #[allow(missing_docs, reason = "a flattened group: its fields are documented")]
    #[command(flatten)]
    pub input: InputArgs,
    /// Kubernetes YAML/JSON files or directories (offline tracing).
    pub files: Vec<PathBuf>,
}

/// Run `kproxy trace`.
pub fn run(args: &TraceArgs) -> anyhow::Result<ExitCode> {
    if let Some(svc) = &args.service {
        return run_service(args, svc);
    }
    let kind: BackendKind = args.backend.into();
    let (Some(from), Some(to_arg)) = (args.from, args.to.as_deref()) else {
        bail!("--from and --to are required (or --service NAMESPACE/NAME)");
    };
    let (to, proto) = kproxy_trace::parse_destination(to_arg).map_err(anyhow::Error::msg)?;
    if IpFamily::of(&from) != IpFamily::of(&to.ip()) {
        bail!("--from {from} and --to {to_arg} are of different IP families");
    }
    let family = IpFamily::of(&to.ip());
    let mut node_ips = args.node_ip.clone();
    let text = if args.live {
        node_ips.extend(host_addresses()?);
        live_rules(kind, family)?
    } else if let Some(path) = &args.rules {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        if args.files.is_empty() {
            bail!("give Kubernetes YAML files to render, --rules FILE, or --live");
        }
        let (graph, config) = load(args, kind)?;
        node_ips.extend(graph.node.ips.iter().copied());
        node_ips.extend(config.extra_node_ips.iter().copied());
        let backend = backends::make_backend(kind)?;
        backend
            .render_full(&graph)
            .with_context(|| format!("rendering {kind} rules"))?
    };
    let tracer = kproxy_trace::tracer_for(kind, &text).context("reading the ruleset")?;
    for u in tracer.unknown_rules() {
        eprintln!("note: rule not understood (a connection reaching it stops the trace): {u}");
    }
    let mut packet = Packet::new(from, to.ip(), to.port(), proto);
    packet.iif = args.iif.clone();
    let node = Node::new(node_ips);
    let trace = tracer
        .trace(&packet, &node)
        .with_context(|| format!("tracing {packet} through the {kind} rules"))?;
    let out = match args.format {
        TraceFormat::Text => report::text(&trace),
        TraceFormat::Json => report::json(&trace) + "\n",
        TraceFormat::Dot => report::dot(&trace),
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The graph of the FILEs under the configuration for `kind`, with its
/// warnings printed to stderr, and that configuration.
fn load(args: &TraceArgs, kind: BackendKind) -> anyhow::Result<(ServiceGraph, ProxyConfig)> {
    let config = args
        .input
        .proxy_config(Some(backends::mode_for(kind)))
        .context("configuration")?;
    let graph = input::load_graph(&args.files, &config)?;
    for w in &graph.warnings {
        eprintln!("warning: {w}");
    }
    Ok((graph, config))
}

/// `kproxy trace --service NAMESPACE/NAME`: every representative
/// connection to the Service, through rules rendered from FILEs.
fn run_service(args: &TraceArgs, svc: &str) -> anyhow::Result<ExitCode> {
    let kind: BackendKind = args.backend.into();
    let Some((ns, name)) = svc.split_once('/') else {
        bail!("--service {svc:?}: expected NAMESPACE/NAME");
    };
    if args.files.is_empty() {
        bail!("--service needs Kubernetes YAML files to render");
    }
    let (graph, _) = load(args, kind)?;
    let packets = kproxy_trace::service_connections(&graph, ns, name);
    if packets.is_empty() {
        bail!("no service port of {svc} in the graph (see `kproxy graph`)");
    }
    let text = backends::make_backend(kind)?
        .render_full(&graph)
        .with_context(|| format!("rendering {kind} rules"))?;
    let tracer = kproxy_trace::tracer_for(kind, &text).context("reading the ruleset")?;
    for u in tracer.unknown_rules() {
        eprintln!("note: rule not understood (a connection reaching it stops the trace): {u}");
    }
    let mut node_ips = args.node_ip.clone();
    node_ips.extend(graph.node.ips.iter().copied());
    let node = Node::new(node_ips);
    let mut traces = Vec::new();
    for mut p in packets {
        p.iif = args.iif.clone();
        traces.push(
            tracer
                .trace(&p, &node)
                .with_context(|| format!("tracing {p} through the {kind} rules"))?,
        );
    }
    match args.format {
        TraceFormat::Dot => print!("{}", report::dot_many(&traces, &format!("{kind}: {svc}"))),
        TraceFormat::Json => {
            let all: Vec<serde_json::Value> = traces
                .iter()
                .map(|t| serde_json::from_str(&report::json(t)).unwrap_or_default())
                .collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        TraceFormat::Text => {
            for t in &traces {
                println!("{}", t.packet);
                println!("  path:    {}", report::path_summary(t));
                println!("  outcome: {}", t.outcome());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The kernel's current rules of `kind` for `family`, in the backend's own
/// syntax ([`kproxy_graph::Backend::dump_live`]).
pub fn live_rules(kind: BackendKind, family: IpFamily) -> anyhow::Result<String> {
    backends::make_backend(kind)?
        .dump_live(family)?
        .ok_or_else(|| anyhow::anyhow!("{kind}: no {family} rules of kproxy are loaded"))
}

/// This host's addresses (`ip -o addr show`).
pub fn host_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let text = kproxy_exec::Runner::host().run("ip", &["-o", "addr", "show"], None)?;
    Ok(parse_ip_addr(&text))
}

/// The addresses in `ip -o addr show` output.
pub fn parse_ip_addr(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(2) {
            if (w[0] == "inet" || w[0] == "inet6")
                && let Some(ip) = w[1].split('/').next().and_then(|s| s.parse().ok())
            {
                out.push(ip);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addr_output_is_read() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
2: eth0    inet 192.168.49.2/24 brd 192.168.49.255 scope global eth0\\       valid_lft forever\n\
2: eth0    inet6 fd00::2/64 scope global \\       valid_lft forever\n";
        let ips = parse_ip_addr(text);
        assert_eq!(
            ips,
            vec![
                "127.0.0.1".parse::<IpAddr>().expect("ip"),
                "192.168.49.2".parse().expect("ip"),
                "fd00::2".parse().expect("ip"),
            ]
        );
    }
}
