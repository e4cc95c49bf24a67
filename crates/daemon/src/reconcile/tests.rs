//! The reconciler's tests: a fake backend driven through syncs.

use std::sync::Mutex;

use kproxy_graph::{ApplyError, BackendKind, ChangeSet, GenError, ProxyConfig, SyncStats};

use super::*;
use crate::health::ProxyHealth;
use crate::state::Status;

/// What the fake backend was asked to do.
#[derive(Debug, Default)]
struct Log {
    /// `true` for full syncs.
    syncs: Vec<bool>,
    /// The change set of each partial sync.
    changes: Vec<ChangeSet>,
    fail_next: bool,
    /// Every sync fails (a broken loader).
    fail_always: bool,
    drifted: bool,
    /// A failed sync left the backend without a state to compare
    /// with, as the real backends do.
    lost: bool,
}

struct Fake(Arc<Mutex<Log>>);

impl Backend for Fake {
    fn kind(&self) -> BackendKind {
        BackendKind::Nftables
    }
    fn render_full(&self, _graph: &ServiceGraph) -> Result<String, GenError> {
        Ok("table ip kproxy {}\n".into())
    }
    fn sync(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        let mut log = self.0.lock().unwrap();
        log.syncs.push(changes.is_none());
        log.changes.extend(changes.cloned());
        if std::mem::take(&mut log.fail_next) || log.fail_always {
            log.lost = true;
            return Err(ApplyError::Rejected {
                backend: "fake",
                program: "nft".into(),
                status: "exit status: 1".into(),
                stderr: "injected".into(),
            });
        }
        log.drifted = false;
        log.lost = false;
        Ok(SyncStats {
            full: changes.is_none(),
            services: service_ports(graph),
            endpoints: endpoints(graph),
            rules_total: 10,
            rules_written: 3,
            bytes_written: 100,
            rules_written_by_table: Vec::new(),
        })
    }
    fn check(&mut self) -> Result<bool, ApplyError> {
        let log = self.0.lock().unwrap();
        Ok(!log.drifted && !log.lost)
    }
    fn last_applied(&self) -> Option<String> {
        Some("applied".into())
    }
    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
        Ok(())
    }
    fn dump_live(&mut self, _family: IpFamily) -> Result<Option<String>, ApplyError> {
        Ok(None)
    }
}

fn objects(ip: &str) -> Objects {
    let mut o = Objects::default();
    o.add_yaml(
        "test",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80, protocol: TCP}}]\n"
        ),
    )
    .unwrap();
    o
}

fn reconciler(log: Arc<Mutex<Log>>) -> Reconciler {
    let settings = Settings {
        backend: BackendKind::Nftables,
        nftables_transport: kproxy_nftables::TransportKind::default(),
        proxy: ProxyConfig {
            node_name: "n".into(),
            ..ProxyConfig::default()
        },
        sync_period: std::time::Duration::from_secs(30),
        min_sync_period: std::time::Duration::from_secs(1),
        full_sync_period: std::time::Duration::from_secs(3600),
        healthz_addr: None,
        metrics_addr: None,
        sysctls: Vec::new(),
        client: Default::default(),
        bind_address_hard_fail: false,
        oom_score_adj: None,
    };
    let shared = Shared::new(
        ProxyHealth::new(std::time::Duration::from_secs(60)),
        Status {
            backend: Some(BackendKind::Nftables),
            ..Status::default()
        },
    );
    Reconciler::new(
        settings,
        LoopOptions::default(),
        Box::new(Fake(log)),
        shared,
    )
}

/// The metrics of `r`, as scraped, hold each of `lines`.
#[track_caller]
fn assert_metrics(r: &Reconciler, lines: &[&str]) {
    let text = r.shared.metrics.encode();
    for line in lines {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
}

#[test]
fn first_full_then_partial_failure_forces_full() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut r = reconciler(log.clone());
    assert!(r.sync_objects(&objects("10.0.0.1"), vec![]));
    assert!(r.sync_objects(&objects("10.0.0.2"), vec![]));
    log.lock().unwrap().fail_next = true;
    assert!(!r.sync_objects(&objects("10.0.0.3"), vec![]));
    assert!(r.sync_objects(&objects("10.0.0.3"), vec![]));
    assert!(r.sync_objects(&objects("10.0.0.4"), vec![]));
    assert_eq!(
        log.lock().unwrap().syncs,
        vec![true, false, false, true, false]
    );
    let st = r.shared.status();
    assert_eq!((st.syncs, st.failures), (4, 1));
    assert_metrics(
        &r,
        &[
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 1",
            "kproxy_syncs_total{sync=\"partial\"} 2",
        ],
    );
}

