use super::*;
use crate::intake::{IntakeError, Objects};

/// [`read`] of `text` as file `t`.
fn read_t(text: &str) -> Option<(Objects, Vec<Warning>)> {
    read::<Objects>("t", text, &mut DepthCheck::new("t", text))
}

/// The objects and warnings of `text` through the whole-tree reading.
fn whole(text: &str) -> (Objects, Vec<Warning>) {
    let mut o = Objects::default();
    let w = o.add_yaml_whole("t", text).expect("parses as a whole");
    (o, w)
}

fn same(a: &(Objects, Vec<Warning>), b: &(Objects, Vec<Warning>)) {
    assert_eq!(a.0.services, b.0.services);
    assert_eq!(a.0.endpoint_slices, b.0.endpoint_slices);
    assert_eq!(a.0.nodes, b.0.nodes);
    assert_eq!(a.1, b.1);
}

/// `text` takes the streaming path and reads exactly as a whole.
fn streams_as_whole(text: &str) -> (Objects, Vec<Warning>) {
    let streamed = read_t(text).expect("takes the streaming path");
    same(&streamed, &whole(text));
    streamed
}

fn names<
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    v: &[T],
) -> Vec<String> {
    v.iter()
        .map(|o| o.metadata().name.clone().unwrap_or_default())
        .collect()
}

fn service(i: usize, indent: &str) -> String {
    format!(
        "{indent}- apiVersion: v1\n{indent}  kind: Service\n{indent}  metadata:\n{indent}    name: svc-{i}\n{indent}    namespace: ns\n{indent}  spec:\n{indent}    clusterIP: 172.16.{}.{}\n{indent}    ports:\n{indent}    - {{name: http, port: 80, protocol: TCP}}\n",
        i / 250,
        i % 250 + 1
    )
}

fn slice(i: usize, indent: &str) -> String {
    format!(
        "{indent}- apiVersion: discovery.k8s.io/v1\n{indent}  kind: EndpointSlice\n{indent}  addressType: IPv4\n{indent}  endpoints:\n{indent}  - addresses:\n{indent}    - 10.1.{}.{}\n{indent}    conditions:\n{indent}      ready: true\n{indent}  metadata:\n{indent}    labels:\n{indent}      kubernetes.io/service-name: svc-{i}\n{indent}    name: svc-{i}-abc\n{indent}    namespace: ns\n{indent}  ports:\n{indent}  - {{name: http, port: 8080, protocol: TCP}}\n",
        i / 250,
        i % 250 + 1
    )
}

/// `kubectl get -A -o yaml`: `items` before `kind`, entries at column 0.
fn kubectl_list(n: usize, indent: &str) -> String {
    let mut s = String::from("apiVersion: v1\nitems:\n");
    for i in 0..n {
        s += &service(i, indent);
        s += "# a comment between items\n\n";
        s += &slice(i, indent);
    }
    s + "kind: List\nmetadata:\n  resourceVersion: \"\"\n"
}

/// `text` with the first `n` places of `from` replaced by `to`: there
/// must be that many, so a change of the generated text cannot turn an
/// edit into a silent no-op.
fn edited(text: &str, from: &str, to: &str, n: usize) -> String {
    assert!(
        text.matches(from).count() >= n,
        "fewer than {n} of {from:?}"
    );
    text.replacen(from, to, n)
}

#[test]
fn lines_split_as_split_inclusive_does() {
    for text in ["", "a", "a\n", "\n\n", "a\nb", "é\n\nü x\r\n- y", "\n"] {
        let mut at = 0;
        let expected: Vec<(usize, &str)> = text
            .split_inclusive('\n')
            .map(|l| {
                at += l.len();
                (at - l.len(), l)
            })
            .collect();
        assert_eq!(lines(text).collect::<Vec<_>>(), expected, "{text:?}");
    }
}

/// The line-by-line [`split_documents`] this file had before its
/// substring searches: the reference they must agree with.
fn split_documents_by_lines(text: &str) -> Option<Vec<&str>> {
    if text.starts_with('\u{feff}') {
        return None;
    }
    let mut docs = Vec::new();
    let mut start = 0;
    for (at, line) in lines(text) {
        if line.starts_with('%') {
            return None;
        }
        if line.starts_with("---") || line.starts_with("...") {
            let marker_ends = line[3..].starts_with([' ', '\t', '\r', '\n']) || line.len() == 3;
            if line.trim_end() == "---" {
                docs.push(&text[start..at]);
                start = at + line.len();
            } else if marker_ends {
                return None;
            }
        }
    }
    docs.push(&text[start..]);
    Some(docs)
}

