//! `kproxy-bench run`: every measurement, in order of cluster size, each
//! kernel-facing one in fresh network namespaces.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use std::sync::Arc;

use kproxy_graph::{Backend, BackendKind, IncrementalGraph, ServiceGraph};

use crate::dataplane::Topology;
use crate::results::{Metric, Record, quantile};
use crate::subjects::{Subject, backend};
use crate::synth::{self, Cluster, Params};
use crate::sys::Ns;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// Cluster sizes (Services) for the control-plane measurements.
    pub sizes: Vec<usize>,
    /// Sizes at which the data plane is measured.
    pub dataplane_sizes: Vec<usize>,
    /// Endpoints per Service.
    pub endpoints: usize,
    /// What to measure.
    pub subjects: Vec<Subject>,
    /// Repeats of each measurement (at least 3; small sizes get more).
    pub repeats: usize,
    /// kube-proxy's nftables layout is not loaded above this size (it
    /// takes minutes at 10k and can soft-lock the kernel).
    pub kube_nft_max: usize,
    /// Per-subject size caps for the control-plane measurements (a
    /// subject whose full sync takes minutes at some size is measured up
    /// to the cap only; its data plane is still measured, loaded with a
    /// plain restore).
    pub caps: std::collections::BTreeMap<Subject, usize>,
    /// Per-subject size caps for the data plane above the control-plane
    /// cap (how far the plain restore is still quick enough).
    pub dp_caps: std::collections::BTreeMap<Subject, usize>,
    /// Churn run: Services, duration, changes per second (0 s: skip).
    pub churn_services: usize,
    /// Churn duration in seconds.
    pub churn_seconds: f64,
    /// Churn rate in changes per second.
    pub churn_rate: f64,
    /// Data plane: seconds per repeat.
    pub dp_seconds: f64,
    /// Data plane: connection cap per repeat.
    pub dp_max: usize,
    /// The `kproxy` binary for the end-to-end full sync.
    pub kproxy: Option<PathBuf>,
    /// Timeout of any one kernel-facing command.
    pub timeout: Duration,
    /// Scratch directory (ruleset texts, the cluster YAML).
    pub scratch: PathBuf,
    /// Seed of the synthetic cluster.
    pub seed: u64,
    /// Check that everything measured something (bench-quick).
    pub strict: bool,
    /// Sizes not started by this time after the start are skipped.
    pub deadline: Duration,
}

/// Everything measured, plus notes for the report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The records.
    pub records: Vec<Record>,
    /// Free-form remarks (skips, unavailable backends, failures).
    pub notes: Vec<String>,
    /// The cluster mixes per size (for the report).
    pub mixes: Vec<(usize, crate::synth::Mix)>,
}

impl Outcome {
    fn add(&mut self, metric: Metric, subject: impl ToString, services: usize, samples: Vec<f64>) {
        self.records.push(Record {
            metric,
            subject: subject.to_string(),
            services,
            samples,
            note: None,
        });
    }

    fn miss(
        &mut self,
        metric: Metric,
        subject: impl ToString,
        services: usize,
        why: impl ToString,
    ) {
        let why = why.to_string();
        let subject = subject.to_string();
        eprintln!("kproxy-bench: {subject} {metric:?} at {services}: {why}");
        self.records.push(Record {
            metric,
            subject,
            services,
            samples: Vec::new(),
            note: Some(why),
        });
    }

    /// The value of `r`, or `None` with the error recorded as a miss.
    fn ok_or_miss<T, E: std::fmt::Display>(
        &mut self,
        r: Result<T, E>,
        metric: Metric,
        subject: impl ToString,
        services: usize,
    ) -> Option<T> {
        r.map_err(|e| self.miss(metric, subject, services, format!("{e:#}")))
            .ok()
    }
}

impl RunOpts {
    /// The largest size `subject`'s data plane is measured at.
    pub fn dp_cap(&self, subject: Subject) -> usize {
        self.dp_caps
            .get(&subject)
            .copied()
            .unwrap_or(usize::MAX)
            .max(self.cap(subject))
    }