#[test]
fn the_last_sync_applies_the_graph_and_keeps_no_objects() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut r = reconciler(log.clone());
    let applied = r.graph.replace_all(objects("10.0.0.1"));
    r.note_applied(applied);
    assert!(r.sync_last());
    assert_eq!(log.lock().unwrap().syncs, vec![true]);
    // The backend and /status saw the Service ...
    let applied = r.shared.status().graph.clone().unwrap();
    assert_eq!(service_ports(&applied), 1);
    // ... while the reconciler no longer holds its objects.
    assert!(r.graph.objects().services.is_empty());
    assert_eq!(service_ports(r.graph.graph()), 0);
}

#[test]
fn a_slice_change_rebuilds_its_service_in_place() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut r = reconciler(log.clone());
    let with_slices = |first_ip: &str| {
        let mut o = objects("10.0.0.1");
        for (svc, ip) in [("s", first_ip), ("t", "10.1.0.2")] {
            if svc == "t" {
                o.add_yaml("t", "apiVersion: v1\nkind: Service\nmetadata: {name: t, namespace: n}\nspec:\n  clusterIP: 10.0.0.2\n  ports: [{port: 80, protocol: TCP}]\n").unwrap();
            }
            o.add_yaml(
                "slice",
                &format!(
                    "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {svc}-1\n  namespace: n\n  labels: {{kubernetes.io/service-name: {svc}}}\naddressType: IPv4\nports: [{{port: 80, protocol: TCP}}]\nendpoints: [{{addresses: [{ip}]}}]\n"
                ),
            )
            .unwrap();
        }
        o
    };
    assert!(r.sync_objects(&with_slices("10.1.0.1"), vec![]));
    let before = Arc::as_ptr(r.graph.graph());
    assert!(r.sync_objects(&with_slices("10.1.0.9"), vec![]));
    // Updated in place: the status' copy was dropped before the update.
    assert_eq!(Arc::as_ptr(r.graph.graph()), before);
    let log = log.lock().unwrap();
    assert_eq!(log.syncs, vec![true, false]);
    let v4 = log.changes[0].family(IpFamily::V4);
    let names: Vec<String> = v4.changed.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["n/s"], "{v4:?}");
    assert!(v4.added.is_empty() && v4.removed.is_empty(), "{v4:?}");
    // Two slices, then one.
    assert_metrics(&r, &["kubeproxy_sync_proxy_rules_endpoint_changes_total 3"]);
}

#[test]
fn drift_forces_a_full_sync() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut r = reconciler(log.clone());
    assert!(r.sync_objects(&objects("10.0.0.1"), vec![]));
    assert!(!r.check_drift(), "no drift yet");
    log.lock().unwrap().drifted = true;
    assert!(r.check_drift());
    assert!(r.sync_objects(&objects("10.0.0.1"), vec![]));
    assert_eq!(log.lock().unwrap().syncs, vec![true, true]);
    assert!(
        r.shared
            .metrics
            .encode()
            .contains("kproxy_drift_repairs_total 1")
    );
}

#[test]
fn a_failing_loader_is_a_failed_sync_not_drift() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut r = reconciler(log.clone());
    assert!(r.sync_objects(&objects("10.0.0.1"), vec![]));
    log.lock().unwrap().fail_always = true;
    assert!(!r.sync_objects(&objects("10.0.0.2"), vec![]));
    // The loop's order: the periodic check, then the retry.
    for _ in 0..4 {
        assert!(!r.check_drift(), "a failed sync is not drift");
        assert!(!r.sync());
    }
    log.lock().unwrap().fail_always = false;
    assert!(!r.check_drift());
    assert!(r.sync());
    assert!(!r.check_drift(), "in sync again");
    assert_eq!(
        log.lock().unwrap().syncs,
        vec![true, false, true, true, true, true, true],
        "retries are full syncs"
    );
    let st = r.shared.status();
    assert_eq!((st.syncs, st.failures, st.drift_repairs), (2, 5, 0));
    drop(st);
    assert_metrics(
        &r,
        &[
            "kproxy_drift_repairs_total 0",
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 5",
        ],
    );
}

