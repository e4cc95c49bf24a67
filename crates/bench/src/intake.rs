//! Intake speed end to end: `kproxy render` and `kproxy graph` of one
//! synthetic cluster, from YAML (`kubectl get -o yaml`'s shape, one
//! `kind: List`) and from the same objects as JSON (`kubectl get -o
//! json`'s shape), each run as its own process with its output sent to
//! /dev/null. The runs alternate (render YAML, render JSON, graph YAML,
//! graph JSON, repeated), so a change in the machine's load hits every
//! column alike. Before timing, the YAML and JSON inputs are checked to
//! give the same `kproxy graph` output.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::synth::{self, NODE_NAME};

/// What to measure.
pub struct Opts<'a> {
    /// The `kproxy` binary.
    pub kproxy: &'a Path,
    /// Services.
    pub services: usize,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// Runs per command and input.
    pub repeats: usize,
    /// The backend `kproxy render` renders for.
    pub backend: &'a str,
}

/// One `kproxy` run's wall time in seconds; `out` receives its standard
/// output (`None`: /dev/null).
fn time_run(kproxy: &Path, args: &[&str], out: Option<&Path>) -> anyhow::Result<f64> {
    let stdout = match out {
        Some(p) => Stdio::from(std::fs::File::create(p)?),
        None => Stdio::null(),
    };
    let start = Instant::now();
    let status = Command::new(kproxy)
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", kproxy.display()))?;
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!("kproxy {} failed: {status}", args.join(" "));
    }
    Ok(secs)
}

/// `median (min–max)` in seconds.
fn stats(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let (Some(min), Some(max)) = (v.first(), v.last()) else {
        return "–".into();
    };
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!("{median:.3} s ({min:.3}–{max:.3})")
}

/// Run the measurement; prints a Markdown table.
pub fn run(o: &Opts<'_>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kproxy-bench-intake-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(o: &Opts<'_>, dir: &Path) -> anyhow::Result<()> {
    let c = synth::Cluster::generate(synth::Params::sized(o.services, o.endpoints))?;
    let yaml = c.to_yaml()?;
    let list: serde_json::Value = serde_yaml_ng::from_str(&yaml).context("reading back")?;
    let json = serde_json::to_string_pretty(&list)?;
    let (yaml_path, json_path) = (dir.join("cluster.yaml"), dir.join("cluster.json"));
    std::fs::write(&yaml_path, &yaml)?;
    std::fs::write(&json_path, &json)?;
    eprintln!(
        "intake: {} Services x {} endpoints: {:.1} MB of YAML, {:.1} MB of JSON",
        o.services,
        o.endpoints,
        yaml.len() as f64 / 1e6,
        json.len() as f64 / 1e6
    );
    let (yaml_path, json_path) = (path_str(&yaml_path)?, path_str(&json_path)?);
    let node = format!("--node-name={NODE_NAME}");
    let backend = format!("--backend={}", o.backend);
    let cases: [(&str, &str, Vec<&str>); 4] = [
        ("render", "YAML", vec!["render", &backend, &node, yaml_path]),
        ("render", "JSON", vec!["render", &backend, &node, json_path]),
        ("graph", "YAML", vec!["graph", &node, yaml_path]),
        ("graph", "JSON", vec!["graph", &node, json_path]),
    ];
    // The two inputs are the same cluster.
    let (gy, gj) = (dir.join("graph-yaml.txt"), dir.join("graph-json.txt"));
    time_run(o.kproxy, &cases[2].2, Some(&gy))?;
    time_run(o.kproxy, &cases[3].2, Some(&gj))?;
    if std::fs::read(&gy)? != std::fs::read(&gj)? {
        bail!("kproxy graph prints different graphs for the YAML and the JSON input");
    }
    let mut times = vec![Vec::new(); cases.len()];
    for rep in 0..o.repeats {
        for (i, (cmd, input, args)) in cases.iter().enumerate() {
            let t = time_run(o.kproxy, args, None)?;
            eprintln!("intake: run {}: {cmd} {input}: {t:.3} s", rep + 1);
            times[i].push(t);
        }
    }
    println!(
        "| {} Services x {} | from YAML | from JSON |",
        o.services, o.endpoints
    );
    println!("|---|---|---|");
    println!(
        "| `kproxy render --backend {}` | {} | {} |",
        o.backend,
        stats(&times[0]),
        stats(&times[1])
    );
    println!(
        "| `kproxy graph` | {} | {} |",
        stats(&times[2]),
        stats(&times[3])
    );
    println!("\n{} runs each, alternating.", o.repeats);
    Ok(())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}