#[test]
fn documents_split_as_a_look_at_every_line_splits_them() {
    let list = kubectl_list(3, "");
    let texts = [
        String::new(),
        "---".into(),
        "---\n".into(),
        "---\r\n---  \n".into(),
        "a: 1\n---\nb: 2\n---\n".into(),
        "a: 1\n----\nb: ---\n---x\n....\n".into(),
        "a: 1\n--- b\n".into(),
        "a: 1\n---\tb\n".into(),
        "...".into(),
        "a: 1\n...\n".into(),
        "a: 1\n... x\n".into(),
        "a: 1\n...x\n".into(),
        "%YAML 1.2\n---\na: 1\n".into(),
        "a: 1\n%x\n".into(),
        "a: 1\n %x\n".into(),
        "\u{feff}a: 1\n".into(),
        format!("# c\n---\n{list}---\n{list}"),
        format!("{list}---"),
        format!("{list}\n---\n\n"),
    ];
    for text in &texts {
        assert_eq!(
            split_documents(text),
            split_documents_by_lines(text),
            "{text:?}"
        );
    }
}

proptest::proptest! {
    #[test]
    fn documents_split_as_by_lines_on_any_text(
        text in "((---|\\.\\.\\.|%|-|a|\\.| |\t|\r|#)*\n){0,12}(---|\\.\\.\\.)?"
    ) {
        proptest::prop_assert_eq!(split_documents(&text), split_documents_by_lines(&text));
    }

    #[test]
    fn next_unindented_finds_the_next_line_without_a_leading_space(
        text in "([ a\n]{0,6}\n){0,20}",
        from in 0usize..100,
    ) {
        let starts: Vec<usize> = lines(&text).map(|(at, _)| at).collect();
        let from = starts.get(from % starts.len().max(1)).copied().unwrap_or(0);
        let expected = lines(&text)
            .find(|&(at, l)| at >= from && !l.starts_with(' '))
            .map_or(text.len(), |(at, _)| at);
        proptest::prop_assert_eq!(next_unindented(text.as_bytes(), from), expected);
    }
}

/// `mixed_cluster_yaml(n)`'s documents as one `kind: List`, entries
/// at column 0, in block style, as `kubectl get -o yaml` writes a list.
fn mixed_list(n: u32) -> String {
    let mut s = String::from("apiVersion: v1\nitems:\n");
    for doc in kproxy_testkit::mixed_cluster_yaml(n).split("---\n") {
        let doc = doc
            .replace("- addresses: [", "- addresses:\n  - ")
            .replace("]\n", "\n");
        for (i, line) in doc.lines().enumerate() {
            s += if i == 0 { "- " } else { "  " };
            s += line;
            s += "\n";
        }
    }
    s + "kind: List\nmetadata:\n  resourceVersion: \"\"\n"
}

#[test]
fn batches_read_on_two_threads_come_in_order_as_on_one() {
    let text = mixed_list(5000);
    let block = find_items(&text)
        .expect("a plain list")
        .expect("with items");
    assert_eq!(block.entries.len(), 10001);
    let batches = batches(&block);
    assert!(batches.len() >= 3 * MAIN_READS_EVERY, "{}", batches.len());
    let text_of = |(i, j): (usize, usize)| {
        let end = block.entries.get(j).copied().unwrap_or(block.end);
        &text[block.entries[i]..end]
    };
    let one: Vec<_> = batches
        .iter()
        .map(|&b| (b, super::super::block_yaml::parse(text_of(b))))
        .collect();
    assert!(one.iter().all(|(_, t)| t.is_some()), "plain block YAML");
    for every in [1, 2, 3, MAIN_READS_EVERY, batches.len() + 1] {
        let mut two = Vec::new();
        read_batches_on_two_threads(&batches, text_of, every, |b, t| {
            two.push((b, t));
            Some(())
        })
        .expect("reads");
        assert!(two == one, "one batch in {every} read by the first thread");
    }
    // And the whole path reads the list as the whole-tree reading does.
    let (o, w) = streams_as_whole(&text);
    assert_eq!((o.services.len(), o.endpoint_slices.len()), (5000, 5000));
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn fixtures_read_the_same_streamed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fixtures");
    let mut n = 0;
    for f in std::fs::read_dir(&dir).expect("fixtures") {
        let f = f.expect("entry").path();
        let text = std::fs::read_to_string(&f).expect("readable");
        streams_as_whole(&text);
        n += 1;
    }
    assert!(n > 10, "only {n} fixtures found in {}", dir.display());
}

