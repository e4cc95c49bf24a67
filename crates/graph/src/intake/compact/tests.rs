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
    assert!(std::mem::size_of::<CompactEndpoint>() <= 72);
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
