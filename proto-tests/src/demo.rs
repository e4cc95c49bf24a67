//! `make demo`: the seed article's cluster in network namespaces, served by
//! kproxy's nftables backend. Requests to the ClusterIP and the NodePort are
//! answered by both pods; then the path the article walks (kproxy's
//! iptables rendering of the same cluster) and what nftables holds; then
//! everything is removed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use kproxy_proto_tests::runner::{self, Applier, RunConfig};
use kproxy_proto_tests::scenario::{BackendName, Scenario};
use kproxy_proto_tests::topo::{self, Topology};
use kproxy_proto_tests::wire::{Attempt, Target};

pub fn run(kproxy: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    if let Err(e) = topo::preflight() {
        eprintln!("make demo: {e}");
        eprintln!(
            "make demo: it builds network namespaces and firewall rules inside them, so it needs root: `sudo make demo`"
        );
        return Ok(ExitCode::FAILURE);
    }
    topo::install_signal_cleanup();
    let _ = topo::cleanup_stale();
    let bin = match kproxy {
        Some(b) => b,
        None => kproxy_proto_tests::kproxy_binary()?,
    };
    let me = std::env::current_exe()?;
    let path = kproxy_proto_tests::scenarios_dir().join("seed.yaml");
    let s = Scenario::load(&path)?;

    say(
        "The seed article's cluster: Service web/web-service, ClusterIP 10.107.33.105:80, NodePort 30007,",
    );
    say(
        "two pods (10.244.1.5 on node-02, 10.244.2.4 on node-03), seen from node-01 (192.168.49.2).",
    );
    say(
        "Building it in network namespaces: node-01, a client pod 10.244.0.10, the other nodes' pods,",
    );
    say("an external client 203.0.113.2, and a sink for traffic nobody claims.");
    let topo =
        Topology::build(&runner::topology_spec(&s), &me).context("building the namespaces")?;
    say(&format!("  node namespace: {}", topo.node.name()));

    let mut cfg = RunConfig {
        proto_bin: me.clone(),
        applier: Applier::Kproxy { bin: bin.clone() },
        timeout: Duration::from_millis(1000),
        sctp: false,
        mutate: false,
    };
    let objs = s.objects_per_step().remove(0);
    say("");
    say(&format!(
        "$ ip netns exec {} kproxy run --once --backend nftables --source seed.yaml --node-name node-01",
        topo.node.name()
    ));
    if let Err(e) = runner::sync(&s, &topo, &objs, BackendName::Nftables, &cfg) {
        say(&format!("kproxy run failed:\n{e}"));
        say("Falling back to `kproxy render --backend nftables | nft -f -` in the node namespace.");
        cfg.applier = Applier::Render { bin: bin.clone() };
        runner::sync(&s, &topo, &objs, BackendName::Nftables, &cfg)
            .map_err(anyhow::Error::msg)
            .context("loading the rendered ruleset")?;
    }
    say("  synced.");

    let requests = [
        (
            "a pod on node-01",
            "pod:10.244.0.10",
            "10.107.33.105:80/tcp",
        ),
        ("node-01 itself", "node", "10.107.33.105:80/tcp"),
        (
            "an external client",
            "external:203.0.113.2",
            "192.168.49.2:30007/tcp",
        ),
    ];
    for (who, from, to) in requests {
        say("");
        say(&format!("From {who} ({from}) to {to}:"));
        let src = kproxy_proto_tests::scenario::Source::parse(from).map_err(anyhow::Error::msg)?;
        let (ns, bind) = topo.source(&src).map_err(anyhow::Error::msg)?;
        let target: Target = to.parse().map_err(anyhow::Error::msg)?;
        let mut cmd = ns.command(&me);
        cmd.args(["probe", "--to", &target.to_string(), "--count", "6"]);
        if let Some(b) = bind {
            cmd.args(["--bind", &b.to_string()]);
        }
        let out = cmd.output().context("probe")?;
        for (i, line) in String::from_utf8_lossy(&out.stdout).lines().enumerate() {
            let a: Attempt = serde_json::from_str(line)?;
            let text = match a {
                Attempt::Answer {
                    reached,
                    from,
                    local,
                    ..
                } => {
                    let l = local.map(|l| l.ip().to_string()).unwrap_or_default();
                    let masq = if local.map(|l| l.ip()) == Some(from.ip()) {
                        "client address preserved".to_string()
                    } else {
                        format!("masqueraded to {}", from.ip())
                    };
                    format!("answered by the pod at {reached}; client {l}, {masq}")
                }
                other => format!("{other:?}"),
            };
            say(&format!("  request {}: {text}", i + 1));
        }
    }

    say("");
    say(
        "The path the article walks, as kproxy's iptables backends write it (kproxy render --backend iptables-legacy, nat table):",
    );
    let cfgfile = topo.dir.join("demo-config.yaml");
    std::fs::write(&cfgfile, s.config_yaml())?;
    let objfile = topo.dir.join("demo-objects.yaml");
    std::fs::write(&objfile, kproxy_proto_tests::scenario::objects_yaml(&objs))?;
    let out = std::process::Command::new(&bin)
        .args([
            "render",
            "--backend",
            "iptables-legacy",
            "--node-name",
            "node-01",
            "--config",
        ])
        .arg(&cfgfile)
        .arg(&objfile)
        .output()
        .context("kproxy render")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut in_nat = false;
    for line in text.lines() {
        if line.starts_with("# IPv6") {
            break;
        }
        if line == "*nat" {
            in_nat = true;
        }
        if in_nat && !line.starts_with(':') {
            say(&format!("  {line}"));
        }
        if in_nat && line == "COMMIT" {
            break;
        }
    }
    say("");
    say(&format!(
        "What the kernel holds now (ip netns exec {} nft list table ip kproxy; empty sets and chains left out):",
        topo.node.name()
    ));
    match topo.node.exec(&["nft", "list", "table", "ip", "kproxy"]) {
        Ok(t) => {
            for l in interesting_blocks(&t) {
                say(&format!("  {l}"));
            }
        }
        Err(e) => say(&format!("  (nft list failed: {e})")),
    }
    drop(topo);
    say("");
    say("Cleaned up: the namespaces, their rules and the echo servers are gone.");
    Ok(ExitCode::SUCCESS)
}

/// The blocks of `nft list table` output that hold something: chains with
/// rules, sets and maps with elements.
fn interesting_blocks(listing: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    for line in listing.lines() {
        let t = line.trim();
        if block.is_empty() {
            if t.starts_with("chain ") || t.starts_with("map ") || t.starts_with("set ") {
                block.push(line);
            }
            continue;
        }
        block.push(line);
        if t == "}" {
            let body = &block[1..block.len() - 1];
            let keep = if block[0].trim().starts_with("chain ") {
                body.iter().any(|l| {
                    let l = l.trim();
                    !l.is_empty() && !l.starts_with("type ") && !l.starts_with("comment ")
                })
            } else {
                body.iter().any(|l| l.trim().starts_with("elements"))
            };
            if keep {
                out.extend(block.iter().map(|l| l.replace('\t', "  ")));
            }
            block.clear();
        }
    }
    out
}

fn say(s: &str) {
    println!("{s}");
}