    /// The largest size `subject`'s control plane is measured at.
    pub fn cap(&self, subject: Subject) -> usize {
        let c = self.caps.get(&subject).copied().unwrap_or(usize::MAX);
        if subject == Subject::KubeProxyNft {
            c.min(self.kube_nft_max)
        } else {
            c
        }
    }
}

fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[{:>8.1}s] {}",
        crate::START.elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

/// How many repeats a measurement gets once its first sample is known:
/// slow ones fewer, so `make bench` fits in 30 minutes. A run slower than
/// a minute is taken once (the report says so: a single sample has no
/// min/max).
fn adapt(planned: usize, first: f64) -> usize {
    if first > 60.0 {
        1
    } else if first > 2.0 {
        planned.min(3)
    } else {
        planned
    }
}

fn repeats_for(opts: &RunOpts, n: usize) -> usize {
    // Small cases are quick and noisy: more repeats.
    if n <= 1000 {
        opts.repeats.max(5)
    } else {
        opts.repeats.max(3)
    }
}

/// Run everything.
pub fn run(opts: &RunOpts, progress: &dyn Fn(&Outcome)) -> anyhow::Result<Outcome> {
    crate::sys::require_tools(&[
        "ip",
        "nft",
        "iptables-nft-restore",
        "iptables-legacy-restore",
        "iptables-nft-save",
        "iptables-legacy-save",
    ])?;
    crate::sys::remove_stale_namespaces();
    std::fs::create_dir_all(&opts.scratch)
        .with_context(|| format!("creating {}", opts.scratch.display()))?;
    let mut out = Outcome::default();
    // Other work on the machine skews every figure: record how busy it was.
    out.notes.push(format!(
        "load average at the start of the run: {}",
        loadavg()
    ));
    let mut available = Vec::new();
    for s in &opts.subjects {
        match s {
            Subject::Ours(k) => match backend(*k, None) {
                Ok(_) => available.push(*s),
                Err(e) => out.notes.push(format!("{s}: not measured: {e:#}")),
            },
            Subject::KubeProxyNft => available.push(*s),
        }
    }
    let sizes: BTreeSet<usize> = opts
        .sizes
        .iter()
        .chain(&opts.dataplane_sizes)
        .copied()
        .collect();
    // The churn run goes after the sizes up to its own, before larger
    // ones: a run that hits its deadline loses the largest size, not churn.
    let mut churned = opts.churn_seconds <= 0.0;
    for &n in &sizes {
        if !churned && n > opts.churn_services {
            churn_all(opts, &available, &mut out)?;
            churned = true;
        }
        if past_deadline(opts) {
            out.notes.push(format!(
                "size {n}: skipped, the run passed its deadline of {:.0} minutes (`--deadline-minutes`)",
                opts.deadline.as_secs_f64() / 60.0
            ));
            continue;
        }
        size_pass(opts, n, &available, &mut out)?;
        // A report after every size: a run that dies later keeps these.
        progress(&out);
    }
    if !churned {
        churn_all(opts, &available, &mut out)?;
    }
    out.notes.push(format!(
        "load average at the end of the run: {}; the run took {:.0} s",
        loadavg(),
        crate::START.elapsed().as_secs_f64()
    ));
    Ok(out)
}

fn past_deadline(opts: &RunOpts) -> bool {
    crate::START.elapsed() > opts.deadline
}

