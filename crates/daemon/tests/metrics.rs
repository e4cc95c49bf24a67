//! kproxy's `/metrics` against kube-proxy 1.36's, per mode: the daemon on
//! each backend in its own network namespace, a dual-stack Service, a full
//! and a partial sync, then every `kubeproxy_*` family compared with the
//! recorded exposition of the real kube-proxy 1.36 binary
//! (tests/data/kube-proxy-1.36-metrics-{iptables,nftables}.txt) by name,
//! type, label names and histogram buckets. The iptables backends compare
//! with kube-proxy's iptables mode, nftables with its nftables mode.
//!
//! Needs root, nft, iptables and iproute2; without them it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

/// kube-proxy 1.36 families of a mode that the recording has no series of
/// (nothing had happened to them in that run): name, type and label names
/// as the Kubernetes metrics reference lists them
/// (https://kubernetes.io/docs/reference/instrumentation/metrics/).
const NOT_RECORDED_COMMON: &[(&str, &str, &[&str])] = &[
    (
        "kubeproxy_sync_partial_proxy_rules_duration_seconds",
        "histogram",
        &["ip_family"],
    ),
    (
        "kubeproxy_network_programming_duration_seconds",
        "histogram",
        &["ip_family"],
    ),
    ("kubeproxy_proxy_healthz_total", "counter", &["code"]),
    ("kubeproxy_proxy_livez_total", "counter", &["code"]),
    (
        "kubeproxy_conntrack_reconciler_sync_duration_seconds",
        "histogram",
        &["ip_family"],
    ),
    (
        "kubeproxy_conntrack_reconciler_deleted_entries_total",
        "counter",
        &["ip_family"],
    ),
];
const NOT_RECORDED_IPTABLES: &[(&str, &str, &[&str])] = &[
    (
        "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
        "counter",
        &["ip_family"],
    ),
    (
        "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total",
        "counter",
        &["ip_family"],
    ),
];
const NOT_RECORDED_NFTABLES: &[(&str, &str, &[&str])] = &[
    (
        "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
        "counter",
        &["ip_family"],
    ),
    (
        "kubeproxy_sync_proxy_rules_nftables_cleanup_failures_total",
        "counter",
        &["ip_family"],
    ),
];

/// One metric family of an exposition.
#[derive(Debug, Default)]
struct Fam {
    kind: String,
    /// The label-name sets of the samples (`le` apart).
    labels: BTreeSet<BTreeSet<String>>,
    /// Histogram bucket bounds (`+Inf` included).
    buckets: Vec<f64>,
    samples: usize,
}

/// The label names and the `le` value of a sample's `{...}`.
fn labels_of(sample: &str) -> (Vec<String>, Option<String>) {
    let Some(open) = sample.find('{') else {
        return (Vec::new(), None);
    };
    let close = sample.rfind('}').expect("unclosed label set");
    let body = &sample[open + 1..close];
    let (mut names, mut le) = (Vec::new(), None);
    let mut rest = body;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 2..];
        let end = after.find('"').expect("unterminated label value");
        if name == "le" {
            le = Some(after[..end].to_string());
        } else {
            names.push(name);
        }
        rest = &after[end + 1..];
    }
    (names, le)
}

/// The families of a Prometheus or OpenMetrics text exposition, by the
/// name Prometheus stores them under (counters with `_total`: OpenMetrics
/// names the family without it).
fn parse(text: &str) -> BTreeMap<String, Fam> {
    let mut out: BTreeMap<String, Fam> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            out.entry(name.clone()).or_default().kind = kind.to_string();
            current = Some(name);
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fam = current.as_ref().expect("a sample before any TYPE line");
        let (names, le) = labels_of(line);
        let f = out.get_mut(fam).unwrap();
        f.samples += 1;
        f.labels.insert(names.into_iter().collect());
        if let Some(le) = le {
            let v: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            if !f.buckets.contains(&v) {
                f.buckets.push(v);
            }
        }
    }
    for f in out.values_mut() {
        f.buckets.sort_by(f64::total_cmp);
    }
    out
}

