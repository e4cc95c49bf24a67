//! `make demo` keeps working: the demo runs as root, both pods answer, the
//! article's chains are printed, and nothing is left behind.

#[test]
fn demo_runs_and_cleans_up() {
    kproxy_proto_tests::topo::preflight().unwrap_or_else(|e| panic!("{e}"));
    let kproxy = kproxy_proto_tests::kproxy_binary().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kproxy-proto"))
        .args(["demo", "--kproxy"])
        .arg(&kproxy)
        .output()
        .expect("running the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("kproxy run failed"),
        "the demo fell back to render: {text}"
    );
    // 18 requests over two pods: both answer (a miss has probability 2^-17).
    for pod in ["10.244.1.5:80", "10.244.2.4:80"] {
        assert!(
            text.contains(&format!("answered by the pod at {pod}")),
            "{pod} never answered:\n{text}"
        );
    }
    assert_eq!(text.matches("request ").count(), 18, "{text}");
    assert!(
        text.contains("KUBE-SVC-6NP7QLHXVWVVFBVL"),
        "the article's chains: {text}"
    );
    assert!(text.contains("Cleaned up"), "{text}");
    let ns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    // The demo's namespaces carry its pid, which is gone now; any pt-
    // namespace of a process that is not running is a leak.
    for line in String::from_utf8_lossy(&ns.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if let Some(pid) = name
            .strip_prefix("pt-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        {
            assert!(
                std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "namespace {name} left behind"
            );
        }
    }
}
