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
