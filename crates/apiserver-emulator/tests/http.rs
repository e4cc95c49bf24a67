//! The emulator's HTTP behaviour, seen by a raw HTTP/1.1 client.

use std::net::SocketAddr;
use std::time::Duration;

use kproxy_apiserver_emulator::{Emulator, Kind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn send(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: emulator\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write request");
    s
}

/// A whole (non-streaming) response: status code and JSON body.
async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let mut s = send(addr, path).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("response within 5 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf);
    let code: u16 = text[9..12].parse().expect("status code");
    let body = text.split_once("\r\n\r\n").expect("headers end").1;
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Reads a streaming response until `want` appears (or panics after `timeout`).
async fn read_until(s: &mut TcpStream, seen: &mut String, want: &str, timeout: Duration) {
    let end = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("stream ended without {want:?}; got {seen}"),
            Ok(Ok(n)) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!("no {want:?} within {timeout:?}; got {seen}"),
        }
    }
}

/// Reads a streaming response until an event of type `ty` (`ADDED`, ...)
/// appears, within 5 s.
async fn read_event(s: &mut TcpStream, seen: &mut String, ty: &str) {
    read_until(
        s,
        seen,
        &format!(r#""type":"{ty}""#),
        Duration::from_secs(5),
    )
    .await;
}

fn svc(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default", "labels": labels},
           "spec": {"clusterIP": "172.30.0.1", "ports": [{"port": 80}]}})
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn list_with_selectors_and_resource_versions() {
    let (emu, addr) = Emulator::start().await.expect("start");
    let rv_a = emu.apply(&svc("a", json!({}))).expect("apply");
    emu.apply(&svc(
        "b",
        json!({"service.kubernetes.io/service-proxy-name": "x"}),
    ))
    .expect("apply");
    emu.apply(&svc("c", json!({"service.kubernetes.io/headless": ""})))
        .expect("apply");
    // Re-applying an unchanged object does not bump anything.
    assert_eq!(emu.apply(&svc("a", json!({}))).expect("apply"), rv_a);

    let (code, all) = get(addr, "/api/v1/services").await;
    assert_eq!(code, 200);
    assert_eq!(names(&all), ["a", "b", "c"]);
    assert_eq!(all["kind"], "ServiceList");
    assert_eq!(
        all["metadata"]["resourceVersion"],
        emu.resource_version().to_string()
    );
    let (_, sel) = get(
        addr,
        "/api/v1/services?labelSelector=%21service.kubernetes.io%2Fservice-proxy-name%2C%21service.kubernetes.io%2Fheadless",
    )
    .await;
    assert_eq!(names(&sel), ["a"]);
    let (_, eq) = get(
        addr,
        "/api/v1/namespaces/default/services?labelSelector=service.kubernetes.io/service-proxy-name%3Dx",
    )
    .await;
    assert_eq!(names(&eq), ["b"]);
    let (code, bad) = get(addr, "/api/v1/services?labelSelector=a%20in%201").await;
    assert_eq!((code, bad["code"].as_u64()), (400, Some(400)));
    let (code, _) = get(addr, "/api/v1/pods").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn nodes_by_name_and_field_selector() {
    let (emu, addr) = Emulator::start().await.expect("start");
    for n in ["n1", "n2"] {
        emu.apply(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}))
            .expect("apply");
    }
    let (_, l) = get(addr, "/api/v1/nodes?fieldSelector=metadata.name%3Dn2").await;
    assert_eq!(names(&l), ["n2"]);
    let (code, n) = get(addr, "/api/v1/nodes/n1").await;
    assert_eq!((code, n["metadata"]["name"].as_str()), (200, Some("n1")));
    let (code, _) = get(addr, "/api/v1/nodes/n3").await;
    assert_eq!(code, 404);
    let (code, v) = get(addr, "/version").await;
    assert_eq!((code, v["major"].as_str()), (200, Some("1")));
}

#[tokio::test]
async fn watch_events_selection_changes_and_bookmarks() {
    let (emu, addr) = Emulator::start().await.expect("start");
    emu.set_bookmark_interval(Duration::from_millis(200));
    emu.apply(&svc("a", json!({}))).expect("apply");
    let mut s = send(
        addr,
        "/api/v1/services?watch=true&resourceVersion=0&allowWatchBookmarks=true&labelSelector=%21skip",
    )
    .await;
    let mut seen = String::new();
    // "0" starts with the current state as synthetic ADDED events.
    read_event(&mut s, &mut seen, "ADDED").await;
    assert!(emu.wait_for_watches(1, Duration::from_secs(5)).await);
    emu.apply(&svc("a", json!({"x": "1"}))).expect("apply");
    read_event(&mut s, &mut seen, "MODIFIED").await;
    // Leaving the selection reads as DELETED.
    emu.apply(&svc("a", json!({"skip": "1"}))).expect("apply");
    read_event(&mut s, &mut seen, "DELETED").await;
    read_event(&mut s, &mut seen, "BOOKMARK").await;
    emu.hang_up_watches();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("hang-up ends the stream")
        .expect("read");
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while emu.open_watches() > 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(emu.open_watches(), 0);
}

