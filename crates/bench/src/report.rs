//! The report: docs/performance.md with the machine, the command, the
//! targets of issue 8 (met or missed, with the figure), one table per
//! metric and SVG plots of growth with N drawn with `plotters` (SVG
//! backend only).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use plotters::prelude::*;

use crate::results::{Human, Metric, Record, Summary};
use crate::run::{Outcome, RunOpts};
use crate::subjects::Subject;

fn first_line(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .ok()
        .map(|o| {
            let s = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&s)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> Vec<(String, String)> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1048576.0))
        .unwrap_or_else(|| "unknown".into());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    vec![
        (
            "date (UTC)".into(),
            first_line(&["date", "-u", "+%Y-%m-%d %H:%M"]),
        ),
        ("CPUs (nproc)".into(), cpus.to_string()),
        ("CPU model".into(), model),
        ("memory".into(), mem),
        ("kernel".into(), kernel),
        ("nft".into(), first_line(&["nft", "--version"])),
        (
            "iptables-legacy".into(),
            first_line(&["iptables-legacy", "--version"]),
        ),
        (
            "iptables-nft".into(),
            first_line(&["iptables-nft", "--version"]),
        ),
    ]
}

fn find<'a>(o: &'a Outcome, m: Metric, subject: &str, n: usize) -> Option<&'a Record> {
    o.records
        .iter()
        .find(|r| r.metric == m && r.subject == subject && r.services == n)
}

fn median(o: &Outcome, m: Metric, subject: &str, n: usize) -> Option<f64> {
    find(o, m, subject, n)
        .and_then(Record::summary)
        .map(|s| s.median)
}

fn cell(r: Option<&Record>) -> String {
    match r {
        None => "–".into(),
        Some(r) => match r.summary() {
            Some(Summary {
                median,
                min,
                max,
                n,
            }) => {
                let u = r.metric.unit();
                let single = !matches!(
                    r.metric,
                    Metric::RenderBytes
                        | Metric::ChurnP50
                        | Metric::ChurnP99
                        | Metric::LoaderNoAffinity
                );
                if n == 1 && single {
                    format!("{} (1 run)", Human(median, u))
                } else if n == 1 {
                    format!("{}", Human(median, u))
                } else {
                    format!("{} ({}–{})", Human(median, u), Human(min, u), Human(max, u))
                }
            }
            None => format!(
                "not measured: {}",
                r.note
                    .as_deref()
                    .unwrap_or("?")
                    .replace('|', "/")
                    .chars()
                    .take(120)
                    .collect::<String>()
            ),
        },
    }
}

struct Target {
    what: String,
    verdict: String,
    figure: String,
}

fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
    .to_string()
}

/// A target on the ratio of two medians in seconds, `a / b`: `met` says
/// whether the ratio meets it, `figure` writes it (with both medians).
fn ratio_target(
    what: String,
    (a, b): (Option<f64>, Option<f64>),
    met: impl Fn(f64) -> bool,
    figure: impl Fn(f64, Human, Human) -> String,
) -> Target {
    let both = a.zip(b);
    Target {
        what,
        verdict: verdict(both.map(|(a, b)| met(a / b))),
        figure: both
            .map(|(a, b)| figure(a / b, Human(a, "s"), Human(b, "s")))
            .unwrap_or_default(),
    }
}

