//! End-to-end tests of [`KubeSource`] against the API server emulator:
//! real HTTP, real kube-rs client and kube-runtime watchers.

use std::path::PathBuf;
use std::time::Duration;

use kproxy_apiserver_emulator::{Emulator, Kind};
use kproxy_graph::Objects;
use kproxy_testkit::TempDir;
use serde_json::{Value, json};

use super::{KubeSource, KubeSourceOptions};

const NODE: &str = "test-node";
/// Long enough for the watchers' backoff (it grows towards 30 s) to come
/// round after an outage, short enough that a hang fails the test.
const CATCH_UP: Duration = Duration::from_secs(60);

fn service(ns: &str, name: &str, port: u16, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"type": "ClusterIP", "clusterIP": "172.30.0.10", "clusterIPs": ["172.30.0.10"],
                 "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": 8080}]}
    })
}

fn slice(ns: &str, name: &str, svc: &str, ips: &[&str], labels: Value) -> Value {
    let mut labels = labels;
    labels["kubernetes.io/service-name"] = json!(svc);
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "addressType": "IPv4",
        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

fn node(name: &str, zone: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.1.0.1"}]}
    })
}

/// The snapshot in a form that is easy to assert on.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    services: Vec<String>,
    slices: Vec<String>,
    nodes: Vec<String>,
}

fn summary(o: &Objects) -> Summary {
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!(
            "{}/{}",
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default()
        )
    };
    Summary {
        services: o
            .services
            .iter()
            .map(|s| {
                let port = s
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.ports.as_ref())
                    .and_then(|p| p.first())
                    .map_or(0, |p| p.port);
                format!("{}:{port}", name(&s.metadata))
            })
            .collect(),
        slices: o
            .endpoint_slices
            .iter()
            .map(|s| {
                let ips: Vec<String> = s
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addresses.clone())
                    .collect();
                format!("{}={}", name(&s.metadata), ips.join(","))
            })
            .collect(),
        nodes: o
            .nodes
            .iter()
            .map(|n| {
                let zone = n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("topology.kubernetes.io/zone"))
                    .cloned()
                    .unwrap_or_default();
                format!("{}@{zone}", n.metadata.name.clone().unwrap_or_default())
            })
            .collect(),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

struct Harness {
    emu: Emulator,
    _dir: TempDir,
    kubeconfig: PathBuf,
}

async fn harness(test: &str) -> Harness {
    let (emu, _) = Emulator::start().await.expect("emulator starts");
    let dir = TempDir::new(&format!("kube-{test}"));
    let kubeconfig = dir.join("kubeconfig");
    emu.write_kubeconfig(&kubeconfig)
        .expect("kubeconfig written");
    Harness {
        emu,
        _dir: dir,
        kubeconfig,
    }
}

impl Harness {
    fn apply(&self, v: Value) {
        self.emu.apply(&v).expect("object applied");
    }

    async fn source(&self, proxy_name: Option<&str>) -> KubeSource {
        self.source_with(KubeSourceOptions {
            proxy_name: proxy_name.map(str::to_string),
            ..Default::default()
        })
        .await
    }

    /// A source on this emulator as `node`, with the other `options`.
    async fn source_with(&self, options: KubeSourceOptions) -> KubeSource {
        KubeSource::new(KubeSourceOptions {
            kubeconfig: Some(self.kubeconfig.clone()),
            node_name: NODE.into(),
            ..options
        })
        .await
        .expect("kube source starts")
    }

    /// Every request fails with 500 from now on (until `recover`).
    const FAIL: fn(&Emulator) = |emu| emu.fail_for(Duration::from_secs(600));
    /// Every request fails with 503 from now on (until `recover`).
    const UNAVAILABLE: fn(&Emulator) = |emu| emu.unavailable_for(Duration::from_secs(600));

    /// Starts an outage (`outage`), hangs up every watch and waits until
    /// none is open: what changes next reaches the source only once the
    /// server recovers.
    async fn cut_watches_while(&self, outage: fn(&Emulator)) {
        outage(&self.emu);
        self.emu.hang_up_watches();
        self.all_watches_closed().await;
    }

