#![allow(clippy::unwrap_used, clippy::expect_used)]
use super::*;
use crate::config::ProxyConfig;
use crate::model::{IpFamily, ServiceGraph};

/// Warnings of `text` read as `f.yaml`, as display strings; the
/// streaming and the whole-tree readings must agree.
fn warnings(text: &str) -> Vec<String> {
    let (_, w) = Objects::from_yaml("f.yaml", text).expect("reads");
    let mut whole = Objects::default();
    let ww = whole
        .add_yaml_whole("f.yaml", text.strip_prefix('\u{feff}').unwrap_or(text))
        .expect("reads whole");
    assert_eq!(w, ww, "streamed and whole readings differ");
    w.iter().map(ToString::to_string).collect()
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec:\n  clusterIP: 10.0.0.1\n  ports: [{port: 80, protocol: TCP}]\n";

#[test]
fn kinds_kproxy_does_not_read_are_named_with_file_and_document() {
    let text = format!(
        "{SERVICE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: ns}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\n---\napiVersion: v1\nkind: service\nmetadata: {{name: typo, namespace: ns}}\n---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {{name: kubernetes}}\nspec: {{cidrs: [10.96.0.0/12]}}\n---\napiVersion: v1\nkind: List\nitems:\n- {{apiVersion: v1, kind: Secret, metadata: {{name: s, namespace: ns}}}}\n- {{apiVersion: v1, kind: Endpoints}}\n---\nmetadata: {{name: kindless}}\n"
    );
    assert_eq!(
        warnings(&text),
        [
            "document 2 of f.yaml: kind: Pod ns/p is not a kind kproxy reads; ignored",
            "document 3 of f.yaml: kind: ConfigMap cm is not a kind kproxy reads; ignored",
            "document 4 of f.yaml: kind: service ns/typo is not a kind kproxy reads; ignored (kinds are case-sensitive: did you mean Service?)",
            "document 6 of f.yaml: items[0].kind: Secret ns/s is not a kind kproxy reads; ignored",
            "document 6 of f.yaml: items[1].kind: Endpoints is not a kind kproxy reads; ignored",
            "document 7 of f.yaml: kind: object kindless has no kind; ignored",
        ]
    );
    let (o, _) = Objects::from_yaml("f.yaml", &text).unwrap();
    assert_eq!(o.services.len(), 1, "the Service is read");
}

#[test]
fn empty_documents_and_non_objects_are_warned_about() {
    let text = format!(
        "{SERVICE}---\n---\n# only a comment\n---\n- a\n- b\n---\n42\n---\napiVersion: v1\nkind: List\nitems: [null, x]\n"
    );
    assert_eq!(
        warnings(&text),
        [
            "document 2 of f.yaml: <document>: empty; ignored",
            "document 3 of f.yaml: <document>: empty; ignored",
            "document 4 of f.yaml: <document>: a sequence of 2 entries, not a Kubernetes object (a list of objects needs kind: List and items); ignored",
            "document 5 of f.yaml: <document>: 42, not a Kubernetes object; ignored",
            "document 6 of f.yaml: items[0]: empty; ignored",
            "document 6 of f.yaml: items[1]: a string, not a Kubernetes object; ignored",
        ]
    );
    // A leading `---` and comments before it start no document.
    assert_eq!(
        warnings(&format!("# header\n---\n{SERVICE}")),
        Vec::<String>::new()
    );
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let text = format!("\u{feff}{SERVICE}");
    let (o, w) = Objects::from_yaml("f.yaml", &text).expect("a BOM is not an error");
    assert_eq!(o.services.len(), 1);
    assert!(w.is_empty(), "{w:?}");
    let json =
        "\u{feff}{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"j\"}}";
    let (o, _) = Objects::from_yaml("f.json", json).expect("a BOM before JSON");
    assert_eq!(o.services.len(), 1);
}

#[test]
fn special_purpose_addresses_the_api_server_refuses_are_skipped_with_a_warning() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec:\n  clusterIP: 10.0.0.1\n  externalIPs: [0.0.0.0, 127.0.0.5, 169.254.169.254, 224.0.0.1, \"::ffff:127.0.0.1\", 255.255.255.255, 239.1.1.1, 192.0.2.10]\n  ports: [{name: p, port: 80, protocol: TCP}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: p, port: 80, protocol: TCP}]\nendpoints:\n- addresses: [127.0.0.1]\n- addresses: [169.254.1.1]\n- addresses: [10.1.0.1]\n";
    let (objects, w) = Objects::from_yaml("f.yaml", text).unwrap();
    assert!(w.is_empty(), "{w:?}");
    let config = ProxyConfig {
        node_name: "n".into(),
        ..ProxyConfig::default()
    };
    let g = ServiceGraph::build(&objects, &config);
    let warnings: Vec<String> = g.warnings.iter().map(ToString::to_string).collect();
    for expected in [
        "Service ns/web: spec.externalIPs[0]: \"0.0.0.0\" is a special-purpose address (unspecified)",
        "Service ns/web: spec.externalIPs[1]: \"127.0.0.5\" is a special-purpose address (loopback 127.0.0.0/8)",
        "Service ns/web: spec.externalIPs[2]: \"169.254.169.254\" is a special-purpose address (link-local 169.254.0.0/16)",
        "Service ns/web: spec.externalIPs[3]: \"224.0.0.1\" is a special-purpose address (link-local multicast 224.0.0.0/24)",
        "Service ns/web: spec.externalIPs[4]: \"::ffff:127.0.0.1\" is a special-purpose address (loopback 127.0.0.0/8)",
        "EndpointSlice ns/web-1: endpoints[0].addresses[0]: \"127.0.0.1\" is a special-purpose address (loopback 127.0.0.0/8)",
        "EndpointSlice ns/web-1: endpoints[1].addresses[0]: \"169.254.1.1\" is a special-purpose address (link-local 169.254.0.0/16)",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(expected)),
            "no warning {expected:?} in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 7, "{warnings:#?}");
    let fg = g.family(IpFamily::V4).unwrap();
    let sp = fg.services.values().next().unwrap();
    let ips: Vec<String> = sp.external_ips.iter().map(ToString::to_string).collect();
    // Broadcast and other multicast addresses pass validation, and
    // kube-proxy programs them.
    assert_eq!(ips, ["192.0.2.10", "239.1.1.1", "255.255.255.255"]);
    let eps: Vec<String> = sp
        .cluster_endpoints
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    assert_eq!(eps, ["10.1.0.1"]);
}

#[track_caller]
fn too_deep(text: &str) -> (usize, usize) {
    match Objects::from_yaml("deep.yaml", text) {
        Err(IntakeError::TooDeep { document, line, .. }) => (document, line),
        other => panic!("not rejected as too deep: {other:?}"),
    }
}

#[test]
fn deep_nesting_is_rejected_before_parsing() {
    let flow = |d: usize| format!("a: {}{}\n", "[".repeat(d), "]".repeat(d));
    assert_eq!(
        too_deep(&format!("{SERVICE}---\n{}", flow(100_000))),
        (2, 8)
    );
    // One bracket a line, and braces, count as much.
    let lines: String = (0..100).map(|_| "{a: [\n").collect();
    too_deep(&lines);
    // Block nesting by indentation.
    let block: String = (0..100)
        .map(|i| format!("{}k:\n", "  ".repeat(i)))
        .collect();
    too_deep(&block);
    // Brackets in quoted strings and comments do not count; a Kubernetes
    // object's depth is far from the limit.
    let text = format!(
        "{SERVICE}  selector: {{app: \"{}\"}}\n# {}\n  x: 'it''s [[[['\n",
        "[".repeat(200),
        "[".repeat(200)
    );
    assert!(flow(MAX_DEPTH - 1).len() > 100);
    Objects::from_yaml("ok.yaml", &text).expect("not too deep");
    Objects::from_yaml("ok.yaml", &flow(MAX_DEPTH - 1)).expect("at the limit");
    let e = Objects::from_yaml("deep.yaml", &flow(MAX_DEPTH + 1)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "deep.yaml: document 1: line 1: nested more than 64 levels deep; not read"
    );
}

/// The depth check runs only when a parser other than the block YAML
/// reader reads some of the text: the outcome must be as if it always
/// ran first, for texts near the limit that the block reader would
/// take.
#[test]
fn the_depth_check_decides_as_if_it_always_ran_first() {
    let nested = |levels: usize, last: &str| -> String {
        let mut s = String::from("kind: ConfigMap\n");
        for i in 0..levels {
            s += &format!("{}k{i}:\n", "  ".repeat(i));
        }
        s + &format!("{}{last}\n", "  ".repeat(levels))
    };
    let mut texts = Vec::new();
    for levels in 60..68 {
        for last in [
            "v: 1",
            "v: {}",
            "v: []",
            "- x",
            "- a: {}",
            "# deep comment",
            "   ",
        ] {
            texts.push(nested(levels, last));
        }
        let pad = " ".repeat(2 * levels);
        texts.push(format!("# header\n{pad}# deep\n---\nkind: ConfigMap\n"));
        texts.push(format!("kind: ConfigMap\na:\n- -{pad}x\n"));
    }
    // Quotes the check sees opened or closed differently.
    let brackets = "[".repeat(70);
    for v in ["'it''s [[[['", "'a'' \"b'", "'a'' '", "'a''b'", "'[[{{'"] {
        let mut text = format!("kind: ConfigMap\ndata:\n  v: {v}\n");
        text += &(0..70)
            .map(|i| format!("  k{i}: {{}}\n"))
            .collect::<String>();
        texts.push(text);
        texts.push(format!(
            "kind: ConfigMap\ndata:\n  v: {v}\n  w: \"{brackets}\"\n  x: '{brackets}'\n"
        ));
    }
    texts.push(format!("kind: ConfigMap\ndata:\n  v: 'it''s {brackets}'\n"));
    for text in &texts {
        let expected = check_depth("f.yaml", text).err().map(|e| e.to_string());
        let got = Objects::from_yaml("f.yaml", text)
            .err()
            .filter(|e| matches!(e, IntakeError::TooDeep { .. }))
            .map(|e| e.to_string());
        assert_eq!(got, expected, "{text}");
    }
    assert!(
        texts.iter().any(|t| check_depth("f.yaml", t).is_err()),
        "some text is too deep"
    );
    assert!(
        texts.iter().any(|t| check_depth("f.yaml", t).is_ok()),
        "some text is not"
    );
}

#[test]
fn input_files_are_the_files_given_and_directories_yaml_and_json_sorted() {
    let dir = kproxy_testkit::TempDir::new("input-files");
    for name in ["b.yaml", "a.json", "c.yml", "notes.txt", "d.yaml.bak"] {
        dir.write(name, "");
    }
    let given = dir.join("notes.txt");
    let files = input_files(&[dir.path().to_path_buf(), given.clone()]).unwrap();
    assert_eq!(
        files,
        [
            dir.join("a.json"),
            dir.join("b.yaml"),
            dir.join("c.yml"),
            given
        ]
    );
}