fn targets(o: &Outcome) -> Vec<Target> {
    let nft = "nftables";
    let ipt = "iptables-nft";
    let mut t = Vec::new();
    // The daemon's full sync: build the graph from the objects it holds,
    // then Backend::sync (render + load). `kproxy run --once` adds reading
    // and parsing the YAML file, which a running daemon does not do on a
    // resync; it is shown beside.
    let full = |n: usize| {
        let g = median(o, Metric::GraphBuild, nft, n)?;
        let b = median(o, Metric::FullSyncBackend, nft, n)?;
        Some(g + b)
    };
    let e2e = |n: usize| {
        median(o, Metric::FullSyncDaemon, nft, n)
            .map(|v| format!("; `kproxy run --once` end to end {}", Human(v, "s")))
            .unwrap_or_default()
    };
    for (n, limit) in [(10_000usize, 1.3f64), (50_000, 8.0)] {
        let f = full(n);
        t.push(Target {
            what: format!("nftables full sync at {n} x 10 ≤ {limit} s"),
            verdict: verdict(f.map(|v| v <= limit)),
            figure: f
                .map(|v| {
                    format!(
                        "{} = graph build {} + Backend::sync {}{}; loader alone {}",
                        Human(v, "s"),
                        Human(median(o, Metric::GraphBuild, nft, n).unwrap_or(0.0), "s"),
                        Human(
                            median(o, Metric::FullSyncBackend, nft, n).unwrap_or(0.0),
                            "s"
                        ),
                        e2e(n),
                        median(o, Metric::Loader, nft, n)
                            .map(|l| Human(l, "s").to_string())
                            .unwrap_or_else(|| "–".into())
                    )
                })
                .unwrap_or_default(),
        });
    }
    t.push(ratio_target(
        "nftables full sync at 10k ≥ 50x faster than kube-proxy's nftables layout".into(),
        (
            median(o, Metric::Loader, "kube-proxy-nft", 10_000),
            full(10_000),
        ),
        |r| r >= 50.0,
        |r, kp, ours| format!("{r:.1}x (kube-proxy layout `nft -f` {kp} vs kproxy {ours})"),
    ));
    for (subject, limit) in [(nft, 0.030f64), (ipt, 0.5)] {
        let sync = median(o, Metric::IncrEndpoint, subject, 50_000);
        let graph = median(o, Metric::IncrGraph, subject, 50_000);
        let total = sync.zip(graph).map(|(s, g)| s + g);
        t.push(Target {
            what: format!("one endpoint change at 50k on {subject} ≤ {}", Human(limit, "s")),
            verdict: verdict(total.map(|v| v <= limit)),
            figure: match (total, sync, graph) {
                (Some(tot), Some(s), Some(g)) => format!(
                    "{} change-to-kernel = {} graph update + change set, {} backend sync (sync alone: {})",
                    Human(tot, "s"),
                    Human(g, "s"),
                    Human(s, "s"),
                    if s <= limit { "within" } else { "over" }
                ),
                _ => String::new(),
            },
        });
    }
    for n in [10_000usize, 50_000] {
        t.push(ratio_target(
            format!("nftables: kproxy full sync over kernel floor at {n} ≤ 1.3"),
            (
                median(o, Metric::FullSyncBackend, nft, n),
                median(o, Metric::Loader, nft, n),
            ),
            |r| r <= 1.3,
            |r, ours, floor| format!("{r:.2} (Backend::sync {ours} / nft -f {floor})"),
        ));
    }
    t.push(ratio_target(
        "data plane: nftables first-packet cost at 50k within 10% of 10 Services".into(),
        (
            median(o, Metric::ConnectLatency, nft, 50_000),
            median(o, Metric::ConnectLatency, nft, 10),
        ),
        |r| r <= 1.10,
        |r, big, small| {
            let pct = (r - 1.0) * 100.0;
            format!("{pct:+.1}% (connect p50 {big} at 50k vs {small} at 10)")
        },
    ));
    let rss = median(o, Metric::DaemonRss, nft, 50_000);
    t.push(Target {
        what: "daemon memory at 50k x 10 < 300 MiB (nftables)".into(),
        verdict: verdict(rss.map(|v| v < 300.0)),
        figure: rss
            .map(|v| format!("{v:.0} MiB peak RSS of `kproxy run --once`"))
            .unwrap_or_default(),
    });
    t
}

const GROUPS: &[(&str, &[Metric])] = &[
    (
        "Generation and rendering",
        &[Metric::GraphBuild, Metric::Render, Metric::RenderBytes],
    ),
    (
        "Full sync into an empty namespace",
        &[
            Metric::FullSyncDaemon,
            Metric::FullSyncBackend,
            Metric::Loader,
        ],
    ),
    ("Peak memory", &[Metric::DaemonRss, Metric::LoaderRss]),
    (
        "Incremental syncs in a populated namespace",
        &[
            Metric::IncrGraph,
            Metric::IncrEndpoint,
            Metric::IncrAdd,
            Metric::IncrRemove,
            Metric::IncrEndpointBytes,
            Metric::IncrAddBytes,
            Metric::IncrRemoveBytes,
        ],
    ),
    ("Sustained churn", &[Metric::ChurnP50, Metric::ChurnP99]),
    ("Data plane", &[Metric::ConnectLatency, Metric::ConnectRate]),
];

