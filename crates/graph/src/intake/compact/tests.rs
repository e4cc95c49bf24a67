#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::config::ProxyConfig;
use crate::intake::Objects;
use crate::model::ServiceGraph;

#[test]
fn addresses_keep_their_text_unless_canonical() {
    assert_eq!(Addr::new("10.0.0.1"), Addr::Ip("10.0.0.1".parse().unwrap()));
    assert_eq!(Addr::new("fd00::1"), Addr::Ip("fd00::1".parse().unwrap()));
    for text in [" 10.0.0.1", "fd00:0::1", "None", "", "10.0.0.256"] {
        let a = Addr::new(text);
        assert_eq!(a, Addr::Text(text.into()), "{text:?}");
        assert_eq!(a.text(), text);
    }
    // IPv4 text that parses is canonical: leading zeros, short forms and
    // spaces do not parse.
    for text in [
        "010.0.0.1",
        "10.0.0.01",
        "10.1",
        "10.0.0.1 ",
        "0x0a.0.0.1",
        "1.2.3.4.5",
    ] {
        assert_eq!(Addr::new(text), Addr::Text(text.into()), "{text:?}");
    }
    for text in ["0.0.0.0", "255.255.255.255", "10.0.0.1", "192.168.100.200"] {
        assert_eq!(Addr::new(text).text(), text);
    }
    assert_eq!(Addr::new(" 10.0.0.1").ip(), "10.0.0.1".parse().ok());
    assert_eq!(Addr::new("None").ip(), None);
}

#[test]
fn warnings_quote_addresses_as_written() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec:\n  clusterIPs: [\" 10.0.0.1\", \"10.0.0.02\"]\n  externalIPs: [\"fd00:0::1\", \"::ffff:127.0.0.1\"]\n  ports: [{port: 80, protocol: tcp}, {port: 81}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 80}]\nendpoints:\n- addresses: [\" 10.1.0.1\"]\n  conditions: {ready: false}\n- addresses: [\"fd00::1\"]\n- addresses: []\n";
    let (objects, _) = Objects::from_yaml("f.yaml", text).unwrap();
    let config = ProxyConfig {
        node_name: "n".into(),
        ..ProxyConfig::default()
    };
    let g = ServiceGraph::build(&objects, &config);
    let warnings: Vec<String> = g.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "Service ns/web: spec.clusterIPs[1]: \"10.0.0.02\" is not an IP address, ignored",
            "Service ns/web: spec.externalIPs[1]: \"::ffff:127.0.0.1\" is a special-purpose address (loopback 127.0.0.0/8), which the API server refuses as an external IP; ignored",
            "Service ns/web: spec.ports[0].protocol: \"tcp\" is not TCP, UDP or SCTP; port skipped",
            "EndpointSlice ns/web-1: endpoints[1].addresses[0]: \"fd00::1\" is not an IPv4 address, endpoint skipped",
            "EndpointSlice ns/web-1: endpoints[2].addresses: empty, endpoint skipped",
        ]
    );
    let fg = g.family(crate::model::IpFamily::V4).unwrap();
    let sp = fg.services.values().next().unwrap();
    assert_eq!(sp.port, 81);
    assert_eq!(sp.cluster_ip.to_string(), "10.0.0.1");
    assert!(sp.external_ips.is_empty(), "{:?}", sp.external_ips);
    assert_eq!(sp.endpoints.len(), 1);
    assert!(!sp.endpoints[0].ready);
    assert_eq!(sp.endpoints[0].ip.to_string(), "10.1.0.1");
}

#[test]
fn an_endpoint_is_small() {
    // The point of the compact form: a k8s-openapi endpoint costs
    // about 480 bytes with its strings.
    assert!(std::mem::size_of::<CompactEndpoint>() <= 16);
    // The allocation the slice and the graph share: 80 bytes with its
    // reference counts.
    assert!(std::mem::size_of::<crate::model::Endpoint>() <= 64);
    assert!(std::mem::size_of::<Addr>() <= 24);
}

#[test]
fn interned_names_are_shared() {
    let a = intern("zone-a");
    let b = intern(&String::from("zone-a"));
    assert!(Arc::ptr_eq(&a, &b));
}