    /// Waits until no watch is open: changes made after this cannot
    /// travel through a stream that was open before.
    async fn all_watches_closed(&self) {
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.emu.open_watches() > 0 {
            assert!(
                tokio::time::Instant::now() < end,
                "{} watches still open 10 s after the hang-up",
                self.emu.open_watches()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Lists of `resource` (paged or streaming, not plain watches) the
    /// emulator was asked for so far.
    fn lists(&self, resource: &str) -> usize {
        self.emu
            .requests()
            .iter()
            .filter(|r| r.contains(&format!("/{resource}?")) && is_list(r))
            .count()
    }
}

/// Whether a request, as the emulator records it, is a streaming list: a
/// watch with `sendInitialEvents=true`.
fn is_streaming_list(r: &str) -> bool {
    r.contains("watch=true") && r.contains("sendInitialEvents=true")
}

/// Whether a request is a list: a LIST (a page of one) or a streaming
/// list.
fn is_list(r: &str) -> bool {
    !r.contains("watch=true") || is_streaming_list(r)
}

/// A harness with [`base`] applied and a source synced to it, with at
/// least `watches` watches open.
async fn synced(test: &str, watches: usize) -> (Harness, KubeSource) {
    let h = harness(test).await;
    base(&h);
    let mut src = h.source(None).await;
    wait_for(&mut src, &base_summary(), Duration::from_secs(20)).await;
    assert!(
        h.emu
            .wait_for_watches(watches, Duration::from_secs(10))
            .await
    );
    (h, src)
}

/// `n` Services in namespace `bulk`, each with an EndpointSlice of one
/// endpoint.
/// A harness whose API server holds this node and `n` Services, each
/// with one EndpointSlice.
async fn bulk_harness(test: &str, n: u16) -> Harness {
    let h = harness(test).await;
    h.apply(node(NODE, "z1"));
    bulk(&h, n);
    h
}

fn bulk(h: &Harness, n: u16) {
    for i in 0..n {
        let name = format!("svc-{i:04}");
        h.apply(service("bulk", &name, 1000 + i, json!({})));
        let ip = format!("10.{}.{}.1", i / 250, i % 250);
        h.apply(slice(
            "bulk",
            &format!("{name}-x"),
            &name,
            &[&ip],
            json!({}),
        ));
    }
}

/// Waits for the source's first sync, at most `secs` seconds.
async fn first_sync(src: &mut KubeSource, secs: u64) {
    tokio::time::timeout(Duration::from_secs(secs), src.changed())
        .await
        .unwrap_or_else(|_| panic!("no first sync within {secs} s: {:?}", src.errors()))
        .expect("changed() succeeds");
}

/// Waits, through `changed()`, until the snapshot's summary is `want`.
async fn wait_for(src: &mut KubeSource, want: &Summary, timeout: Duration) {
    wait_until(src, summary, want, timeout).await;
}

/// Waits, through `changed()`, until the source is synced and `see` of
/// its snapshot is `want`; then checks the drained changes against it.
async fn wait_until<S: PartialEq + std::fmt::Debug>(
    src: &mut KubeSource,
    see: impl Fn(&Objects) -> S,
    want: &S,
    timeout: Duration,
) {
    let end = tokio::time::Instant::now() + timeout;
    while !(src.synced() && &see(&src.snapshot()) == want) {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, src.changed()).await {
            Ok(r) => r.expect("changed() succeeds"),
            Err(_) => panic!(
                "timed out after {timeout:?} waiting for {want:#?}; the source has {:#?} (errors {:?})",
                see(&src.snapshot()),
                src.errors()
            ),
        }
    }
    check_feed(src);
}

/// The changes `drain_into` handed over so far give the graph a full
/// build of the snapshot gives.
fn check_feed(src: &mut KubeSource) {
    let config = kproxy_graph::ProxyConfig {
        node_name: src.node_name.clone(),
        proxy_name: src.proxy_name.clone(),
        ..Default::default()
    };
    let mut mirror = src
        .mirror
        .take()
        .unwrap_or_else(|| Box::new(kproxy_graph::IncrementalGraph::new(config.clone())));
    src.drain_into(&mut mirror);
    mirror.update();
    let full = kproxy_graph::ServiceGraph::build(&src.snapshot(), &config);
    assert_eq!(
        **mirror.graph(),
        full,
        "the drained changes disagree with the snapshot"
    );
    src.mirror = Some(mirror);
}

fn base(h: &Harness) {
    h.apply(service("default", "web", 80, json!({"app": "web"})));
    h.apply(slice("default", "web-1", "web", &["10.0.1.1"], json!({})));
    h.apply(node(NODE, "z1"));
}

fn base_summary() -> Summary {
    Summary {
        services: s(&["default/web:80"]),
        slices: s(&["default/web-1=10.0.1.1"]),
        nodes: s(&["test-node@z1"]),
    }
}

#[tokio::test]
async fn initial_sync_uses_kube_proxy_selectors() {
    let h = harness("initial").await;
    base(&h);
    h.apply(service(
        "default",
        "other-proxy",
        81,
        json!({"service.kubernetes.io/service-proxy-name": "other"}),
    ));
    h.apply(slice(
        "default",
        "other-proxy-1",
        "other-proxy",
        &["10.0.2.1"],
        json!({"service.kubernetes.io/service-proxy-name": "other"}),
    ));
    h.apply(slice(
        "default",
        "headless-1",
        "headless",
        &["10.0.3.1"],
        json!({"service.kubernetes.io/headless": ""}),
    ));
    h.apply(node("other-node", "z2"));
    let mut src = h.source(None).await;
    first_sync(&mut src, 20).await;
    assert!(src.synced());
    assert_eq!(summary(&src.snapshot()), base_summary());

    let requests = h.emu.requests();
    let want_labels =
        "labelSelector=!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
    for resource in [
        "/api/v1/services?",
        "/apis/discovery.k8s.io/v1/endpointslices?",
    ] {
        assert!(
            requests
                .iter()
                .any(|r| r.contains(resource) && r.contains(want_labels)),
            "no {resource} request with {want_labels} in {requests:#?}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/api/v1/nodes?")
                && r.contains("fieldSelector=metadata.name=test-node")),
        "no node request by field selector in {requests:#?}"
    );
    // Only list and watch on the four collections, as deploy/rbac.yaml
    // grants: no single-object GETs, nothing else.
    let allowed = [
        "GET /api/v1/services?",
        "GET /apis/discovery.k8s.io/v1/endpointslices?",
        "GET /api/v1/nodes?",
        "GET /apis/networking.k8s.io/v1/servicecidrs?",
    ];
    for r in &requests {
        assert!(
            allowed.iter().any(|a| r.starts_with(a)),
            "request outside the ClusterRole: {r}"
        );
    }
}

#[tokio::test]
async fn proxy_name_selects_unlabelled_and_own_objects() {
    let h = harness("proxy-name").await;
    base(&h);
    let mine = json!({"service.kubernetes.io/service-proxy-name": "kproxy"});
    let other = json!({"service.kubernetes.io/service-proxy-name": "other"});
    h.apply(service("default", "mine", 82, mine.clone()));
    h.apply(slice("default", "mine-1", "mine", &["10.0.4.1"], mine));
    h.apply(service("default", "theirs", 83, other.clone()));
    h.apply(slice("default", "theirs-1", "theirs", &["10.0.5.1"], other));
    let mut src = h.source(Some("kproxy")).await;
    let want = Summary {
        services: s(&["default/mine:82", "default/web:80"]),
        slices: s(&["default/mine-1=10.0.4.1", "default/web-1=10.0.1.1"]),
        nodes: s(&["test-node@z1"]),
    };
    wait_for(&mut src, &want, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn first_sync_waits_for_every_list() {
    let h = harness("wait-all").await;
    base(&h);
    // Nodes cannot be listed for a while; Services and EndpointSlices can.
    // (Failures end by `recover`, not by a timer, so a slow machine cannot
    // end them before the assertion.)
    h.emu.fail_matching_for("/nodes", Duration::from_secs(600));
    let mut src = h.source(None).await;
    let early = tokio::time::timeout(Duration::from_secs(2), src.changed()).await;
    assert!(
        early.is_err(),
        "changed() resolved before the Node list succeeded: {:?}",
        summary(&src.snapshot())
    );
    assert!(!src.synced());
    assert!(
        h.lists("services") > 0 && h.lists("endpointslices") > 0,
        "the other lists were not even tried: {:#?}",
        h.emu.requests()
    );
    h.emu.recover();
    wait_for(&mut src, &base_summary(), CATCH_UP).await;
}

#[tokio::test]
async fn add_modify_delete_of_each_kind() {
    let (h, mut src) = synced("changes", 0).await;

    // Services.
    h.apply(service("prod", "api", 443, json!({})));
    let mut want = base_summary();
    want.services = s(&["default/web:80", "prod/api:443"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;
    h.apply(service("prod", "api", 8443, json!({})));
    want.services = s(&["default/web:80", "prod/api:8443"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;
    h.emu.delete(Kind::Service, "prod", "api").expect("deleted");
    want.services = s(&["default/web:80"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;

    // EndpointSlices.
    h.apply(slice("default", "web-2", "web", &["10.0.1.2"], json!({})));
    want.slices = s(&["default/web-1=10.0.1.1", "default/web-2=10.0.1.2"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;
    h.apply(slice(
        "default",
        "web-1",
        "web",
        &["10.0.1.3", "10.0.1.4"],
        json!({}),
    ));
    want.slices = s(&["default/web-1=10.0.1.3,10.0.1.4", "default/web-2=10.0.1.2"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;
    h.emu
        .delete(Kind::EndpointSlice, "default", "web-2")
        .expect("deleted");
    want.slices = s(&["default/web-1=10.0.1.3,10.0.1.4"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;

    // Leaving the selection is a deletion for the watcher.
    h.apply(slice(
        "default",
        "web-1",
        "web",
        &["10.0.1.3"],
        json!({"service.kubernetes.io/service-proxy-name": "other"}),
    ));
    want.slices = vec![];
    wait_for(&mut src, &want, Duration::from_secs(10)).await;
    // And entering it an addition.
    h.apply(slice("default", "web-1", "web", &["10.0.1.5"], json!({})));
    want.slices = s(&["default/web-1=10.0.1.5"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;

    // This node; other nodes are not watched at all.
    h.apply(node(NODE, "z9"));
    want.nodes = s(&["test-node@z9"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;
    h.apply(node("other-node", "z1"));
    h.emu.delete(Kind::Node, "", NODE).expect("deleted");
    want.nodes = vec![];
    wait_for(&mut src, &want, Duration::from_secs(10)).await;
    h.apply(node(NODE, "z2"));
    want.nodes = s(&["test-node@z2"]);
    wait_for(&mut src, &want, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn catches_up_after_the_api_server_fails_for_a_while() {
    let (h, mut src) = synced("fail", 3).await;

    h.cut_watches_while(Harness::FAIL).await;
    h.apply(service("default", "web", 8080, json!({})));
    h.apply(slice("default", "web-1", "web", &["10.0.1.9"], json!({})));
    h.apply(node(NODE, "z3"));
    // The watchers notice the failures.
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while src.errors().is_empty() && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!src.errors().is_empty(), "no watcher saw the HTTP 500s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        summary(&src.snapshot()),
        base_summary(),
        "the last good state stays during the outage"
    );
    h.emu.recover();
    let want = Summary {
        services: s(&["default/web:8080"]),
        slices: s(&["default/web-1=10.0.1.9"]),
        nodes: s(&["test-node@z3"]),
    };
    wait_for(&mut src, &want, CATCH_UP).await;
}

#[tokio::test]
async fn relists_when_a_watch_falls_behind_the_history() {
    let (h, mut src) = synced("gone", 3).await;
    let lists_before = h.lists("services");

    // While the watchers are disconnected, more changes happen than the
    // server keeps: resuming from the old resourceVersion is 410 Gone.
    h.emu.set_history_limit(2);
    h.cut_watches_while(Harness::FAIL).await;
    for i in 0..5u16 {
        h.apply(service("default", &format!("s{i}"), 1000 + i, json!({})));
    }
    h.emu
        .delete(Kind::Service, "default", "s0")
        .expect("deleted");
    h.emu.recover();
    let want = Summary {
        services: s(&[
            "default/s1:1001",
            "default/s2:1002",
            "default/s3:1003",
            "default/s4:1004",
            "default/web:80",
        ]),
        ..base_summary()
    };
    wait_for(&mut src, &want, CATCH_UP).await;
    assert!(
        h.lists("services") > lists_before,
        "services were not listed again after 410: {:#?}",
        h.emu.requests()
    );
    assert!(
        h.emu
            .requests()
            .iter()
            .any(|r| r.contains("/services?") && r.contains("watch=true")),
        "no watch requests"
    );
}

#[tokio::test]
async fn relists_after_a_410_inside_an_open_watch() {
    let (h, mut src) = synced("expire", 3).await;
    let lists_before = (
        h.lists("services"),
        h.lists("endpointslices"),
        h.lists("nodes"),
    );
    h.emu.expire_watches();
    h.apply(slice("default", "web-1", "web", &["10.0.1.7"], json!({})));
    let want = Summary {
        slices: s(&["default/web-1=10.0.1.7"]),
        ..base_summary()
    };
    wait_for(&mut src, &want, CATCH_UP).await;
    // Every watcher lists again (the store is replaced, not emptied).
    let end = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let now = (
            h.lists("services"),
            h.lists("endpointslices"),
            h.lists("nodes"),
        );
        if now.0 > lists_before.0 && now.1 > lists_before.1 && now.2 > lists_before.2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "not every watcher relisted: before {lists_before:?}, now {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(summary(&src.snapshot()), want);
    // The relists replaced each kind in the graph too.
    check_feed(&mut src);
}

#[tokio::test]
async fn resumes_watches_after_hang_ups_without_relisting() {
    let (h, mut src) = synced("hangup", 3).await;
    let lists_before = h.lists("endpointslices");
    let mut want = base_summary();
    for i in 0..3 {
        let started = h.emu.watches_started();
        h.emu.hang_up_watches();
        // A watcher reconnects only after its old stream ended, so once
        // all three have, the change below can only travel through a
        // resumed watch.
        let end = tokio::time::Instant::now() + CATCH_UP;
        while h.emu.watches_started() < started + 3 {
            assert!(
                tokio::time::Instant::now() < end,
                "the watchers did not reconnect"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ip = format!("10.0.9.{i}");
        h.apply(slice("default", "web-1", "web", &[&ip], json!({})));
        want.slices = vec![format!("default/web-1={ip}")];
        wait_for(&mut src, &want, CATCH_UP).await;
        assert!(h.emu.wait_for_watches(3, Duration::from_secs(10)).await);
    }
    assert_eq!(
        h.lists("endpointslices"),
        lists_before,
        "a clean hang-up should resume the watch, not list again"
    );
}

#[tokio::test]
async fn survives_an_api_server_restart() {
    let (mut h, mut src) = synced("restart", 0).await;
    h.emu.stop().await;
    assert_eq!(h.emu.open_watches(), 0, "stop closes every watch");
    h.apply(service("default", "web", 9090, json!({})));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The last good state stays while the server is away.
    assert_eq!(summary(&src.snapshot()), base_summary());
    h.emu.restart().await.expect("restarts on the same port");
    let want = Summary {
        services: s(&["default/web:9090"]),
        ..base_summary()
    };
    wait_for(&mut src, &want, CATCH_UP).await;
}

#[tokio::test]
async fn bad_kubeconfig_is_a_clear_error() {
    let err = KubeSource::new(KubeSourceOptions {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        node_name: NODE.into(),
        proxy_name: None,
        ..Default::default()
    })
    .await
    .expect_err("a missing kubeconfig fails");
    assert!(
        format!("{err:#}").contains("/nonexistent/kubeconfig"),
        "error does not name the file: {err:#}"
    );
}

#[tokio::test]
async fn large_cluster_syncs_and_follows_changes() {
    const N: u16 = 2000;
    let h = bulk_harness("large", N).await;
    let start = std::time::Instant::now();
    let mut src = h.source(None).await;
    first_sync(&mut src, 60).await;
    let synced = start.elapsed();
    let t = std::time::Instant::now();
    let snap = src.snapshot();
    let snapshot = t.elapsed();
    check_feed(&mut src);
    assert_eq!(snap.services.len(), usize::from(N));
    assert_eq!(snap.endpoint_slices.len(), usize::from(N));
    assert_eq!(snap.nodes.len(), 1);
    // Sorted by namespace and name.
    assert_eq!(snap.services[0].metadata.name.as_deref(), Some("svc-0000"));
    assert_eq!(
        snap.services[usize::from(N) - 1].metadata.name.as_deref(),
        Some("svc-1999")
    );
    // The initial lists were streamed, one request each.
    assert_eq!(h.lists("services"), 1, "{:#?}", h.emu.requests());
    // One change among many arrives alone.
    h.apply(slice(
        "bulk",
        "svc-0007-x",
        "svc-0007",
        &["10.99.0.7"],
        json!({}),
    ));
    let t = std::time::Instant::now();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::timeout_at(end, src.changed())
            .await
            .expect("the change arrives within 10 s")
            .expect("changed() succeeds");
        let snap = src.snapshot();
        let s7 = snap
            .endpoint_slices
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("svc-0007-x"))
            .expect("slice present");
        if s7.endpoints[0].addresses == ["10.99.0.7"] {
            break;
        }
    }
    // ... and reaches the graph alone: one slice, one Service rebuilt.
    let mut mirror = src.mirror.take().expect("fed above");
    let applied = src.drain_into(&mut mirror);
    assert_eq!((applied.services, applied.slices, applied.nodes), (0, 1, 0));
    assert_eq!(mirror.update().rebuilt, 1);
    src.mirror = Some(mirror);
    check_feed(&mut src);
    eprintln!(
        "{N} services + {N} slices: initial sync {synced:?}, snapshot {snapshot:?}, one change {:?}",
        t.elapsed()
    );
}

/// Makes every watcher list again, and adds `bulk/late` (a Service and
/// its EndpointSlice) that only the new lists carry: the watches are cut
/// while the server fails, and their resourceVersions expire (410 on
/// resume).
async fn relist_with_one_more(h: &Harness) {
    h.cut_watches_while(Harness::FAIL).await;
    h.apply(service("bulk", "late", 99, json!({})));
    h.apply(slice("bulk", "late-x", "late", &["10.99.0.1"], json!({})));
    h.emu.expire_watches();
    h.emu.recover();
}

#[tokio::test]
async fn streaming_lists_are_used_when_offered_one_request_per_kind() {
    // Three pages of 500 for Services and for EndpointSlices if paged.
    const N: u16 = 1100;
    let h = bulk_harness("stream-offered", N).await;
    // A rate limit of one request a second after a burst of four: the
    // first sync needs no more than the burst.
    let mut src = h
        .source_with(KubeSourceOptions {
            rate_limit: Some(super::RateLimit { qps: 1.0, burst: 4 }),
            ..Default::default()
        })
        .await;
    first_sync(&mut src, 60).await;
    let requests = h.emu.requests();
    assert_eq!(src.snapshot().services.len(), usize::from(N));
    check_feed(&mut src);
    // One streaming list per kind and nothing else: no LIST, no page.
    for resource in ["services", "endpointslices", "nodes", "servicecidrs"] {
        let of: Vec<&String> = requests
            .iter()
            .filter(|r| r.contains(&format!("/{resource}?")))
            .collect();
        assert_eq!(of.len(), 1, "{resource}: {of:#?}");
        assert!(is_streaming_list(of[0]), "{resource}: {of:#?}");
        assert!(
            of[0].contains("resourceVersionMatch=NotOlderThan")
                && of[0].contains("allowWatchBookmarks=true"),
            "{}",
            of[0]
        );
    }
    // The streams stay open as the watches: a change arrives without
    // another request.
    h.apply(service("bulk", "late", 99, json!({})));
    let more = usize::from(N) + 1;
    wait_until(
        &mut src,
        |o| o.services.len(),
        &more,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(h.emu.requests().len(), 4, "{:#?}", h.emu.requests());
}

#[tokio::test]
async fn falls_back_to_paged_lists_when_streaming_lists_are_refused() {
    const N: u16 = 1100;
    let h = bulk_harness("stream-refused", N).await;
    h.emu.set_watch_list(false);
    let mut src = h.source(None).await;
    first_sync(&mut src, 60).await;
    assert_eq!(src.snapshot().services.len(), usize::from(N));
    assert_eq!(src.snapshot().endpoint_slices.len(), usize::from(N));
    check_feed(&mut src);
    assert!(src.errors().is_empty(), "{:?}", src.errors());
    let requests = h.emu.requests();
    // At most one refused streaming list per watcher (the first answer is
    // remembered by all), then pages of 500.
    let streamed = requests.iter().filter(|r| is_streaming_list(r)).count();
    assert!((1..=4).contains(&streamed), "{requests:#?}");
    let pages = |resource: &str| {
        requests
            .iter()
            .filter(|r| r.contains(&format!("/{resource}?")) && !r.contains("watch=true"))
            .filter(|r| r.contains("limit=500"))
            .count()
    };
    assert_eq!(pages("services"), 3, "{requests:#?}");
    assert_eq!(pages("endpointslices"), 3, "{requests:#?}");
    // A relist after a 410 lists in pages again, without asking for a
    // streaming list.
    assert!(h.emu.wait_for_watches(4, Duration::from_secs(10)).await);
    let before = h.emu.requests().len();
    relist_with_one_more(&h).await;
    let more = usize::from(N) + 1;
    wait_until(&mut src, |o| o.services.len(), &more, CATCH_UP).await;
    let after = &h.emu.requests()[before..];
    assert!(
        after.iter().any(|r| r.contains("/services?") && is_list(r)),
        "no relist: {after:#?}"
    );
    assert!(
        !after.iter().any(|r| is_streaming_list(r)),
        "asked for a streaming list again: {after:#?}"
    );
}

/// Samples the source's stores (what [`KubeSource::drain_into`] hands the
/// graph) until `done` says so: every sample must hold as many Services
/// and EndpointSlices as one of `counts`, and whenever the count changes
/// the graph fed by the drained changes must equal a build of the
/// snapshot. Returns the counts seen.
async fn sample_until(
    src: &mut KubeSource,
    counts: &[usize],
    mut done: impl FnMut(&KubeSource) -> bool,
) -> Vec<usize> {
    let end = tokio::time::Instant::now() + CATCH_UP;
    let mut seen = Vec::new();
    loop {
        let n = super::lock(&src.services).objects.len();
        let slices = super::lock(&src.slices).objects.len();
        assert!(
            counts.contains(&n) && counts.contains(&slices),
            "a partial state: {n} Services, {slices} EndpointSlices (whole: {counts:?})"
        );
        if seen.last() != Some(&n) {
            seen.push(n);
            if src.synced() {
                check_feed(src);
            }
        }
        if done(src) {
            check_feed(src);
            return seen;
        }
        assert!(tokio::time::Instant::now() < end, "not done: {seen:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn the_graph_never_sees_a_partial_list() {
    const N: usize = 1200;
    for streaming in [true, false] {
        let h = bulk_harness(&format!("partial-{streaming}"), N as u16).await;
        h.emu.set_watch_list(streaming);
        let mut src = h.source(None).await;
        // The first list: nothing, then everything.
        let seen = sample_until(&mut src, &[0, N], KubeSource::synced).await;
        assert_eq!(seen, [0, N], "streaming {streaming}");
        // A relist after a 410: the old state until the new one is whole.
        assert!(h.emu.wait_for_watches(4, Duration::from_secs(10)).await);
        let lists = h.lists("services");
        relist_with_one_more(&h).await;
        let seen = sample_until(&mut src, &[N, N + 1], |src| {
            super::lock(&src.services).objects.len() == N + 1
                && super::lock(&src.slices).objects.len() == N + 1
        })
        .await;
        assert_eq!(seen, [N, N + 1], "streaming {streaming}");
        assert!(
            h.lists("services") > lists,
            "streaming {streaming}: no relist"
        );
    }
}

#[tokio::test]
async fn unused_metadata_is_not_kept() {
    let h = harness("strip").await;
    base(&h);
    let mut svc = service("default", "big", 80, json!({}));
    svc["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": "{\"a\": \"long copy\"}",
        "keep": "me",
    });
    svc["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply",
        "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]);
    h.apply(svc);
    let mut src = h.source(None).await;
    let want = Summary {
        services: s(&["default/big:80", "default/web:80"]),
        ..base_summary()
    };
    wait_for(&mut src, &want, Duration::from_secs(20)).await;
    // Services are kept in compact form: what the graph reads, no
    // annotations or managedFields at all.
    let snap = src.snapshot();
    let meta = &snap.services[0].metadata;
    assert_eq!(meta.name.as_deref(), Some("big"));
    assert!(meta.managed_fields.is_none(), "{meta:?}");
    assert!(meta.annotations.is_none(), "{meta:?}");
    let spec = snap.services[0].spec.as_ref().expect("spec");
    assert_eq!(spec.ports.as_ref().map(|p| p[0].port), Some(80));
}

/// Requests of `resource` (lists and watches) the emulator saw since
/// `from` requests.
fn requests_of(h: &Harness, from: usize, resource: &str) -> usize {
    h.emu.requests()[from..]
        .iter()
        .filter(|r| r.contains(&format!("/{resource}?")))
        .count()
}

/// What an [`super::ErrorSink`] was told last: every watcher's current errors.
type Told = std::sync::Arc<std::sync::Mutex<Option<Vec<String>>>>;

async fn source_with_sink(h: &Harness) -> (KubeSource, Told) {
    let told = Told::default();
    let t = told.clone();
    let src = h
        .source_with(KubeSourceOptions {
            on_errors: Some(super::ErrorSink::new(move |u: &super::ErrorUpdate<'_>| {
                *t.lock().unwrap() = Some(u.current.clone());
            })),
            ..Default::default()
        })
        .await;
    (src, told)
}

/// Waits until the source shows no error, at most `limit` after `back`
/// (when the API server came back).
async fn errors_end_within(src: &KubeSource, back: tokio::time::Instant, limit: Duration) {
    while !src.errors().is_empty() {
        assert!(
            back.elapsed() < limit,
            "errors still shown {:?} after the API server came back: {:?}",
            back.elapsed(),
            src.errors()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn backoff_grows_while_the_api_server_is_down_before_the_first_list() {
    // The window and the bound: with the policy's shortest delays (1 s
    // doubling, jitter down to 0.75), a watcher makes at most 6 requests
    // in 30 s (`backoff::tests::lists_in_a_window_are_bounded`).
    const WINDOW: Duration = Duration::from_secs(30);
    const MAX_PER_WATCHER: usize = 6;
    let h = harness("down-first").await;
    base(&h);
    h.emu.unavailable_for(Duration::from_secs(600));
    let (mut src, told) = source_with_sink(&h).await;
    let started = tokio::time::Instant::now();
    // The errors are reported as they happen, before any list completed.
    while told.lock().unwrap().as_ref().is_none_or(|e| e.len() < 4) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sink was not told about the failing lists: {:?}",
            told.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(src.errors().len(), 4, "{:?}", src.errors());
    assert!(!src.synced());
    tokio::time::sleep(WINDOW.saturating_sub(started.elapsed())).await;
    let counts: Vec<(&str, usize)> = ["services", "endpointslices", "nodes", "servicecidrs"]
        .into_iter()
        .map(|r| (r, requests_of(&h, 0, r)))
        .collect();
    eprintln!("requests in the first {WINDOW:?} with the API server down: {counts:?}");
    for (resource, n) in &counts {
        assert!(
            (1..=MAX_PER_WATCHER).contains(n),
            "{resource}: {n} requests in {WINDOW:?} while the API server was down (at most {MAX_PER_WATCHER}): {counts:?}"
        );
    }
    // The server comes back: the first sync comes within the cap.
    h.emu.recover();
    let back = tokio::time::Instant::now();
    wait_for(
        &mut src,
        &base_summary(),
        super::backoff::CAP + Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "first sync {:?} after the API server came back",
        back.elapsed()
    );
    // The first sync does not wait for a failing ServiceCIDR list: that
    // watcher's error lasts until its own next try, within the cap.
    errors_end_within(&src, back, super::backoff::CAP + Duration::from_secs(10)).await;
    assert_eq!(
        told.lock().unwrap().as_deref(),
        Some(&[][..]),
        "the sink was not told that the errors are over"
    );
}

#[tokio::test]
async fn catches_up_within_the_cap_after_an_outage_ending_in_403_and_410() {
    let (h, mut src) = synced("outage", 4).await;

    // A long outage: every watcher's delay grows to the cap.
    h.cut_watches_while(Harness::UNAVAILABLE).await;
    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(src.errors().len(), 4, "{:?}", src.errors());
    // A new API server: its authorizer answers 403 for a few seconds,
    // and its watch cache does not reach back to the watchers'
    // resourceVersions (410 on resume), so they must list again.
    h.apply(slice("default", "web-1", "web", &["10.0.1.8"], json!({})));
    h.emu.expire_watches();
    h.emu.forbid_for(Duration::from_secs(3));
    let back = tokio::time::Instant::now();
    let want = Summary {
        slices: s(&["default/web-1=10.0.1.8"]),
        ..base_summary()
    };
    // The cap, the 403s, and slack for a loaded machine: today's
    // figure is printed below.
    wait_for(
        &mut src,
        &want,
        super::backoff::CAP + Duration::from_secs(3 + 10),
    )
    .await;
    eprintln!(
        "the change reached the source {:?} after the API server came back",
        back.elapsed()
    );
    // The EndpointSlice watcher's first answered resume was a 410, and it
    // listed again at once rather than after another delay (so did the
    // others, if their next try already came).
    let log = h.emu.timed_requests();
    let forbidden_until = back.into_std() + Duration::from_secs(3);
    for resource in ["endpointslices", "services", "nodes", "servicecidrs"] {
        let of = |(t, r): &&(std::time::Instant, String)| {
            *t >= forbidden_until && r.contains(&format!("/{resource}?"))
        };
        let mut after = log.iter().filter(of);
        let Some((t_watch, watch)) = after.next() else {
            assert_ne!(resource, "endpointslices", "no request after the 403s");
            continue;
        };
        assert!(watch.contains("watch=true"), "{resource}: {watch}");
        let (t_list, _) = after
            .find(|(_, r)| is_list(r))
            .expect("a list after the 410");
        let gap = t_list.duration_since(*t_watch);
        eprintln!("{resource}: listed {gap:?} after the 410");
        assert!(
            gap < Duration::from_secs(5),
            "{resource}: the list came {gap:?} after the 410"
        );
    }
}

#[tokio::test]
async fn a_transient_403_does_not_escalate_the_backoff() {
    const FORBIDDEN: Duration = Duration::from_secs(20);
    let (h, mut src) = synced("forbidden", 4).await;
    // A restarted API server whose authorizer is still loading RBAC.
    let before = h.emu.requests().len();
    h.emu.forbid_for(FORBIDDEN);
    let start = tokio::time::Instant::now();
    h.emu.hang_up_watches();
    h.all_watches_closed().await;
    h.apply(node(NODE, "z9"));
    let want = Summary {
        nodes: s(&["test-node@z9"]),
        ..base_summary()
    };
    // Retried about every second instead of after growing delays (1, 2,
    // 4, 8, 16 s would retry at 31 s at the earliest): caught up within
    // a few seconds of the 403s ending.
    wait_for(&mut src, &want, FORBIDDEN + Duration::from_secs(3)).await;
    eprintln!(
        "caught up {:?} after 403s for {FORBIDDEN:?}",
        start.elapsed()
    );
    // About one request a second during the 403s; growing delays would
    // have made 5.
    let retries = requests_of(&h, before, "nodes");
    eprintln!("node requests during the 403s: {retries}");
    assert!(
        retries >= 10,
        "{retries} node requests in {FORBIDDEN:?} of 403s: the delay grew"
    );
}

#[tokio::test]
async fn an_error_lasts_until_the_api_server_answers_again() {
    let h = harness("clears").await;
    base(&h);
    let (mut src, told) = source_with_sink(&h).await;
    wait_for(&mut src, &base_summary(), Duration::from_secs(20)).await;
    assert!(h.emu.wait_for_watches(4, Duration::from_secs(10)).await);
    let lists = h.lists("services");
    h.emu.unavailable_for(Duration::from_secs(600));
    h.emu.hang_up_watches();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while src.errors().len() < 4 {
        assert!(tokio::time::Instant::now() < end, "{:?}", src.errors());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(told.lock().unwrap().as_ref().map(Vec::len), Some(4));
    // Back, with nothing changed: the watches resume without an event,
    // and the errors end when the resumed watches are answered.
    h.emu.recover();
    let back = tokio::time::Instant::now();
    errors_end_within(&src, back, super::backoff::CAP + Duration::from_secs(5)).await;
    assert_eq!(told.lock().unwrap().as_deref(), Some(&[][..]));
    assert_eq!(h.lists("services"), lists, "resumed, not listed again");
}

#[tokio::test]
async fn client_connection_qps_and_burst_pace_requests() {
    let h = harness("qps").await;
    base(&h);
    // Paged lists: more requests than kinds.
    h.emu.set_watch_list(false);
    let mut src = h
        .source_with(KubeSourceOptions {
            rate_limit: Some(super::RateLimit { qps: 4.0, burst: 1 }),
            ..Default::default()
        })
        .await;
    wait_for(&mut src, &base_summary(), Duration::from_secs(20)).await;
    assert!(h.emu.wait_for_watches(4, Duration::from_secs(10)).await);
    // Four refused streaming lists, four lists and four watches, one
    // token each: the sixth request cannot come before 5 / 4 s after the
    // first.
    let times: Vec<std::time::Instant> = h
        .emu
        .timed_requests()
        .into_iter()
        .filter(|(_, r)| r.contains('?'))
        .map(|(t, _)| t)
        .collect();
    assert!(times.len() >= 6, "{times:?}");
    let spread = times[5].duration_since(times[0]);
    eprintln!("six requests spread over {spread:?} at qps 4, burst 1");
    assert!(
        spread >= Duration::from_millis(1200),
        "six requests within {spread:?}: not rate limited"
    );
}

fn service_cidr(name: &str, cidrs: &[&str]) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": name},
        "spec": {"cidrs": cidrs},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "",
            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    })
}

/// The snapshot's ServiceCIDRs as `name=cidr,cidr`.
fn cidr_summary(o: &Objects) -> Vec<String> {
    o.service_cidrs
        .iter()
        .map(|c| {
            let cidrs = c
                .spec
                .as_ref()
                .and_then(|s| s.cidrs.clone())
                .unwrap_or_default();
            format!(
                "{}={}",
                c.metadata.name.clone().unwrap_or_default(),
                cidrs.join(",")
            )
        })
        .collect()
}

/// Waits until the snapshot's ServiceCIDRs are `want`; then the drained
/// changes must give the graph's service CIDRs `v4` and `v6`.
async fn wait_for_cidrs(src: &mut KubeSource, want: &[&str], v4: &[&str], v6: &[&str]) {
    let want: Vec<String> = want.iter().map(ToString::to_string).collect();
    wait_until(src, cidr_summary, &want, Duration::from_secs(20)).await;
    let graph = src
        .mirror
        .as_ref()
        .expect("check_feed keeps the graph")
        .graph();
    for (family, want) in [
        (kproxy_graph::IpFamily::V4, v4),
        (kproxy_graph::IpFamily::V6, v6),
    ] {
        let got: Vec<String> = graph
            .family(family)
            .expect("both families")
            .service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, want, "{family} service CIDRs");
    }
}

/// Waits until the cluster's default ServiceCIDR (`kubernetes`, one range
/// per family) is the only one, in the source and in the graph.
async fn wait_for_only_the_default_cidrs(src: &mut KubeSource) {
    wait_for_cidrs(
        src,
        &["kubernetes=10.96.0.0/16,fd00:96::/112"],
        &["10.96.0.0/16"],
        &["fd00:96::/112"],
    )
    .await;
}

#[tokio::test]
async fn service_cidrs_are_watched() {
    let h = harness("servicecidrs").await;
    base(&h);
    h.apply(service_cidr(
        "kubernetes",
        &["10.96.0.0/16", "fd00:96::/112"],
    ));
    // A slow ServiceCIDR list: the first sync still has them, it waits
    // for their list (as the list succeeds).
    h.emu
        .delay_matching("/servicecidrs", Duration::from_millis(1500));
    let mut src = h.source(None).await;
    first_sync(&mut src, 20).await;
    assert_eq!(
        cidr_summary(&src.snapshot()),
        ["kubernetes=10.96.0.0/16,fd00:96::/112"]
    );
    h.emu.delay_matching("/servicecidrs", Duration::ZERO);
    wait_for_only_the_default_cidrs(&mut src).await;
    assert!(
        h.emu
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /apis/networking.k8s.io/v1/servicecidrs?")),
        "no ServiceCIDR list: {:#?}",
        h.emu.requests()
    );

    // Added at run time.
    h.apply(service_cidr("extra", &["10.100.0.0/16"]));
    wait_for_cidrs(
        &mut src,
        &[
            "extra=10.100.0.0/16",
            "kubernetes=10.96.0.0/16,fd00:96::/112",
        ],
        &["10.96.0.0/16", "10.100.0.0/16"],
        &["fd00:96::/112"],
    )
    .await;
    // Changed.
    h.apply(service_cidr("extra", &["10.100.0.0/16", "fd00:100::/112"]));
    wait_for_cidrs(
        &mut src,
        &[
            "extra=10.100.0.0/16,fd00:100::/112",
            "kubernetes=10.96.0.0/16,fd00:96::/112",
        ],
        &["10.96.0.0/16", "10.100.0.0/16"],
        &["fd00:96::/112", "fd00:100::/112"],
    )
    .await;
    // Deleted.
    h.emu
        .delete(Kind::ServiceCidr, "", "extra")
        .expect("deleted");
    wait_for_only_the_default_cidrs(&mut src).await;
}

#[tokio::test]
async fn first_sync_does_not_wait_for_a_failing_service_cidr_list() {
    let h = harness("servicecidrs-late").await;
    base(&h);
    h.apply(service_cidr("kubernetes", &["10.96.0.0/16"]));
    // A role without the ServiceCIDR grant, or an API server without the
    // API: the Services are still served.
    h.emu
        .fail_matching_for("/servicecidrs", Duration::from_secs(600));
    let mut src = h.source(None).await;
    wait_for(&mut src, &base_summary(), Duration::from_secs(20)).await;
    assert!(src.snapshot().service_cidrs.is_empty());
    h.emu.recover();
    wait_for_cidrs(
        &mut src,
        &["kubernetes=10.96.0.0/16"],
        &["10.96.0.0/16"],
        &[],
    )
    .await;
}