#[test]
fn a_large_list_is_read_in_batches_as_a_whole() {
    let text = kubectl_list(2000, "");
    assert!(text.len() > 3 * BATCH_BYTES, "several batches");
    let (o, w) = streams_as_whole(&text);
    assert_eq!(o.services.len(), 2000);
    assert_eq!(o.endpoint_slices.len(), 2000);
    assert!(w.is_empty());
    assert_eq!(names(&o.services)[1999], "svc-1999");
    // Indented entries, CRLF line ends.
    streams_as_whole(&kubectl_list(300, "  "));
    let crlf = kubectl_list(50, "").replace('\n', "\r\n");
    assert_eq!(streams_as_whole(&crlf).0.services.len(), 50);
}

#[test]
fn a_large_list_that_fails_early_gives_up_without_waiting() {
    // Read on two threads; the second item does not parse: the
    // reader gives up, the thread reading ahead stops, and the whole
    // reading reports the error.
    let text = edited(
        &kubectl_list(4000, ""),
        "  - {name: http, port: 8080, protocol: TCP}\n",
        "  - {name: http, port: 8080\n",
        1,
    );
    assert!(text.len() > PIPELINE_MIN_BATCHES * BATCH_BYTES);
    assert!(read_t(&text).is_none());
    let err = Objects::default()
        .add_yaml("t", &text)
        .expect_err("does not parse");
    assert!(err.to_string().starts_with("t: document 1: "), "{err}");
}

#[test]
fn one_item_outside_plain_block_yaml_leaves_the_others_plain() {
    // A block scalar and a flow mapping, as `kubectl apply` leaves in
    // annotations: those items take the full parser, the rest not.
    let note = "    annotations:\n      note: |\n        {\"a\": 1}\n\n        # kept\n";
    let text = kubectl_list(40, "");
    let text = edited(
        &text,
        "    name: svc-7\n",
        &format!("    name: svc-7\n{note}"),
        1,
    );
    let text = edited(
        &text,
        "    name: svc-9\n",
        "    name: svc-9\n    labels: {app: x}\n",
        1,
    );
    assert!(super::super::block_yaml::parse(&text).is_none());
    let (o, w) = streams_as_whole(&text);
    assert_eq!(o.services.len(), 40);
    assert!(w.is_empty(), "{w:?}");
    let svc7 = &o.services[7];
    assert_eq!(
        svc7.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("note")),
        Some(&"{\"a\": 1}\n\n# kept\n".to_string())
    );
}

#[test]
fn kind_less_items_take_the_list_kind() {
    let yaml = "apiVersion: v1\nkind: ServiceList\nitems:\n\
            - metadata: {name: a, namespace: n}\n  spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n\
            - metadata: {name: b, namespace: n}\n  spec: {clusterIP: 10.0.0.2, ports: [{port: 80}]}\n";
    let (o, _) = streams_as_whole(yaml);
    assert_eq!(names(&o.services), ["a", "b"]);
    // The list's kind after its items (as `-o json` and `-o yaml` write
    // it), kind-less items between kinded ones: input order is kept.
    let json = r#"{"apiVersion":"v1","items":[
            {"metadata":{"name":"a","namespace":"n"},"spec":{"clusterIP":"10.0.0.1","ports":[{"port":80}]}},
            {"kind":"Service","metadata":{"name":"b","namespace":"n"},"spec":{"clusterIP":"10.0.0.2","ports":[{"port":80}]}},
            {"metadata":{"name":"c","namespace":"n"},"spec":{"clusterIP":"10.0.0.3","ports":[{"port":80}]}},
            {"kind":"EndpointSlice","metadata":{"name":"x","namespace":"n"},"addressType":"IPv4","endpoints":[]}
        ],"kind":"ServiceList","metadata":{}}"#;
    let (o, _) = streams_as_whole(json);
    assert_eq!(names(&o.services), ["a", "b", "c"]);
    assert_eq!(names(&o.endpoint_slices), ["x"]);
    // A plain List's kind-less items have no kind: ignored, as before.
    let (o, _) = streams_as_whole(&json.replace("ServiceList", "List"));
    assert_eq!(names(&o.services), ["b"]);
}

