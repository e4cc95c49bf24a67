//! The file source's change-to-kernel time: `kproxy run --source DIR`
//! watching a directory with a large cluster in one file and a small file
//! beside it; the small file changes, and the time runs from just before
//! the write until the daemon logs the end of the sync that carried the
//! change (its nftables transaction committed). The daemon runs in a fresh
//! network namespace; after the last change the kernel's ruleset is
//! checked to hold it.

use std::io::BufRead as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::synth;
use crate::sys::Ns;

/// What to measure.
pub struct Opts<'a> {
    /// The `kproxy` binary.
    pub kproxy: &'a Path,
    /// The cluster in the large file.
    pub cluster: synth::Params,
    /// Changes of the small file measured.
    pub changes: usize,
    /// `KPROXY_FILE_WATCH` for the daemon (`auto`, `inotify`, `poll`).
    pub watch: &'a str,
}

/// The small file: one Service and its EndpointSlice; `n` picks the
/// endpoint's address.
fn small_file(n: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: small, namespace: bench-small}}\nspec:\n  clusterIP: 172.31.255.1\n  ports: [{{name: http, port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata:\n  name: small-1\n  namespace: bench-small\n  labels: {{kubernetes.io/service-name: small}}\nendpoints:\n- addresses: [{}]\n  conditions: {{ready: true}}\nports: [{{name: http, port: 8080, protocol: TCP}}]\n",
        endpoint(n)
    )
}

fn endpoint(n: usize) -> String {
    format!("10.250.{}.{}", n / 250, n % 250 + 1)
}

/// Run the measurement; prints each change and the summary.
pub fn run(o: &Opts<'_>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kproxy-bench-filesrc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let c = synth::Cluster::generate(o.cluster)?;
    let yaml = c.to_yaml()?;
    eprintln!(
        "file-source: {} Services x {} endpoints, {:.1} MB in cluster.yaml, watch={}",
        o.cluster.services,
        o.cluster.endpoints,
        yaml.len() as f64 / 1e6,
        o.watch
    );
    std::fs::write(dir.join("cluster.yaml"), yaml)?;
    std::fs::write(dir.join("small.yaml"), small_file(0))?;
    let result = measure(o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let lat = result?;
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "file-source change-to-kernel at {} Services x {} (watch={}): median {:.1} ms, min {:.1} ms, max {:.1} ms over {} changes",
        o.cluster.services,
        o.cluster.endpoints,
        o.watch,
        median * 1e3,
        sorted[0] * 1e3,
        sorted[sorted.len() - 1] * 1e3,
        sorted.len()
    );
    Ok(())
}

/// One log line of the daemon and when it arrived.
type Line = (Instant, String);

fn measure(o: &Opts<'_>, dir: &Path) -> anyhow::Result<Vec<f64>> {
    let ns = Ns::new()?;
    let mut argv = synth::daemon_argv(o.kproxy, "nftables", dir);
    argv.extend(
        [
            "--log-format",
            "json",
            "--min-sync-period",
            "0s",
            "--sync-period",
            "1h",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cmd = ns.command(&argv);
    cmd.env("KPROXY_FILE_WATCH", o.watch)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("starting kproxy run")?;
    let stderr = child.stderr.take().context("kproxy's stderr")?;
    let (tx, rx) = mpsc::channel::<Line>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let out = changes(o, dir, &ns, &rx);
    let _ = child.kill();
    let _ = child.wait();
    out
}

/// The next `synced` line before `deadline`; `None` at the deadline.
fn next_sync(rx: &mpsc::Receiver<Line>, deadline: Instant) -> anyhow::Result<Option<Line>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, l)) if l.contains("\"synced\"") => return Ok(Some((t, l))),
            Ok((_, l)) if l.contains("\"ERROR\"") => anyhow::bail!("kproxy: {l}"),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => return Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("kproxy exited"),
        }
    }
}

fn changes(
    o: &Opts<'_>,
    dir: &Path,
    ns: &Ns,
    rx: &mpsc::Receiver<Line>,
) -> anyhow::Result<Vec<f64>> {
    let started = Instant::now();
    next_sync(rx, started + Duration::from_secs(600))?.context("no first sync in 600 s")?;
    eprintln!(
        "file-source: first sync after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut lat = Vec::new();
    for i in 1..=o.changes {
        // Let the daemon settle; nothing else may sync meanwhile.
        std::thread::sleep(Duration::from_millis(700));
        if let Some((_, l)) = next_sync(rx, Instant::now())? {
            anyhow::bail!("a sync nobody asked for: {l}");
        }
        let t0 = Instant::now();
        std::fs::write(dir.join("small.yaml"), small_file(i))?;
        let (t1, line) = next_sync(rx, t0 + Duration::from_secs(30))?
            .with_context(|| format!("change {i}: no sync within 30 s"))?;
        anyhow::ensure!(
            line.contains("\"sync\":\"partial\""),
            "change {i}: not an incremental sync: {line}"
        );
        let ms = (t1 - t0).as_secs_f64();
        // The daemon's own account: the backend sync and the graph update.
        let field = |k: &str| {
            serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v.get(k).and_then(serde_json::Value::as_u64))
        };
        eprintln!(
            "file-source: change {i}: {:.1} ms (daemon: sync {:?} ms, graph {:?} ms)",
            ms * 1e3,
            field("duration_ms"),
            field("graph_ms")
        );
        lat.push(ms);
    }
    let rules = ns.exec(&["nft", "list", "ruleset"])?;
    anyhow::ensure!(
        rules.contains(&endpoint(o.changes)),
        "the last change ({}) is not in the kernel's ruleset",
        endpoint(o.changes)
    );
    Ok(lat)
}