#[tokio::test]
async fn watch_from_a_compacted_version_is_gone() {
    let (emu, addr) = Emulator::start().await.expect("start");
    let old = emu.apply(&svc("a", json!({}))).expect("apply");
    emu.set_history_limit(1);
    emu.apply(&svc("b", json!({}))).expect("apply");
    emu.apply(&svc("c", json!({}))).expect("apply");
    let mut s = send(
        addr,
        &format!("/api/v1/services?watch=true&resourceVersion={old}"),
    )
    .await;
    let mut seen = String::new();
    read_until(&mut s, &mut seen, r#""code":410"#, Duration::from_secs(5)).await;
    assert!(seen.contains(r#""type":"ERROR""#), "{seen}");

    // Resuming from a retained version replays what followed it.
    emu.set_history_limit(10);
    let recent = emu.resource_version() - 1;
    emu.delete(Kind::Service, "default", "c").expect("deleted");
    let mut s = send(
        addr,
        &format!("/api/v1/services?watch=true&resourceVersion={recent}"),
    )
    .await;
    let mut seen = String::new();
    read_event(&mut s, &mut seen, "ADDED").await;
    read_event(&mut s, &mut seen, "DELETED").await;

    // An open watch told to expire gets a 410 too.
    emu.expire_watches();
    read_until(&mut s, &mut seen, r#""code":410"#, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn failures_and_restart_on_the_same_port() {
    let (mut emu, addr) = Emulator::start().await.expect("start");
    emu.apply(&svc("a", json!({}))).expect("apply");
    emu.fail_for(Duration::from_secs(30));
    let (code, st) = get(addr, "/api/v1/services").await;
    assert_eq!((code, st["code"].as_u64()), (500, Some(500)));
    emu.recover();
    emu.fail_matching_for("/nodes", Duration::from_secs(30));
    assert_eq!(get(addr, "/api/v1/nodes").await.0, 500);
    assert_eq!(get(addr, "/api/v1/services").await.0, 200);
    emu.recover();

    let mut watch = send(addr, "/api/v1/services?watch=true").await;
    let mut seen = String::new();
    read_until(&mut watch, &mut seen, "ADDED", Duration::from_secs(5)).await;
    emu.stop().await;
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    let mut rest = Vec::new();
    // The open watch's connection is closed (EOF or reset).
    let _ = tokio::time::timeout(Duration::from_secs(5), watch.read_to_end(&mut rest))
        .await
        .expect("stop closes open connections");
    emu.apply(&svc("b", json!({})))
        .expect("apply while stopped");
    emu.restart().await.expect("restart");
    let (code, l) = get(addr, "/api/v1/services").await;
    assert_eq!(
        (code, names(&l)),
        (200, vec!["a".to_string(), "b".to_string()])
    );
}

#[tokio::test]
async fn kubeconfig_points_at_the_server() {
    let (emu, addr) = Emulator::start().await.expect("start");
    let kc = emu.kubeconfig();
    assert!(kc.contains(&format!("server: http://{addr}")), "{kc}");
    let err = emu
        .apply(&json!({"kind": "Pod", "metadata": {"name": "p"}}))
        .expect_err("pods are not served");
    assert!(err.to_string().contains("Pod"), "{err}");
}

#[tokio::test]
async fn paged_lists_are_one_consistent_snapshot() {
    let (emu, addr) = Emulator::start().await.expect("start");
    for n in ["a", "b", "c", "d", "e"] {
        emu.apply(&svc(n, json!({}))).expect("apply");
    }
    let (code, p1) = get(addr, "/api/v1/services?limit=2").await;
    assert_eq!(code, 200);
    assert_eq!(names(&p1), ["a", "b"]);
    assert_eq!(p1["metadata"]["remainingItemCount"], 3);
    let rv = p1["metadata"]["resourceVersion"].clone();
    // Changes after the first page do not show in the later ones.
    emu.delete(Kind::Service, "default", "d").expect("deleted");
    let token = p1["metadata"]["continue"].as_str().expect("continue token");
    let (_, p2) = get(addr, &format!("/api/v1/services?limit=2&continue={token}")).await;
    assert_eq!(names(&p2), ["c", "d"]);
    assert_eq!(p2["metadata"]["resourceVersion"], rv);
    let token = p2["metadata"]["continue"].as_str().expect("continue token");
    let (_, p3) = get(addr, &format!("/api/v1/services?limit=2&continue={token}")).await;
    assert_eq!(names(&p3), ["e"]);
    assert!(p3["metadata"].get("continue").is_none(), "{p3}");
    // A used or forgotten token is 410 Gone: the client must list afresh.
    let (code, gone) = get(addr, &format!("/api/v1/services?limit=2&continue={token}")).await;
    assert_eq!((code, gone["reason"].as_str()), (410, Some("Expired")));
    let (_, p1) = get(addr, "/api/v1/services?limit=3").await;
    emu.expire_list_pages();
    let token = p1["metadata"]["continue"].as_str().expect("continue token");
    let (code, _) = get(addr, &format!("/api/v1/services?continue={token}")).await;
    assert_eq!(code, 410);
}

#[tokio::test]
async fn replace_all_is_all_or_nothing() {
    let (emu, addr) = Emulator::start().await.expect("start");
    emu.replace_all(&[svc("a", json!({})), svc("b", json!({}))])
        .expect("replace");
    let before = emu.resource_version();
    let err = emu
        .replace_all(&[
            svc("c", json!({})),
            json!({"kind": "Service", "metadata": {}}),
        ])
        .expect_err("an object without a name is refused");
    assert!(err.to_string().contains("metadata.name"), "{err}");
    assert_eq!(emu.resource_version(), before, "nothing changed");
    emu.replace_all(&[svc("b", json!({"x": "1"}))])
        .expect("replace");
    let (_, l) = get(addr, "/api/v1/services").await;
    assert_eq!(names(&l), ["b"]);
    assert_eq!(l["items"][0]["metadata"]["labels"]["x"], "1");
}

/// The request of a streaming list (client-go's and kube-runtime's).
const STREAMING_LIST: &str = "/api/v1/services?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=0";

#[tokio::test]
async fn streaming_list_ends_its_initial_events_with_a_bookmark() {
    let (emu, addr) = Emulator::start().await.expect("start");
    emu.apply(&svc("a", json!({}))).expect("apply");
    let rv = emu.apply(&svc("b", json!({}))).expect("apply");
    let mut s = send(addr, STREAMING_LIST).await;
    let mut seen = String::new();
    read_until(
        &mut s,
        &mut seen,
        r#""type":"BOOKMARK"}"#,
        Duration::from_secs(5),
    )
    .await;
    let end = seen.find("initial-events-end").expect("end marker");
    assert_eq!(
        seen[..end].matches(r#""type":"ADDED""#).count(),
        2,
        "{seen}"
    );
    let line = seen.lines().find(|l| l.contains("initial-events-end"));
    let bookmark: Value = serde_json::from_str(line.expect("the marker's line"))
        .expect("the bookmark is one JSON line");
    assert_eq!(bookmark["type"], "BOOKMARK");
    assert_eq!(
        bookmark["object"]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    // Then live events.
    seen.clear();
    emu.apply(&svc("c", json!({}))).expect("apply");
    read_event(&mut s, &mut seen, "ADDED").await;
    assert!(seen.contains(r#""name":"c""#), "{seen}");
}

#[tokio::test]
async fn streaming_lists_are_refused_with_the_watch_list_gate_off() {
    let (emu, addr) = Emulator::start().await.expect("start");
    emu.apply(&svc("a", json!({}))).expect("apply");
    emu.set_watch_list(false);
    let (code, st) = get(addr, STREAMING_LIST).await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (422, Some("Invalid")),
        "{st}"
    );
    assert_eq!(
        st["message"],
        "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
    );
    assert_eq!(st["details"]["causes"][0]["field"], "sendInitialEvents");
    assert_eq!(emu.open_watches(), 0);
    // Paged lists and plain watches are served.
    let (code, l) = get(addr, "/api/v1/services?limit=500").await;
    assert_eq!((code, names(&l)), (200, vec!["a".to_string()]));
    let mut w = send(addr, "/api/v1/services?watch=true&resourceVersion=0").await;
    let mut seen = String::new();
    read_event(&mut w, &mut seen, "ADDED").await;
    // The gate on again: served.
    emu.set_watch_list(true);
    let mut s = send(addr, STREAMING_LIST).await;
    read_until(
        &mut s,
        &mut seen,
        "initial-events-end",
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn list_options_are_validated_as_kube_apiserver_does() {
    let (_emu, addr) = Emulator::start().await.expect("start");
    for (query, message) in [
        (
            "watch=true&sendInitialEvents=true",
            "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
        ),
        (
            "watch=true&resourceVersionMatch=NotOlderThan",
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ),
        (
            "sendInitialEvents=true",
            "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list",
        ),
    ] {
        let (code, st) = get(addr, &format!("/api/v1/services?{query}")).await;
        assert_eq!(code, 422, "{query}: {st}");
        assert_eq!(
            st["message"].as_str(),
            Some(format!("ListOptions.meta.k8s.io \"\" is invalid: {message}").as_str()),
            "{query}"
        );
    }
}