/// Write the Markdown report, its plots and results.json.
pub fn write(path: &Path, opts: &RunOpts, o: &Outcome, command: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("performance");
    let assets = dir.join(stem);
    std::fs::create_dir_all(&assets).with_context(|| format!("creating {}", assets.display()))?;
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Performance\n");
    let _ = writeln!(
        w,
        "Written by `kproxy-bench run` (crates/bench): rerun `make bench` rather than editing; \
         only the Analysis section is written by hand, and a rerun keeps it.\n"
    );
    let _ = writeln!(w, "Command: `{command}`\n");
    let _ = writeln!(w, "| machine | |\n|---|---|");
    for (k, v) in machine() {
        let _ = writeln!(w, "| {k} | {v} |");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "## Method\n");
    let _ = writeln!(
        w,
        "A seeded synthetic cluster (`kproxy-bench gen`): N Services with {} endpoints each over 100 nodes in 3 zones; \
         about 75% ClusterIP, 15% NodePort, 10% LoadBalancer until the 30000-32767 NodePort range runs out (then ClusterIP), \
         5% ClientIP affinity, 5% Local traffic policy, 10% with two ports, 3% DNS-like (UDP+TCP); plus one target Service for the data plane. \
         Every kernel-facing measurement runs in a fresh network namespace. Figures are median (min–max) over {} repeats \
         ({} for sizes up to 1000); a measurement whose first run takes over 2 s gets 3 runs, over 60 s a single run \
         (marked \"1 run\": the 30-minute budget of `make bench` allows no more). The churn figures are quantiles over \
         every change of one run. IPv4 only.\n",
        opts.endpoints,
        opts.repeats,
        opts.repeats.max(5)
    );
    let _ = writeln!(
        w,
        "- **full sync, `kproxy run --once`**: the daemon end to end (read the YAML, build the graph, render, apply, exit), \
         timed and its peak RSS taken with getrusage by a wrapper process inside the namespace."
    );
    let _ = writeln!(
        w,
        "- **full sync, Backend::sync**: the backend's full sync from a built graph (render + loader), in the bench process."
    );
    let _ = writeln!(
        w,
        "- **loader alone**: `nft -f FILE` / `iptables-legacy-restore --noflush FILE` / `iptables-nft-restore FILE` on the exact text of the full sync, into an empty namespace: the kernel floor. iptables-nft's is a plain restore (same result in an empty namespace): with `--noflush`, iptables 1.8.9 is quadratic in the chains the input names (over 600 s at 10,000 Services), so that form is timed separately and only up to 1,000 Services. \
         For kube-proxy-nft it is that layout's whole full sync."
    );
    let _ = writeln!(
        w,
        "- **incremental**: in a populated namespace, one endpoint replaced / one ClusterIP Service added / one removed; \
         *graph update + change set* is what the daemon does before each sync (its IncrementalGraph takes the changed objects and rebuilds only the Services they touch), *sync* is Backend::sync with the change set; bytes are SyncStats.bytes_written."
    );
    let _ = writeln!(
        w,
        "- **churn**: endpoint changes due at a steady rate; each change's latency runs from when it is due until the sync carrying it returns; changes arriving during a sync are coalesced into the next."
    );
    let _ = writeln!(
        w,
        "- **data plane**: a client namespace opens TCP connections one after another (RST on close) to the target ClusterIP, \
         DNATed to a listener in the node namespace; figure = median connect() time per repeat, and connections per second. \
         The target Service sorts last, so in iptables' KUBE-SERVICES its rule is the last one walked (worst case). Conntrack is flushed between repeats."
    );
    let _ = writeln!(
        w,
        "- **kube-proxy's layouts**: the iptables layout is kproxy's iptables backends' output (identical chains and rules), so its kernel cost is \
         the iptables loader rows; the nftables layout (per-service chains, `numgen random mod N vmap {{ ... }}` anonymous maps, endpoint chains) is rendered by the bench \
         from the same graph and loaded in one `nft -f` transaction, never above {} Services.\n",
        opts.kube_nft_max
    );

    // A hand-written analysis in the previous report survives a rerun
    // (it names the run it was written for, so a stale one shows).
    if let Some(analysis) = previous_analysis(path) {
        let _ = writeln!(w, "{analysis}");
    }
    let _ = writeln!(w, "## Targets (issue 8)\n");
    let _ = writeln!(w, "| target | verdict | measured |\n|---|---|---|");
    for t in targets(o) {
        let _ = writeln!(w, "| {} | {} | {} |", t.what, t.verdict, t.figure);
    }
    let _ = writeln!(w);

    let subjects: Vec<String> = Subject::ALL
        .iter()
        .map(ToString::to_string)
        .filter(|s| o.records.iter().any(|r| &r.subject == s))
        .collect();
    let _ = writeln!(w, "## Plots\n");
    for (file, title, metrics, unit) in [
        (
            "full-sync.svg",
            "Full sync into an empty namespace: backend vs loader alone (kernel floor)",
            &[Metric::FullSyncBackend, Metric::Loader][..],
            "seconds",
        ),
        (
            "daemon.svg",
            "Full sync end to end: kproxy run --once",
            &[Metric::FullSyncDaemon][..],
            "seconds",
        ),
        (
            "incremental.svg",
            "One endpoint changed: backend sync",
            &[Metric::IncrEndpoint][..],
            "seconds",
        ),
        (
            "memory.svg",
            "Peak RSS",
            &[Metric::DaemonRss, Metric::LoaderRss][..],
            "MiB",
        ),
        (
            "dataplane.svg",
            "TCP connect latency through the ClusterIP",
            &[Metric::ConnectLatency][..],
            "seconds",
        ),
    ] {
        let p = assets.join(file);
        match plot(&p, title, unit, o, metrics, &subjects) {
            Ok(true) => {
                let _ = writeln!(w, "![{title}]({stem}/{file})\n");
            }
            Ok(false) => {}
            Err(e) => {
                let _ = writeln!(w, "({title}: plot failed: {e:#})\n");
            }
        }
    }

    for (group, metrics) in GROUPS {
        let _ = writeln!(w, "## {group}\n");
        for &m in *metrics {
            let sizes: BTreeSet<usize> = o
                .records
                .iter()
                .filter(|r| r.metric == m)
                .map(|r| r.services)
                .collect();
            if sizes.is_empty() {
                continue;
            }
            let cols: Vec<&String> = subjects
                .iter()
                .filter(|s| o.records.iter().any(|r| r.metric == m && &r.subject == *s))
                .collect();
            let _ = writeln!(w, "**{}** ({})\n", m.title(), m.unit());
            let _ = write!(w, "| Services |");
            for c in &cols {
                let _ = write!(w, " {c} |");
            }
            let _ = write!(w, "\n|---|");
            for _ in &cols {
                let _ = write!(w, "---|");
            }
            let _ = writeln!(w);
            for n in sizes {
                let _ = write!(w, "| {n} |");
                for c in &cols {
                    let _ = write!(w, " {} |", cell(find(o, m, c, n)));
                }
                let _ = writeln!(w);
            }
            let _ = writeln!(w);
        }
    }
    if !o.mixes.is_empty() {
        let _ = writeln!(w, "## Synthetic clusters\n");
        let _ = writeln!(
            w,
            "| Services | ClusterIP | NodePort | LoadBalancer | affinity | Local policy | two ports | DNS-like | service ports | endpoints |"
        );
        let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
        for (n, m) in &o.mixes {
            let _ = writeln!(
                w,
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m.cluster_ip,
                m.node_port,
                m.load_balancer,
                m.affinity,
                m.local_policy,
                m.multi_port,
                m.udp,
                m.service_ports,
                m.endpoints
            );
        }
        let _ = writeln!(
            w,
            "\n(plus the data-plane target Service in every cluster)\n"
        );
    }
    if !o.notes.is_empty() {
        let _ = writeln!(w, "## Notes from the run\n");
        let mut seen = BTreeSet::new();
        for n in &o.notes {
            if seen.insert(n) {
                let _ = writeln!(w, "- {n}");
            }
        }
        let _ = writeln!(w);
    }
    std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
    let json = serde_json::Value::Array(o.records.iter().map(Record::to_json).collect());
    let jp = assets.join("results.json");
    std::fs::write(
        &jp,
        serde_json::to_string_pretty(&json).context("results JSON")?,
    )
    .with_context(|| format!("writing {}", jp.display()))?;
    Ok(())
}