#[test]
fn json_lists_stream_and_match_the_whole_reading() {
    let mut items = Vec::new();
    for i in 0..500 {
        items.push(format!(
                r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"s{i}","namespace":"n"}},"spec":{{"clusterIP":"10.0.{}.{}","ports":[{{"port":80}}]}}}}"#,
                i / 250,
                i % 250 + 1
            ));
    }
    let json = format!(
        "{{\n  \"kind\": \"List\",\n  \"items\": [\n{}\n  ]\n}}\n",
        items.join(",\n")
    );
    assert_eq!(streams_as_whole(&json).0.services.len(), 500);
    // A single object in JSON.
    assert_eq!(streams_as_whole(&items[7]).0.services.len(), 1);
}

#[test]
fn multi_document_input_mixes_lists_and_objects() {
    let text = format!(
        "# leading comment\n---\n{}---\n{}---\napiVersion: v1\nkind: ConfigMap\nitems:\n- kind: Service\n  metadata: {{name: not-mine}}\n---\n",
        &service(9000, "")[2..].replace("\n  ", "\n"),
        kubectl_list(3, "")
    );
    let (o, _) = streams_as_whole(&text);
    // The ConfigMap's items are not a list's: ignored.
    assert_eq!(names(&o.services), ["svc-9000", "svc-0", "svc-1", "svc-2"]);
}

#[test]
fn a_malformed_item_is_skipped_with_a_warning_naming_it() {
    let ports = "  spec:\n    clusterIP: 172.16.0.2\n    ports:\n    - {name: http, port: 80, protocol: TCP}\n";
    let broken = "  spec:\n    clusterIP: 172.16.0.2\n    ports: not-a-list\n";
    let text = edited(&kubectl_list(3, ""), ports, broken, 1);
    let (o, w) = streams_as_whole(&text);
    assert_eq!(names(&o.services), ["svc-0", "svc-2"]);
    assert_eq!(w.len(), 1, "{w:?}");
    let msg = w[0].to_string();
    assert!(
        msg.contains("ns/svc-1") && msg.contains("does not match the Service schema"),
        "{msg}"
    );
}

#[test]
fn a_document_that_does_not_parse_fails_naming_its_number() {
    // Document 2's third item is broken YAML (an unclosed flow mapping).
    let mut text = format!(
        "{}---\n{}",
        &service(7, "")[2..].replace("\n  ", "\n"),
        kubectl_list(3, "")
    );
    text = edited(
        &text,
        "  ports:\n  - {name: http, port: 8080, protocol: TCP}\n",
        "  ports:\n  - {name: http, port: 8080\n",
        3,
    );
    assert!(
        read_t(&text).is_none(),
        "the streaming path gives up on errors"
    );
    let mut o = Objects::default();
    let err = o.add_yaml("input.yaml", &text).expect_err("does not parse");
    let IntakeError::Yaml {
        document,
        source_name,
        message,
    } = &err
    else {
        panic!("not a parse error: {err}");
    };
    assert_eq!(
        (*document, source_name.as_str()),
        (2, "input.yaml"),
        "{err}"
    );
    assert!(message.contains("line"), "{message}");
    // The same error as the whole-tree reading gives.
    let whole_err = Objects::default()
        .add_yaml_whole("input.yaml", &text)
        .expect_err("does not parse");
    assert_eq!(err.to_string(), whole_err.to_string());
}

#[test]
fn shapes_the_split_could_get_wrong_are_read_whole() {
    let list = kubectl_list(2, "");
    for text in [
        format!("%YAML 1.2\n---\n{list}"),
        format!("{list}...\n"),
        format!("--- # a list\n{list}"),
        list.replace("items:\n", "items: # the objects\n"),
        format!("{list}items:\n- kind: Service\n"),
    ] {
        assert!(read_t(&text).is_none(), "{text}");
    }
    // An anchor in one batch used in another: the batch fails to
    // parse alone, the whole reading resolves it.
    let mut text = String::from(
        "kind: List\nitems:\n- &first\n  kind: Service\n  metadata: {name: a, namespace: n}\n  spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n",
    );
    text += &"- {kind: ConfigMap, data: {pad: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx}}\n"
        .repeat(BATCH_BYTES / 40);
    text += "- *first\n";
    assert!(read_t(&text).is_none());
    let mut o = Objects::default();
    o.add_yaml("t", &text).expect("reads whole");
    assert_eq!(names(&o.services), ["a", "a"]);
}
