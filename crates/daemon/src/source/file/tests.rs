use super::*;
use kproxy_graph::{IpFamily, ProxyConfig};

use crate::input;
use proptest::prelude::*;

/// A fresh directory under the system's temporary directory.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kproxy-filesrc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn svc(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: n}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
    )
}

fn names(o: &Objects) -> Vec<String> {
    o.services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn cluster_ip(o: &Objects, name: &str) -> Option<String> {
    o.services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
}

/// `changed()` resolves within `secs` (a hang fails the test).
async fn changed_within(src: &mut FileSource, secs: u64) {
    tokio::time::timeout(Duration::from_secs(secs), src.changed())
        .await
        .expect("the change was seen in time")
        .expect("the files read");
}

#[test]
fn reload_notices_changes_and_keeps_state_on_bad_yaml() {
    let dir = temp_dir("reload");
    let f = dir.join("a.yaml");
    std::fs::write(&f, svc("s", "10.0.0.1")).unwrap();
    let mut src = FileSource::with_mode(dir.clone(), WatchMode::Poll);
    assert!(src.reload().unwrap());
    assert!(!src.reload().unwrap(), "unchanged files are not a change");
    assert_eq!(src.snapshot().services.len(), 1);
    std::fs::write(&f, svc("s", "10.0.0.2")).unwrap();
    assert!(src.reload().unwrap());
    std::fs::write(&f, "kind: Service\nmetadata: [unclosed").unwrap();
    std::fs::write(dir.join("b.yaml"), svc("t", "10.0.0.3")).unwrap();
    assert!(src.reload().is_err());
    let snap = src.snapshot();
    assert_eq!(names(&snap), ["s"], "previous state of every file kept");
    assert_eq!(cluster_ip(&snap, "s").as_deref(), Some("10.0.0.2"));
    std::fs::write(&f, svc("s", "10.0.0.4")).unwrap();
    assert!(src.reload().unwrap());
    assert_eq!(names(&src.snapshot()), ["s", "t"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn objects_are_handed_over_once_per_change() {
    let dir = temp_dir("drain");
    let f = dir.join("a.json");
    let list = |ips: &[&str]| {
        let items: Vec<String> = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| format!(r#"{{"metadata":{{"name":"s{i}","namespace":"n"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#))
            .collect();
        format!(r#"{{"items":[{}],"kind":"ServiceList"}}"#, items.join(","))
    };
    std::fs::write(&f, list(&["10.0.0.1", "10.0.0.2"])).unwrap();
    let mut src = FileSource::with_mode(dir.clone(), WatchMode::Poll);
    let mut graph = IncrementalGraph::new(ProxyConfig {
        node_name: "n".into(),
        ..Default::default()
    });
    assert!(src.reload().unwrap());
    assert_eq!(src.drain_into(&mut graph).services, 2);
    assert_eq!(
        src.drain_into(&mut graph).services,
        0,
        "nothing new since the last drain"
    );
    assert!(!src.reload().unwrap());
    assert_eq!(src.drain_into(&mut graph).services, 0);
    std::fs::write(&f, list(&["10.0.0.1"])).unwrap();
    assert!(src.reload().unwrap());
    assert_eq!(src.drain_into(&mut graph).services, 1, "one Service went");
    assert_eq!(src.snapshot().services.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// ServiceCIDR objects in the files (YAML and JSON) reach the graph,
/// and their changes are service-CIDR changes, not full syncs.
#[test]
fn service_cidrs_are_read_and_followed() {
    let dir = temp_dir("cidr");
    let yaml = dir.join("a.yaml");
    let json = dir.join("b.json");
    std::fs::write(
        &yaml,
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.0/16, 'fd00:96::/112']}\n",
    )
    .unwrap();
    std::fs::write(
        &json,
        r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "extra"}, "spec": {"cidrs": ["10.100.0.0/16"]}}]}"#,
    )
    .unwrap();
    let mut source = super::super::Source::File(Box::new(FileSource::with_mode(
        dir.clone(),
        WatchMode::Poll,
    )));
    let super::super::Source::File(src) = &mut source else {
        unreachable!()
    };
    assert!(src.reload().unwrap());
    let mut graph = IncrementalGraph::new(ProxyConfig {
        node_name: "n".into(),
        ..Default::default()
    });
    let applied = source.drain_into(&mut graph);
    assert_eq!(applied.service_cidrs, 2);
    graph.update();
    let cidrs = |g: &IncrementalGraph, f: IpFamily| -> Vec<String> {
        g.graph().families[&f]
            .service_cidrs
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        cidrs(&graph, IpFamily::V4),
        ["10.96.0.0/16", "10.100.0.0/16"]
    );
    assert_eq!(cidrs(&graph, IpFamily::V6), ["fd00:96::/112"]);

    // The JSON file's ServiceCIDR goes.
    std::fs::write(
        &json,
        r#"{"apiVersion": "v1", "kind": "List", "items": []}"#,
    )
    .unwrap();
    let super::super::Source::File(src) = &mut source else {
        unreachable!()
    };
    assert!(src.reload().unwrap());
    let applied = source.drain_into(&mut graph);
    assert_eq!((applied.services, applied.service_cidrs), (0, 1));
    let up = graph.update();
    assert!(up.changes.service_cidrs_changed && !up.changes.needs_full_sync);
    assert_eq!(up.rebuilt, 0);
    assert_eq!(cidrs(&graph, IpFamily::V4), ["10.96.0.0/16"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With inotify, a change to the small file re-reads and re-parses it
/// alone, not the large file beside it.
#[tokio::test(flavor = "current_thread")]
async fn inotify_reparses_only_the_changed_file() {
    let dir = temp_dir("notify");
    let big: String = (0..300)
        .map(|i| {
            format!(
                "---\n{}",
                svc(
                    &format!("big-{i}"),
                    &format!("10.1.{}.{}", i / 250, i % 250 + 1)
                )
            )
        })
        .collect();
    std::fs::write(dir.join("big.yaml"), big).unwrap();
    std::fs::write(dir.join("small.yaml"), svc("small", "10.0.0.1")).unwrap();
    let mut src = FileSource::with_mode(dir.clone(), WatchMode::Notify);
    changed_within(&mut src, 10).await;
    assert!(src.notifies(), "inotify is in use");
    assert_eq!(src.parsed, 2);
    std::fs::write(dir.join("small.yaml"), svc("small", "10.0.0.2")).unwrap();
    changed_within(&mut src, 10).await;
    assert_eq!(src.parsed, 3, "only the changed file was parsed again");
    let snap = src.snapshot();
    assert_eq!(snap.services.len(), 301);
    assert_eq!(cluster_ip(&snap, "small").as_deref(), Some("10.0.0.2"));
    // A new file, then a file removed.
    std::fs::write(dir.join("new.json"), r#"{"kind":"Service","metadata":{"name":"new","namespace":"n"},"spec":{"clusterIP":"10.0.0.9","ports":[{"port":80}]}}"#).unwrap();
    changed_within(&mut src, 10).await;
    assert_eq!(src.parsed, 4);
    assert_eq!(src.snapshot().services.len(), 302);
    std::fs::remove_file(dir.join("small.yaml")).unwrap();
    changed_within(&mut src, 10).await;
    assert_eq!(src.parsed, 4, "a removal parses nothing");
    assert_eq!(cluster_ip(&src.snapshot(), "small"), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A ConfigMap volume as the kubelet writes it: each key a symlink
/// through `..data` to a timestamped directory; an update writes a new
/// directory and swaps `..data` to it with one rename.
#[tokio::test(flavor = "current_thread")]
async fn configmap_symlink_swap_is_seen_by_inotify() {
    let dir = temp_dir("configmap");
    let write_version = |v: &str, ip: &str| {
        let d = dir.join(format!("..2026_12_07_{v}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("services.yaml"), svc("cm", ip)).unwrap();
        std::os::unix::fs::symlink(format!("..2026_12_07_{v}"), dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    };
    write_version("01", "10.0.0.1");
    std::os::unix::fs::symlink("..data/services.yaml", dir.join("services.yaml")).unwrap();
    let mut src = FileSource::with_mode(dir.clone(), WatchMode::Notify);
    changed_within(&mut src, 10).await;
    assert!(src.notifies(), "inotify is in use");
    assert_eq!(
        cluster_ip(&src.snapshot(), "cm").as_deref(),
        Some("10.0.0.1")
    );

    // Twice: the second time, the watches follow the new targets.
    for (old, new, ip) in [("01", "02", "10.0.0.2"), ("02", "03", "10.0.0.3")] {
        write_version(new, ip);
        std::fs::remove_dir_all(dir.join(format!("..2026_12_07_{old}"))).unwrap();
        // Well inside the full re-read's interval: inotify saw it.
        changed_within(&mut src, 5).await;
        assert_eq!(cluster_ip(&src.snapshot(), "cm").as_deref(), Some(ip));
    }

    // An in-place edit of the target behind the symlink.
    std::fs::write(
        dir.join("..2026_12_07_03/services.yaml"),
        svc("cm", "10.0.0.4"),
    )
    .unwrap();
    changed_within(&mut src, 5).await;
    assert_eq!(
        cluster_ip(&src.snapshot(), "cm").as_deref(),
        Some("10.0.0.4")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Forced polling (what a network file system gets) sees edits, new
/// files, a symlink swap and removals, without inotify.
#[tokio::test(flavor = "current_thread")]
async fn forced_polling_sees_changes() {
    let dir = temp_dir("poll");
    std::fs::write(dir.join("a.yaml"), svc("a", "10.0.0.1")).unwrap();
    std::fs::create_dir(dir.join("v1")).unwrap();
    std::fs::write(dir.join("v1/b.yaml"), svc("b", "10.0.0.2")).unwrap();
    std::os::unix::fs::symlink("v1/b.yaml", dir.join("b.yaml")).unwrap();
    let mut src = FileSource::with_mode(dir.clone(), WatchMode::Poll);
    changed_within(&mut src, 10).await;
    assert!(!src.notifies(), "polling, not inotify");
    assert_eq!(names(&src.snapshot()), ["a", "b"]);

    std::fs::write(dir.join("a.yaml"), svc("a", "10.0.0.3")).unwrap();
    changed_within(&mut src, 5).await;
    assert_eq!(
        cluster_ip(&src.snapshot(), "a").as_deref(),
        Some("10.0.0.3")
    );
    assert_eq!(src.parsed, 3, "only the changed file was parsed again");

    std::fs::create_dir(dir.join("v2")).unwrap();
    std::fs::write(dir.join("v2/b.yaml"), svc("b", "10.0.0.4")).unwrap();
    std::os::unix::fs::symlink("v2/b.yaml", dir.join("b.tmp")).unwrap();
    std::fs::rename(dir.join("b.tmp"), dir.join("b.yaml")).unwrap();
    changed_within(&mut src, 5).await;
    assert_eq!(
        cluster_ip(&src.snapshot(), "b").as_deref(),
        Some("10.0.0.4")
    );

    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    changed_within(&mut src, 5).await;
    assert_eq!(names(&src.snapshot()), ["b"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One file's content in the property test: Services and slices from
/// a small pool of names (so files repeat each other's objects), an
/// object of another kind and an empty document (warnings).
fn file_text(seed: &[u8]) -> String {
    let mut out = String::new();
    for (i, b) in seed.iter().enumerate() {
        let name = format!("s{}", b % 6);
        match b % 5 {
            0 | 1 => out += &format!("---\n{}", svc(&name, &format!("10.0.{}.{}", i, b))),
            2 => {
                out += &format!(
                    "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata:\n  name: {name}-x\n  namespace: n\n  labels: {{kubernetes.io/service-name: {name}}}\nendpoints:\n- addresses: [10.1.{i}.{b}]\n  conditions: {{ready: true}}\nports: [{{port: 8080}}]\n"
                )
            }
            3 => {
                out += &format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{b}}}\n")
            }
            _ => out += "---\n",
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize, Vec<u8>),
    Remove(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4usize, proptest::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(f, s)| Op::Write(f, s)),
        1 => (0..4usize).prop_map(Op::Remove),
    ]
}

const FILES: [&str; 4] = ["a.yaml", "b.yml", "c.json", "d.yaml"];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("KPROXY_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    /// After any sequence of edits, additions and removals, each read
    /// again the way inotify (that file) or polling (every file) would,
    /// the source's objects and warnings equal a fresh read of the
    /// directory, and the graph fed from it equals one fed that read.
    #[test]
    fn per_file_reading_equals_a_fresh_read(
        ops in proptest::collection::vec((op(), any::<bool>()), 1..24),
    ) {
        let dir = temp_dir("prop");
        let config = ProxyConfig { node_name: "n".into(), ..Default::default() };
        let mut src = FileSource::with_mode(dir.clone(), WatchMode::Poll);
        let mut graph = IncrementalGraph::new(config.clone());
        src.reload().unwrap();
        for (op, whole) in ops {
            let file = match &op {
                Op::Write(f, _) | Op::Remove(f) => dir.join(FILES[*f]),
            };
            match op {
                // JSON files hold YAML too: the reader takes either.
                Op::Write(_, seed) => std::fs::write(&file, file_text(&seed)).unwrap(),
                Op::Remove(_) => { let _ = std::fs::remove_file(&file); }
            }
            if whole {
                src.reload().unwrap();
            } else {
                src.refresh(&Dirty { files: [file].into(), ..Dirty::default() }).unwrap();
            }
            let (fresh, fresh_warnings) = input::load_objects(std::slice::from_ref(&dir)).unwrap();
            let mine = src.snapshot();
            // Services and slices are kept in compact form: compare
            // with the fresh reading's objects in the same form.
            let services: Vec<_> =
                fresh.services.iter().map(|s| CompactService::from(s).to_service()).collect();
            let slices: Vec<_> =
                fresh.endpoint_slices.iter().map(|s| CompactSlice::from(s).to_slice()).collect();
            prop_assert_eq!(&mine.services, &services);
            prop_assert_eq!(&mine.endpoint_slices, &slices);
            prop_assert_eq!(&mine.nodes, &fresh.nodes);
            prop_assert_eq!(&mine.service_cidrs, &fresh.service_cidrs);
            prop_assert_eq!(&src.warnings(), &fresh_warnings);
            src.drain_into(&mut graph);
            graph.update();
            // What the whole reading handed the graph before.
            let mut want = IncrementalGraph::new(config.clone());
            want.set_extra_warnings(fresh_warnings);
            want.replace_all(fresh);
            want.update();
            prop_assert_eq!(&**graph.graph(), &**want.graph());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