/// Reading into [`CompactObjects`] gives what reading into [`Objects`] and
/// converting each object gives: every fixture, as written, as one
/// `kind: List` (the streaming path) and as JSON.
#[test]
fn compact_intake_matches_typed_intake() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/fixtures");
    let mut inputs = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        inputs.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    inputs.sort();
    assert!(inputs.len() > 10, "fixtures found: {}", inputs.len());
    // The streaming path, YAML and JSON, with kinds in one list.
    let (all, _) = Objects::from_yaml("all", &inputs[1].1).unwrap();
    let mut items: Vec<serde_json::Value> = Vec::new();
    items.extend(
        all.services
            .iter()
            .map(|s| serde_json::to_value(s).unwrap()),
    );
    items.extend(
        all.endpoint_slices
            .iter()
            .map(|s| serde_json::to_value(s).unwrap()),
    );
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let mut yaml = serde_yaml_ng::to_string(&list).unwrap();
    yaml.push_str("---\n");
    yaml.push_str("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: 7}\n");
    inputs.push(("list.yaml".into(), yaml));
    inputs.push(("list.json".into(), serde_json::to_string(&list).unwrap()));
    for (name, text) in &inputs {
        let typed = Objects::from_yaml(name, text).unwrap();
        let compact = CompactObjects::from_yaml(name, text).unwrap();
        assert_eq!(compact.1, typed.1, "{name}: warnings");
        let services: Vec<CompactService> =
            typed.0.services.iter().map(CompactService::from).collect();
        let slices: Vec<CompactSlice> = typed
            .0
            .endpoint_slices
            .iter()
            .map(CompactSlice::from)
            .collect();
        let got: Vec<CompactService> = compact.0.services.iter().map(|s| (**s).clone()).collect();
        let got_slices: Vec<CompactSlice> = compact
            .0
            .endpoint_slices
            .iter()
            .map(|s| (**s).clone())
            .collect();
        assert_eq!(got, services, "{name}: services");
        assert_eq!(got_slices, slices, "{name}: slices");
        assert_eq!(compact.0.nodes, typed.0.nodes, "{name}: nodes");
        assert_eq!(compact.0.service_cidrs, typed.0.service_cidrs, "{name}");
        assert!(
            !typed.0.services.is_empty() || !typed.0.nodes.is_empty() || name.contains("bad"),
            "{name}: nothing read"
        );
    }
}

const SHARED_SLICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{name: a, port: 80}, {name: b, port: 81}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: a, port: 8080}, {name: b, port: 8081}]\nendpoints:\n- addresses: [10.1.0.1]\n  nodeName: other\n  conditions: {ready: true, serving: true, terminating: false}\n- addresses: [10.1.0.2]\n  nodeName: n\n- addresses: [\" 10.1.0.3\"]\n  conditions: {ready: false}\n- addresses: [10.1.0.4]\n  hints: {}\n- addresses: [10.1.0.5]\n  hints: {forZones: [{name: z}]}\n";

#[test]
fn the_graph_shares_the_slices_endpoints() {
    let (objects, _) = CompactObjects::from_yaml("f.yaml", SHARED_SLICE).unwrap();
    let config = ProxyConfig {
        node_name: "n".into(),
        ..ProxyConfig::default()
    };
    let mut inc = crate::IncrementalGraph::new(config);
    for s in &objects.services {
        inc.upsert_compact_service(s.clone());
    }
    for s in &objects.endpoint_slices {
        inc.upsert_compact_slice(s.clone());
    }
    inc.update();
    let slice = &objects.endpoint_slices[0];
    let fg = inc.graph().family(crate::model::IpFamily::V4).unwrap();
    let mut ports = fg.services.values();
    let (a, b) = (ports.next().unwrap(), ports.next().unwrap());
    assert_eq!((a.name.port.as_str(), b.name.port.as_str()), ("a", "b"));
    let addrs: Vec<String> = a.endpoints.iter().map(|e| e.addr_string()).collect();
    assert_eq!(
        addrs,
        [
            "10.1.0.1:8080",
            "10.1.0.2:8080",
            "10.1.0.3:8080",
            "10.1.0.4:8080",
            "10.1.0.5:8080"
        ]
    );
    let shared = |i: usize| slice.endpoints[i].shared();
    // The first port's endpoints are the slice's own allocations...
    assert!(Arc::ptr_eq(&a.endpoints[0], shared(0).unwrap()));
    assert!(Arc::ptr_eq(&a.endpoints[4], shared(4).unwrap()));
    assert_eq!(a.endpoints[4].zone_hints().unwrap().len(), 1);
    // ...but for this node (local), another port, a non-canonical
    // address or empty hints the graph has one of its own.
    assert!(a.endpoints[1].is_local && !shared(1).unwrap().is_local);
    assert!(!Arc::ptr_eq(&a.endpoints[1], shared(1).unwrap()));
    assert!(shared(2).is_none() && shared(3).is_none());
    assert!(!a.endpoints[2].ready && a.endpoints[3].hints.is_none());
    assert_eq!(b.endpoints[0].port, 8081);
    assert_eq!(b.endpoints[0].node_name, a.endpoints[0].node_name);
    assert!(!Arc::ptr_eq(&b.endpoints[0], shared(0).unwrap()));
}

#[test]
fn slices_give_back_what_they_read() {
    let (objects, _) = CompactObjects::from_yaml("f.yaml", SHARED_SLICE).unwrap();
    let slice = &objects.endpoint_slices[0];
    let back = slice.to_slice();
    let eps = &back.endpoints;
    let c = |i: usize| eps[i].conditions.clone().unwrap_or_default();
    assert_eq!(
        (c(0).ready, c(0).serving, c(0).terminating),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!((c(1).ready, c(1).serving), (None, None));
    assert_eq!((c(2).ready, c(2).serving), (Some(false), None));
    assert_eq!(eps[2].addresses, [" 10.1.0.3"]);
    assert_eq!(eps[3].hints, Some(Default::default()));
    assert_eq!(
        eps[4].hints.as_ref().unwrap().for_zones.as_ref().unwrap()[0].name,
        "z"
    );
    assert_eq!(&CompactSlice::from(&back), &**slice);
}