#[test]
fn invalid_objects_are_counted_once() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut r = reconciler(log);
    let mut o = objects("10.0.0.1");
    o.add_yaml(
        "bad",
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: n}\nspec:\n  clusterIP: 10.0.0.999\n  ports: [{port: 80}]\n",
    )
    .unwrap();
    assert!(r.sync_objects(&o, vec![]));
    assert!(r.sync_objects(&o, vec![]));
    let g = r.shared.status().graph.clone().unwrap();
    let n = g.warnings.len();
    assert!(
        n >= 1 && g.warnings.iter().all(|w| w.object == "n/bad"),
        "{:?}",
        g.warnings
    );
    // Each warning counted once.
    assert_metrics(
        &r,
        &[
            &format!("kproxy_invalid_objects_seen_total {n}\n"),
            &format!("kproxy_invalid_objects {n}\n"),
        ],
    );
    assert_eq!(
        g.families[&IpFamily::V4].services.len(),
        1,
        "the valid Service is kept"
    );
}

#[test]
fn network_programming_latency_from_the_trigger_time() {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut r = reconciler(log);
    let with_trigger = |t: &str| {
        let mut o = objects("10.0.0.1");
        o.add_yaml(
            "slice",
            &format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s-1\n  namespace: n\n  labels: {{kubernetes.io/service-name: s}}\n  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{t}\"}}\naddressType: IPv4\nports: [{{port: 80, protocol: TCP}}]\nendpoints: [{{addresses: [10.1.0.1]}}]\n"
            ),
        )
        .unwrap();
        o
    };
    let ago = |secs: u64| {
        k8s_openapi::jiff::Timestamp::try_from(
            SystemTime::now() - std::time::Duration::from_secs(secs),
        )
        .unwrap()
        .to_string()
    };
    let count = |r: &Reconciler| {
        let text = r.shared.metrics.encode();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"} ",
                )
            })
            .map(|v| v.trim().to_string())
    };
    let first = ago(100);
    assert!(r.sync_objects(&with_trigger(&first), vec![]));
    assert_eq!(
        count(&r).as_deref(),
        None,
        "changes before start are not observed (no series yet)"
    );
    assert!(r.sync_objects(&with_trigger(&first), vec![]));
    assert_eq!(
        count(&r).as_deref(),
        None,
        "an unchanged trigger time is observed once"
    );
    assert!(r.sync_objects(&with_trigger(&ago(3)), vec![]));
    assert_eq!(count(&r).as_deref(), Some("1"));
    assert_metrics(
        &r,
        &[
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"3.0\",ip_family=\"IPv4\"} 0",
            "kubeproxy_network_programming_duration_seconds_bucket{le=\"5.0\",ip_family=\"IPv4\"} 1",
        ],
    );
}

#[tokio::test(flavor = "current_thread")]
async fn bursts_of_changes_are_coalesced() {
    let dir = std::env::temp_dir().join(format!("kproxy-coalesce-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svc = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80, protocol: TCP}}]\n"
        )
    };
    std::fs::write(dir.join("a.yaml"), svc("10.0.0.1")).unwrap();
    let log = Arc::new(Mutex::new(Log::default()));
    let mut r = reconciler(log.clone());
    r.settings.min_sync_period = std::time::Duration::from_millis(1500);
    let source = Source::File(Box::new(crate::source::file::FileSource::new(dir.clone())));
    let task = tokio::spawn(r.run(source, false, std::future::pending()));
    let syncs = || log.lock().unwrap().syncs.len();
    for _ in 0..50 {
        if syncs() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(syncs(), 1, "the initial sync");
    // Five changes well inside one minSyncPeriod: one more sync.
    for i in 2..7 {
        std::fs::write(dir.join("a.yaml"), svc(&format!("10.0.0.{i}"))).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
    let n = syncs();
    task.abort();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!((2..=3).contains(&n), "{n} syncs for a burst of 5 changes");
    assert!(!log.lock().unwrap().syncs[1], "incremental after the first");
}