/// One line of a plot: label, colour index (the subject), style index
/// (the metric), points.
type Series = (String, usize, usize, Vec<(f64, f64)>);

/// The `## Analysis` section of an existing report, if any.
fn previous_analysis(path: &Path) -> Option<String> {
    let old = std::fs::read_to_string(path).ok()?;
    let start = old.find("\n## Analysis")? + 1;
    let rest = &old[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 4);
    Some(rest[..end].trim_end().to_string() + "\n")
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// A log-log plot of the medians of `metrics` per subject against N.
/// Returns false when there is nothing to draw.
fn plot(
    path: &Path,
    title: &str,
    unit: &str,
    o: &Outcome,
    metrics: &[Metric],
    subjects: &[String],
) -> anyhow::Result<bool> {
    let mut series: Vec<Series> = Vec::new();
    for (mi, &m) in metrics.iter().enumerate() {
        for (si, s) in subjects.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = o
                .records
                .iter()
                .filter(|r| r.metric == m && &r.subject == s)
                .filter_map(|r| r.summary().map(|x| (r.services.max(1) as f64, x.median)))
                .filter(|(_, y)| *y > 0.0)
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !pts.is_empty() {
                let label = if metrics.len() > 1 {
                    format!("{s}: {}", short(m))
                } else {
                    s.clone()
                };
                series.push((label, si, mi, pts));
            }
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    let all = series.iter().flat_map(|(_, _, _, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let (x0, x1) = (x0 / 1.5, x1 * 1.5);
    let (y0, y1) = (y0 / 2.0, y1 * 2.0);
    let root = SVGBackend::new(path, (760, 460)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("{e:?}");
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("Services (log)")
        .y_desc(format!("{unit} (log)"))
        .draw()
        .map_err(e)?;
    for (label, si, mi, pts) in series {
        let color = COLORS[si % COLORS.len()];
        // First metric: thick line and dots; second: thin line and crosses.
        let style = if mi == 0 {
            color.stroke_width(2)
        } else {
            color.stroke_width(1)
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), style))
            .map_err(e)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if mi == 0 {
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(e)?;
        } else {
            chart
                .draw_series(
                    pts.into_iter()
                        .map(|p| Cross::new(p, 4, color.stroke_width(1))),
                )
                .map_err(e)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(true)
}

fn short(m: Metric) -> &'static str {
    match m {
        Metric::FullSyncDaemon => "kproxy run --once",
        Metric::FullSyncBackend => "Backend::sync",
        Metric::Loader => "loader alone",
        Metric::DaemonRss => "daemon",
        Metric::LoaderRss => "loader",
        _ => "",
    }
}

/// bench-quick's assertions: every available subject produced non-zero
/// times for the kernel-facing measurements. Timings are never compared
/// with limits.
pub fn check_quick(opts: &RunOpts, o: &Outcome) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    // One check per record (it has samples, all positive), per expected
    // metric of each backend, and per end-to-end run.
    let mut checks = o.records.len();
    let missing: Vec<&Record> = o.records.iter().filter(|r| r.samples.is_empty()).collect();
    for r in missing {
        problems.push(format!(
            "{} {:?} at {}: {}",
            r.subject,
            r.metric,
            r.services,
            r.note.as_deref().unwrap_or("no samples")
        ));
    }
    for r in &o.records {
        if r.samples
            .iter()
            .any(|v| v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !v.is_finite())
            && r.metric != Metric::IncrRemoveBytes
        {
            problems.push(format!(
                "{} {:?} at {}: a non-positive sample {:?}",
                r.subject, r.metric, r.services, r.samples
            ));
        }
    }
    let measured: BTreeSet<&str> = o
        .records
        .iter()
        .filter(|r| !r.samples.is_empty())
        .map(|r| r.subject.as_str())
        .collect();
    for s in &opts.subjects {
        let name = s.to_string();
        let mut expect = vec![Metric::Render, Metric::Loader, Metric::ConnectLatency];
        if matches!(s, Subject::Ours(_)) {
            expect.extend([Metric::FullSyncBackend, Metric::IncrEndpoint]);
            if opts.churn_services <= opts.cap(*s) {
                expect.push(Metric::ChurnP50);
            }
        }
        checks += expect.len() + 1;
        if !measured.contains(name.as_str()) {
            problems.push(format!("{name}: nothing measured"));
            continue;
        }
        for m in &expect {
            if !o
                .records
                .iter()
                .any(|r| r.subject == name && r.metric == *m && !r.samples.is_empty())
            {
                problems.push(format!("{name}: {m:?} not measured"));
            }
        }
        if matches!(s, Subject::Ours(_))
            && opts.kproxy.is_some()
            && !o.records.iter().any(|r| {
                r.subject == name && r.metric == Metric::FullSyncDaemon && !r.samples.is_empty()
            })
        {
            problems.push(format!("{name}: `kproxy run --once` not measured"));
        }
    }
    // The plain closing line test harnesses understand.
    println!(
        "bench-quick: {} passed, {} failed",
        checks.saturating_sub(problems.len()),
        problems.len()
    );
    if !problems.is_empty() {
        bail!(
            "bench-quick measured nothing for:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_written_analysis_survives_a_rewrite() {
        let dir = std::env::temp_dir().join(format!("bch-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("performance.md");
        std::fs::write(
            &p,
            "# P\n\nintro\n\n## Analysis\n\nwhy it is slow\n\n## Targets (issue 8)\n\nx\n",
        )
        .expect("write");
        assert_eq!(
            previous_analysis(&p).as_deref(),
            Some("## Analysis\n\nwhy it is slow\n")
        );
        std::fs::write(&p, "# P\n\n## Analysis\n\nlast section\n").expect("write");
        assert_eq!(
            previous_analysis(&p).as_deref(),
            Some("## Analysis\n\nlast section\n")
        );
        std::fs::write(&p, "# P\n\n## Targets\n").expect("write");
        assert_eq!(previous_analysis(&p), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