fn reference(mode: &str) -> BTreeMap<String, Fam> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/data/kube-proxy-1.36-metrics-{mode}.txt"));
    parse(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// kube-proxy's network-programming buckets (`pkg/proxy/metrics`:
/// `MergeBuckets` starts with 0).
fn network_programming_buckets() -> Vec<f64> {
    let mut v = vec![0.0, 0.25, 0.5];
    v.extend((1..=59).map(f64::from));
    v.extend((60..=115).step_by(5).map(f64::from));
    v.extend((120..=300).step_by(30).map(f64::from));
    v.push(f64::INFINITY);
    v
}

/// Every difference between kproxy's exposition `ours` and kube-proxy's
/// `theirs` for one mode, as readable lines (empty: equal).
fn differences(
    mode: &str,
    ours: &BTreeMap<String, Fam>,
    theirs: &BTreeMap<String, Fam>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (name, t) in theirs.iter().filter(|(n, _)| n.starts_with("kubeproxy_")) {
        let Some(o) = ours.get(name) else {
            diffs.push(format!("{name}: missing"));
            continue;
        };
        if o.kind != t.kind {
            diffs.push(format!(
                "{name}: type {} vs kube-proxy's {}",
                o.kind, t.kind
            ));
        }
        if o.samples == 0 {
            diffs.push(format!("{name}: no series"));
        } else if o.labels != t.labels {
            diffs.push(format!(
                "{name}: labels {:?} vs kube-proxy's {:?}",
                o.labels, t.labels
            ));
        }
        if o.buckets != t.buckets {
            diffs.push(format!(
                "{name}: buckets {:?} vs kube-proxy's {:?}",
                o.buckets, t.buckets
            ));
        }
    }
    let not_recorded: Vec<&(&str, &str, &[&str])> = NOT_RECORDED_COMMON
        .iter()
        .chain(match mode {
            "nftables" => NOT_RECORDED_NFTABLES,
            _ => NOT_RECORDED_IPTABLES,
        })
        .collect();
    let sync_buckets = &theirs["kubeproxy_sync_proxy_rules_duration_seconds"].buckets;
    for (name, o) in ours.iter().filter(|(n, _)| n.starts_with("kubeproxy_")) {
        if theirs.contains_key(name) {
            continue;
        }
        let Some((_, kind, labels)) = not_recorded.iter().find(|(n, _, _)| n == name) else {
            diffs.push(format!(
                "{name}: kube-proxy has no such family in {mode} mode"
            ));
            continue;
        };
        if o.kind != *kind {
            diffs.push(format!("{name}: type {} vs kube-proxy's {kind}", o.kind));
        }
        let labels: BTreeSet<BTreeSet<String>> =
            [labels.iter().map(|l| l.to_string()).collect()].into();
        if o.samples > 0 && o.labels != labels {
            diffs.push(format!(
                "{name}: labels {:?} vs kube-proxy's {labels:?}",
                o.labels
            ));
        }
        let want = match name.as_str() {
            "kubeproxy_network_programming_duration_seconds" => network_programming_buckets(),
            _ if *kind == "histogram" => sync_buckets.clone(),
            _ => Vec::new(),
        };
        if o.samples > 0 && o.buckets != want {
            diffs.push(format!(
                "{name}: buckets {:?} vs kube-proxy's {want:?}",
                o.buckets
            ));
        }
    }
    diffs
}

/// The dual-stack fixture with an endpoint changed and a trigger time on
/// the slices (so the partial sync observes the network-programming
/// latency).
fn changed_cluster() -> String {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    fixture("dual-stack")
        .replace("10.180.2.1", "10.180.2.9")
        .replace(
            "  labels: {kubernetes.io/service-name: web}\n",
            &format!(
                "  labels: {{kubernetes.io/service-name: web}}\n  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{now}\"}}\n"
            ),
        )
}

/// kproxy's /metrics on `backend` after a full and a partial sync.
fn scrape(backend: &str) -> String {
    let data = TempDir::new("metrics");
    data.write("cluster.yaml", &fixture("dual-stack"));
    let config = testdata()
        .join("configs/dual-stack.yaml")
        .display()
        .to_string();
    let src = data.path().to_str().unwrap().to_string();
    let ns = test_ns();
    let d = Daemon::start(&ns, &daemon_args(backend, &src, &config), &[]);
    assert!(
        wait_for(Duration::from_secs(20), || http_get(&ns, 10249, "/rules")
            .is_some_and(|r| r.0 == 200)),
        "{backend}: the daemon never synced:\n{}",
        d.log()
    );
    data.write("cluster.yaml", &changed_cluster());
    assert!(
        metric_reaches(
            &ns,
            "kproxy_syncs_total{sync=\"partial\"}",
            1.0,
            Duration::from_secs(20)
        ),
        "{backend}: no partial sync:\n{}",
        d.log()
    );
    assert_eq!(http_get(&ns, 10256, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&ns, 10256, "/livez").unwrap().0, 200);
    let (code, _, m) = http_get(&ns, 10249, "/metrics").unwrap();
    assert_eq!(code, 200);
    m
}

#[test]
fn kubeproxy_families_equal_kube_proxy_1_36_per_mode() {
    for backend in BACKENDS {
        let mode = if backend == "nftables" {
            "nftables"
        } else {
            "iptables"
        };
        let text = scrape(backend);

        let diffs = differences(mode, &parse(&text), &reference(mode));
        assert!(
            diffs.is_empty(),
            "{backend} vs kube-proxy 1.36 {mode} mode:\n{}\n\n{text}",
            diffs.join("\n")
        );
    }
}

#[test]
fn the_comparison_sees_a_label_type_or_bucket_difference() {
    // The recording against itself: equal. Then one change at a time.
    let theirs = reference("iptables");
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/kube-proxy-1.36-metrics-iptables.txt"),
    )
    .unwrap();
    let ours = parse;
    assert_eq!(
        differences("iptables", &ours(&text), &theirs),
        Vec::<String>::new()
    );
    for (from, to, what) in [
        (
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"}",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "labels",
        ),
        (
            "# TYPE kubeproxy_sync_proxy_rules_service_changes_pending gauge",
            "# TYPE kubeproxy_sync_proxy_rules_service_changes_pending untyped",
            "type",
        ),
        ("le=\"16.384\"", "le=\"20\"", "buckets"),
        (
            "# TYPE kubeproxy_sync_proxy_rules_iptables_last gauge",
            "# TYPE kubeproxy_sync_proxy_rules_iptables_lastt gauge",
            "missing",
        ),
    ] {
        let changed = text.replace(from, to);
        assert_ne!(changed, text);
        let diffs = differences("iptables", &ours(&changed), &theirs);
        assert!(diffs.iter().any(|d| d.contains(what)), "{what}: {diffs:?}");
    }
}