fn churn_all(opts: &RunOpts, available: &[Subject], out: &mut Outcome) -> anyhow::Result<()> {
    for s in available {
        if let Subject::Ours(kind) = s {
            if opts.churn_services > opts.cap(*s) {
                out.notes.push(format!(
                    "{s}: churn not run at {} Services (above its cap of {})",
                    opts.churn_services,
                    opts.cap(*s)
                ));
                continue;
            }
            if past_deadline(opts) {
                out.notes
                    .push(format!("{s}: churn skipped, the run passed its deadline"));
                continue;
            }
            churn(opts, *kind, out)?;
        }
    }
    Ok(())
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn cluster_for(opts: &RunOpts, n: usize) -> anyhow::Result<Cluster> {
    cluster_with(opts, n, Params::default().affinity_pct)
}

fn cluster_with(opts: &RunOpts, n: usize, affinity_pct: u64) -> anyhow::Result<Cluster> {
    let mut c = Cluster::generate(Params {
        seed: opts.seed,
        affinity_pct,
        ..Params::sized(n, opts.endpoints)
    })?;
    c.add_target()?;
    Ok(c)
}

fn size_pass(
    opts: &RunOpts,
    n: usize,
    subjects: &[Subject],
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let control = opts.sizes.contains(&n);
    let dataplane = opts.dataplane_sizes.contains(&n);
    log(format!(
        "size {n}: generating {n} Services x {} endpoints",
        opts.endpoints
    ));
    let cluster = cluster_for(opts, n)?;
    out.mixes.push((n, cluster.mix));
    let reps = repeats_for(opts, n);
    let yaml_path = opts.scratch.join(format!("cluster-{n}.yaml"));
    let mut yaml_written = false;

    for &subject in subjects {
        let within = n <= opts.cap(subject);
        if !within {
            let why = if subject == Subject::KubeProxyNft {
                format!(
                    "kube-proxy-nft: not loaded above {} Services (its per-service anonymous vmaps take minutes and can soft-lock the kernel)",
                    opts.cap(subject)
                )
            } else {
                format!(
                    "{subject}: control plane measured up to {} Services only (`--cap`): its full sync takes minutes beyond; the data plane above that is loaded with a plain restore",
                    opts.cap(subject)
                )
            };
            out.notes.push(why);
            if subject == Subject::KubeProxyNft || !dataplane {
                continue;
            }
            if n > opts.dp_cap(subject) {
                out.notes.push(format!(
                    "{subject}: data plane not measured at {n} Services: even a plain restore of its rules takes minutes beyond {} (`--dp-cap`)",
                    opts.dp_cap(subject)
                ));
                continue;
            }
        }
        let mode = subject.mode();
        // Graph build: what every sync of the daemon starts with.
        let mut samples = Vec::new();
        let mut graph = None;
        for _ in 0..reps {
            let t = Instant::now();
            let g = cluster.graph(mode)?;
            samples.push(t.elapsed().as_secs_f64());
            graph = Some(g);
        }
        let graph = graph.context("no graph built")?;
        if control && matches!(subject, Subject::Ours(_)) {
            out.add(Metric::GraphBuild, subject, n, samples);
        }

        // Render.
        let mut samples = Vec::new();
        let mut text = String::new();
        for _ in 0..reps {
            let t = Instant::now();
            text = subject.render(&graph)?;
            samples.push(t.elapsed().as_secs_f64());
        }
        if control {
            out.add(Metric::Render, subject, n, samples);
            out.add(Metric::RenderBytes, subject, n, vec![text.len() as f64]);
        }
        let file = opts.scratch.join(format!("{subject}-{n}.rules"));
        std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
        drop(text);
        log(format!("size {n}: {subject}: rendered"));

        // kube-proxy's layout takes minutes to load at 10k: its data-plane
        // namespace's load is also the loader's first sample.
        let mut first_load = None;
        if subject == Subject::KubeProxyNft && dataplane {
            first_load = dataplane_from_file(opts, subject, n, &file, out)?;
        }
        if control && within {
            loader_alone(opts, subject, n, &file, reps, first_load, out)?;
            if subject == Subject::Ours(BackendKind::Nftables) && (n >= 1000 || opts.strict) {
                no_affinity(opts, n, out)?;
            }
        }
        match subject {
            Subject::Ours(kind) if within => {
                // The populated namespace's initial full sync is the first
                // Backend::sync sample.
                let first = populated(opts, kind, n, &cluster, &graph, control, dataplane, out)?;
                if control {
                    full_sync_backend(opts, kind, n, &graph, reps, first, out)?;
                    if let Some(kproxy) = &opts.kproxy {
                        if !yaml_written {
                            let t = Instant::now();
                            std::fs::write(&yaml_path, cluster.to_yaml()?)
                                .with_context(|| format!("writing {}", yaml_path.display()))?;
                            yaml_written = true;
                            log(format!(
                                "size {n}: wrote cluster YAML in {:.1}s",
                                t.elapsed().as_secs_f64()
                            ));
                        }
                        full_sync_daemon(opts, kproxy, kind, n, &yaml_path, reps, out)?;
                    }
                }
            }
            Subject::Ours(_) if dataplane => {
                dataplane_from_file(opts, subject, n, &file, out)?;
            }
            _ => {}
        }
        let _ = std::fs::remove_file(&file);
    }
    let _ = std::fs::remove_file(&yaml_path);
    Ok(())
}

/// Count the rules a sync left in `ns`. bench-quick fails on an empty
/// namespace or a failed listing; a full run only logs a failed listing
/// (listing half a million rules can itself take minutes) and goes on.
fn ensure_rules(opts: &RunOpts, subject: Subject, ns: &Ns) -> anyhow::Result<usize> {
    let rules = match subject.rules_in(ns, opts.timeout) {
        Ok(r) => r,
        Err(e) if !opts.strict => {
            log(format!("{subject}: could not count the rules: {e:#}"));
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    if opts.strict && rules == 0 {
        bail!("{subject}: the namespace holds no rules after a full sync");
    }
    Ok(rules)
}

/// Wall times (seconds) and peak RSS (MiB) of `exec-rss` runs.
#[derive(Debug, Default)]
struct RssSamples {
    wall: Vec<f64>,
    rss: Vec<f64>,
}

impl RssSamples {
    fn push(&mut self, r: &crate::sys::RssReport) {
        self.wall.push(r.wall.as_secs_f64());
        self.rss.push(r.max_rss_kib as f64 / 1024.0);
    }
}

/// The largest size iptables-nft's one `--noflush` restore is timed at.
const NOFLUSH_MAX: usize = 1000;

fn loader_alone(
    opts: &RunOpts,
    subject: Subject,
    n: usize,
    file: &Path,
    reps: usize,
    first: Option<crate::sys::RssReport>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let argv = subject.loader_argv(file);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut s = RssSamples::default();
    let mut reps = reps;
    let mut i = 0;
    if let Some(r) = first {
        s.push(&r);
        reps = adapt(reps, s.wall[0]);
        i = 1;
    }
    while i < reps {
        let ns = Ns::new()?;
        subject.prepare(&ns)?;
        let run = ns.exec_rss(&argv, opts.timeout);
        let Some(r) = out.ok_or_miss(run, Metric::Loader, subject, n) else {
            return Ok(());
        };
        s.push(&r);
        if i == 0 {
            let rules = ensure_rules(opts, subject, &ns)?;
            log(format!(
                "size {n}: {subject}: loader alone {:.3}s, {rules} rules in the kernel",
                s.wall[0]
            ));
            reps = adapt(reps, s.wall[0]);
        }
        i += 1;
    }
    out.add(Metric::Loader, subject, n, s.wall);
    out.add(Metric::LoaderRss, subject, n, s.rss);
    // iptables-nft's one --noflush restore of the same text: quadratic in
    // the chains in iptables 1.8.9, so only at small sizes.
    if let Some(argv) = subject.noflush_loader_argv(file)
        && n <= NOFLUSH_MAX
    {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut wall = Vec::new();
        for _ in 0..reps {
            let ns = Ns::new()?;
            subject.prepare(&ns)?;
            let run = ns.exec_rss(&argv, opts.timeout);
            let Some(r) = out.ok_or_miss(run, Metric::LoaderPlain, subject, n) else {
                return Ok(());
            };
            wall.push(r.wall.as_secs_f64());
        }
        out.add(Metric::LoaderPlain, subject, n, wall);
    }
    Ok(())
}

/// The same cluster without ClientIP affinity, loaded once by nft: how much
/// of the kernel floor the per-endpoint affinity sets cost (the kernel
/// looks named sets up by walking the table's set list).
fn no_affinity(opts: &RunOpts, n: usize, out: &mut Outcome) -> anyhow::Result<()> {
    let subject = Subject::Ours(BackendKind::Nftables);
    let c = cluster_with(opts, n, 0)?;
    let text = subject.render(&c.graph(subject.mode())?)?;
    let file = opts.scratch.join(format!("nftables-noaff-{n}.rules"));
    std::fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
    let argv = subject.loader_argv(&file);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let ns = Ns::new()?;
    match ns.exec_rss(&argv, opts.timeout) {
        Ok(r) => {
            log(format!(
                "size {n}: nftables without affinity: loader alone {:.3}s",
                r.wall.as_secs_f64()
            ));
            out.add(
                Metric::LoaderNoAffinity,
                subject,
                n,
                vec![r.wall.as_secs_f64()],
            );
        }
        Err(e) => out.miss(Metric::LoaderNoAffinity, subject, n, format!("{e:#}")),
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}

fn full_sync_backend(
    opts: &RunOpts,
    kind: BackendKind,
    n: usize,
    graph: &ServiceGraph,
    reps: usize,
    first: Option<f64>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let subject = Subject::Ours(kind);
    let mut wall = Vec::new();
    let mut reps = reps;
    let mut i = 0;
    if let Some(f) = first {
        wall.push(f);
        reps = adapt(reps, f);
        i = 1;
    }
    while i < reps {
        let ns = Ns::new()?;
        let mut b = backend(kind, Some(ns.name()))?;
        let t = Instant::now();
        let synced = b.sync(graph, None);
        if out
            .ok_or_miss(synced, Metric::FullSyncBackend, subject, n)
            .is_none()
        {
            return Ok(());
        }
        wall.push(t.elapsed().as_secs_f64());
        if i == 0 {
            ensure_rules(opts, subject, &ns)?;
            reps = adapt(reps, wall[0]);
        }
        i += 1;
    }
    log(format!(
        "size {n}: {subject}: Backend::sync full {:.3}s (first)",
        wall[0]
    ));
    out.add(Metric::FullSyncBackend, subject, n, wall);
    Ok(())
}

fn full_sync_daemon(
    opts: &RunOpts,
    kproxy: &Path,
    kind: BackendKind,
    n: usize,
    yaml: &Path,
    reps: usize,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let subject = Subject::Ours(kind);
    let mut argv = synth::daemon_argv(kproxy, kind.as_str(), yaml);
    argv.push("--once".into());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut s = RssSamples::default();
    let mut reps = reps;
    let mut i = 0;
    while i < reps {
        let ns = Ns::new()?;
        let run = ns.exec_rss(&argv, opts.timeout);
        let Some(r) = out.ok_or_miss(run, Metric::FullSyncDaemon, subject, n) else {
            return Ok(());
        };
        s.push(&r);
        if i == 0 {
            ensure_rules(opts, subject, &ns)?;
            log(format!(
                "size {n}: {subject}: kproxy run --once {:.3}s, {:.0} MiB",
                s.wall[0], s.rss[0]
            ));
            reps = adapt(reps, s.wall[0]);
        }
        i += 1;
    }
    out.add(Metric::FullSyncDaemon, subject, n, s.wall);
    out.add(Metric::DaemonRss, subject, n, s.rss);
    Ok(())
}

/// The daemon's graph: an [`IncrementalGraph`] fed the objects a change
/// touched, as the daemon's sources feed it, so each sync rebuilds only
/// the touched Services.
struct DaemonGraph {
    inc: IncrementalGraph,
}

impl DaemonGraph {
    fn new(c: &Cluster, mode: kproxy_graph::ProxyMode) -> anyhow::Result<Self> {
        let mut inc = IncrementalGraph::new(Cluster::proxy_config(mode)?);
        for n in &c.objects.nodes {
            inc.upsert_node(Arc::new(n.clone()));
        }
        for s in &c.objects.services {
            inc.upsert_service(Arc::new(s.clone()));
        }
        for s in &c.objects.endpoint_slices {
            inc.upsert_slice(Arc::new(s.clone()));
        }
        inc.update();
        Ok(DaemonGraph { inc })
    }

    /// The object changes a daemon source would deliver for Service
    /// `ns/name`: the Service (or its deletion), the slices that name it,
    /// and `gone_slices` deleted with it. Looked up in the bench's object
    /// lists (O(cluster)), before the timed part, since a source gets them
    /// from its watch events.
    fn deltas(c: &Cluster, ns: &str, name: &str, gone_slices: &[String]) -> Vec<Delta> {
        let mut out = Vec::new();
        match c.objects.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name)
        }) {
            Some(s) => out.push(Delta::Service(Arc::new(s.clone()))),
            None => out.push(Delta::DeleteService(ns.to_string(), name.to_string())),
        }
        for s in c.slices_of(ns, name) {
            out.push(Delta::Slice(Arc::new(s.clone())));
        }
        for s in gone_slices {
            out.push(Delta::DeleteSlice(ns.to_string(), s.clone()));
        }
        out
    }

    fn apply(&mut self, deltas: Vec<Delta>) {
        for d in deltas {
            match d {
                Delta::Service(s) => {
                    self.inc.upsert_service(s);
                }
                Delta::DeleteService(ns, name) => {
                    self.inc.delete_service(&ns, &name);
                }
                Delta::Slice(s) => {
                    self.inc.upsert_slice(s);
                }
                Delta::DeleteSlice(ns, name) => {
                    self.inc.delete_slice(&ns, &name);
                }
            }
        }
    }
}

/// One object change as a daemon source delivers it.
enum Delta {
    Service(Arc<k8s_openapi::api::core::v1::Service>),
    DeleteService(String, String),
    Slice(Arc<k8s_openapi::api::discovery::v1::EndpointSlice>),
    DeleteSlice(String, String),
}

/// One change through the daemon's path: the objects of the Services
/// `touched` handed over (timed from here), incremental graph update and
/// change set, sync. Returns (graph update +
/// change set seconds, sync seconds, bytes).
fn one_change(
    b: &mut dyn Backend,
    dg: &mut DaemonGraph,
    c: &Cluster,
    touched: &[(String, String, Vec<String>)],
) -> anyhow::Result<(f64, f64, usize)> {
    let deltas: Vec<Delta> = touched
        .iter()
        .flat_map(|(ns, name, gone)| DaemonGraph::deltas(c, ns, name, gone))
        .collect();
    let t0 = Instant::now();
    dg.apply(deltas);
    let update = dg.inc.update();
    let t1 = Instant::now();
    let stats = b
        .sync(dg.inc.graph(), Some(&update.changes))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t2 = Instant::now();
    Ok((
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        stats.bytes_written,
    ))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
fn populated(
    opts: &RunOpts,
    kind: BackendKind,
    n: usize,
    cluster: &Cluster,
    graph: &ServiceGraph,
    control: bool,
    dataplane: bool,
    out: &mut Outcome,
) -> anyhow::Result<Option<f64>> {
    let subject = Subject::Ours(kind);
    let topo = Topology::new()?;
    let mut b = backend(kind, Some(topo.node.name()))?;
    let t = Instant::now();
    if let Err(e) = b.sync(graph, None) {
        out.miss(
            Metric::IncrEndpoint,
            subject,
            n,
            format!("initial full sync failed: {e}"),
        );
        return Ok(None);
    }
    let full = t.elapsed().as_secs_f64();
    ensure_rules(opts, subject, &topo.node)?;
    if dataplane {
        dataplane_measure(opts, subject, n, &topo, out)?;
    }
    if !control || n == 0 {
        return Ok(Some(full));
    }
    let mode = subject.mode();
    let mut c = cluster.clone();
    let mut dg = DaemonGraph::new(&c, mode)?;
    let reps = repeats_for(opts, n);
    let mut m: [(Vec<f64>, Vec<f64>); 3] = Default::default();
    let mut graph_times = Vec::new();
    let mut err = None;
    for r in 0..reps {
        // Endpoint change on a Service spread over the cluster.
        let idx = (r * 7919 + 13) % n;
        for (k, slot) in m.iter_mut().enumerate() {
            let touched = match k {
                0 => {
                    let (ns, name) = c.change_endpoint(idx)?;
                    (ns, name, Vec::new())
                }
                1 => {
                    let (ns, name) = c.add_service(Some("ClusterIP"))?;
                    (ns, name, Vec::new())
                }
                _ => {
                    let i = r % n.max(1);
                    let (ns, name) = c.service_name(i).context("no Service to remove")?;
                    let gone = c
                        .slices_of(&ns, &name)
                        .filter_map(|s| s.metadata.name.clone())
                        .collect();
                    c.remove_service(i)?;
                    (ns, name, gone)
                }
            };
            match one_change(b.as_mut(), &mut dg, &c, &[touched]) {
                Ok((g, s, bytes)) => {
                    if k == 0 {
                        graph_times.push(g);
                    }
                    slot.0.push(s);
                    slot.1.push(bytes as f64);
                }
                Err(e) => {
                    err = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        if err.is_some() {
            break;
        }
    }
    if let Some(e) = err {
        out.miss(Metric::IncrEndpoint, subject, n, e);
        return Ok(Some(full));
    }
    let [(e, eb), (a, ab), (rm, rb)] = m;
    log(format!(
        "size {n}: {subject}: incremental endpoint {:.4}s add {:.4}s remove {:.4}s",
        e[0], a[0], rm[0]
    ));
    out.add(Metric::IncrEndpoint, subject, n, e);
    out.add(Metric::IncrEndpointBytes, subject, n, eb);
    out.add(Metric::IncrAdd, subject, n, a);
    out.add(Metric::IncrAddBytes, subject, n, ab);
    out.add(Metric::IncrRemove, subject, n, rm);
    out.add(Metric::IncrRemoveBytes, subject, n, rb);
    out.add(Metric::IncrGraph, subject, n, graph_times);
    // The namespace must still hold the target (and more) after the changes.
    ensure_rules(opts, subject, &topo.node)?;
    Ok(Some(full))
}

fn dataplane_measure(
    opts: &RunOpts,
    subject: Subject,
    n: usize,
    topo: &Topology,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let reps = opts.repeats.max(3);
    let (mut lat, mut rate) = (Vec::new(), Vec::new());
    let mut last_p99 = 0.0;
    // One warm-up run, not recorded (caches, the listener's first accepts).
    let warm_up = topo.measure(opts.dp_seconds.min(0.5), opts.dp_max);
    if out
        .ok_or_miss(warm_up, Metric::ConnectLatency, subject, n)
        .is_none()
    {
        return Ok(());
    }
    for _ in 0..reps {
        let measured = topo.measure(opts.dp_seconds, opts.dp_max);
        let Some(s) = out.ok_or_miss(measured, Metric::ConnectLatency, subject, n) else {
            return Ok(());
        };
        if opts.strict && s.connections == 0 {
            bail!("{subject}: no connection through the ClusterIP");
        }
        lat.push(s.p50);
        last_p99 = s.p99;
        rate.push(s.rate);
    }
    log(format!(
        "size {n}: {subject}: connect p50 {:.1}µs (last repeat p99 {:.1}µs), {:.0} conn/s",
        lat[0] * 1e6,
        last_p99 * 1e6,
        rate[0]
    ));
    out.add(Metric::ConnectLatency, subject, n, lat);
    out.add(Metric::ConnectRate, subject, n, rate);
    Ok(())
}

/// The data plane for a subject loaded from its ruleset file: kube-proxy's
/// nftables layout, and kproxy backends above their control-plane cap
/// (plain restore: the same rules, loaded the fast way).
fn dataplane_from_file(
    opts: &RunOpts,
    subject: Subject,
    n: usize,
    file: &Path,
    out: &mut Outcome,
) -> anyhow::Result<Option<crate::sys::RssReport>> {
    let topo = Topology::new()?;
    subject.prepare(&topo.node)?;
    let argv = subject.plain_loader_argv(file);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let run = topo.node.exec_rss(&argv, opts.timeout);
    let Some(load) = out.ok_or_miss(run, Metric::ConnectLatency, subject, n) else {
        return Ok(None);
    };
    ensure_rules(opts, subject, &topo.node)?;
    if subject != Subject::KubeProxyNft {
        out.notes.push(format!(
            "{subject} data plane at {n} Services: rules loaded with `{}` (same text as a full sync)",
            argv.join(" ")
                .replace(&file.display().to_string(), "FILE")
        ));
    }
    dataplane_measure(opts, subject, n, &topo, out)?;
    Ok(Some(load))
}

/// Sustained churn: endpoint changes at a steady rate; each change's
/// latency runs from the moment it is due to the end of the sync that
/// carried it to the kernel (changes that arrive during a sync are
/// coalesced into the next one, as the daemon does).
fn churn(opts: &RunOpts, kind: BackendKind, out: &mut Outcome) -> anyhow::Result<()> {
    let subject = Subject::Ours(kind);
    let n = opts.churn_services;
    log(format!(
        "churn: {subject}: {n} Services, {} changes/s for {}s",
        opts.churn_rate, opts.churn_seconds
    ));
    let mut c = cluster_for(opts, n)?;
    let mode = subject.mode();
    let mut dg = DaemonGraph::new(&c, mode)?;
    let ns = Ns::new()?;
    let mut b = backend(kind, Some(ns.name()))?;
    if let Err(e) = b.sync(dg.inc.graph(), None) {
        out.miss(
            Metric::ChurnP50,
            subject,
            n,
            format!("initial full sync failed: {e}"),
        );
        return Ok(());
    }
    let interval = Duration::from_secs_f64(1.0 / opts.churn_rate.max(0.001));
    let total = (opts.churn_seconds * opts.churn_rate).round().max(1.0) as usize;
    let start = Instant::now();
    let mut lat = Vec::with_capacity(total);
    let mut next_change = 0usize;
    let mut syncs = 0usize;
    while next_change < total {
        let due = |i: usize| start + interval * (i as u32);
        let now = Instant::now();
        if due(next_change) > now {
            std::thread::sleep(due(next_change) - now);
        }
        // Every change due by now goes into this sync.
        let mut batch = Vec::new();
        let mut touched = Vec::new();
        while next_change < total && due(next_change) <= Instant::now() {
            let (ns, name) = c.change_endpoint((next_change * 7919 + 1) % n.max(1))?;
            touched.push((ns, name, Vec::new()));
            batch.push(due(next_change));
            next_change += 1;
        }
        let changed = one_change(b.as_mut(), &mut dg, &c, &touched);
        if out
            .ok_or_miss(changed, Metric::ChurnP50, subject, n)
            .is_none()
        {
            return Ok(());
        }
        syncs += 1;
        let done = Instant::now();
        lat.extend(batch.iter().map(|d| (done - *d).as_secs_f64()));
    }
    let p50 = quantile(&lat, 0.5).context("no churn sample")?;
    let p99 = quantile(&lat, 0.99).context("no churn sample")?;
    log(format!(
        "churn: {subject}: {} changes in {syncs} syncs, p50 {:.1} ms, p99 {:.1} ms",
        lat.len(),
        p50 * 1e3,
        p99 * 1e3
    ));
    out.notes.push(format!(
        "churn {subject}: {} endpoint changes at {}/s over {:.0} s, carried by {syncs} syncs",
        lat.len(),
        opts.churn_rate,
        start.elapsed().as_secs_f64()
    ));
    out.add(Metric::ChurnP50, subject, n, vec![p50]);
    out.add(Metric::ChurnP99, subject, n, vec![p99]);
    Ok(())
}
