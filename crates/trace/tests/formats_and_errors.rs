//! Unknown syntax is an error naming the rule or statement; the JSON and
//! dot reports carry the trace.

use kproxy_graph::{BackendKind, Protocol};
use kproxy_trace::{Node, Packet, TraceError, Tracer, report, tracer_for};

const IPT: &str = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-A - [0:0]\n:KUBE-SEP-B - [0:0]\n\
-A PREROUTING -j KUBE-SERVICES\n\
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-A\n\
-A KUBE-SVC-A -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A\n\
-A KUBE-SVC-A -j KUBE-SEP-B\n\
-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.0.1.1:8080\n\
-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.0.2.2:8080\nCOMMIT\n";

fn packet() -> Packet {
    Packet::new(
        "10.0.9.9".parse().expect("ip"),
        "10.96.0.1".parse().expect("ip"),
        80,
        Protocol::Tcp,
    )
}

/// What [`IPT`] and [`NFT`] both do with [`packet`].
const ONE_IN_THREE: &str =
    "DNAT to 10.0.1.1:8080 (33.3%) or 10.0.2.2:8080 (66.7%), source preserved (not masqueraded)";

/// `t` refuses `p` at a rule of `want_chain` with an unknown `what` (match
/// or statement): the error quotes the rule (`in_rule`) and names what it
/// does not understand (`in_reason`).
#[track_caller]
fn assert_unsupported(
    t: &dyn Tracer,
    p: &Packet,
    what: &str,
    want_chain: &str,
    in_rule: &str,
    in_reason: &str,
) {
    match t.trace(p, &Node::default()) {
        Err(TraceError::Unsupported {
            chain,
            rule,
            reason,
        }) => {
            assert_eq!(chain, want_chain);
            assert!(rule.contains(in_rule), "{rule}");
            assert!(reason.contains(in_reason), "{reason}");
        }
        other => panic!("an unknown {what} was evaluated: {other:?}"),
    }
}

#[test]
fn iptables_save_probabilities_and_reports() {
    let t = tracer_for(BackendKind::IptablesLegacy, IPT).expect("parses");
    let trace = t.trace(&packet(), &Node::default()).expect("traces");
    assert_eq!(trace.outcome().to_string(), ONE_IN_THREE);
    let json: serde_json::Value = serde_json::from_str(&report::json(&trace)).expect("valid JSON");
    assert_eq!(json["outcome"]["parts"][0]["dnat"], "10.0.1.1:8080");
    assert_eq!(json["trace"]["branches"].as_array().map(Vec::len), Some(2));
    let dot = report::dot(&trace);
    assert!(dot.starts_with("digraph trace {"), "{dot}");
    assert!(
        dot.contains("\"KUBE-SVC-A\" -> \"KUBE-SEP-A\" [label=\"33.3%\"]"),
        "{dot}"
    );
    assert!(
        dot.contains("\"KUBE-SEP-B\" -> \"DNAT to 10.0.2.2:8080\""),
        "{dot}"
    );
}

/// A tracer of the iptables rules [`IPT`] with `from` replaced by `to`.
fn iptables_with(from: &str, to: &str) -> Box<dyn kproxy_trace::Tracer> {
    tracer_for(BackendKind::IptablesLegacy, &IPT.replace(from, to)).expect("parses")
}

#[test]
fn unknown_iptables_rule_is_an_error_when_reached() {
    // Another program's rule: not understood, kept, and an error naming it
    // as soon as a traced packet reaches it.
    let t = iptables_with(
        "-A PREROUTING -j KUBE-SERVICES\n",
        "-A PREROUTING -j KUBE-SERVICES\n-A PREROUTING -m limit --limit 5/s -j ACCEPT\n",
    );
    // The service's connection is decided before the unknown rule.
    assert!(t.trace(&packet(), &Node::default()).is_ok());
    let mut other = packet();
    other.dport = 81;
    assert_unsupported(&*t, &other, "match", "PREROUTING", "-m limit", "limit");
}

#[test]
fn jump_to_a_missing_chain_is_an_error() {
    let t = iptables_with("-j KUBE-SEP-B\n", "-j KUBE-SEP-C\n");
    let e = t.trace(&packet(), &Node::default()).expect_err("fails");
    assert!(e.to_string().contains("KUBE-SEP-C"), "{e}");
}

const NFT: &str = "add table ip kproxy\n\
add chain ip kproxy nat-prerouting { type nat hook prerouting priority dstnat ; policy accept ; }\n\
add chain ip kproxy svc\n\
add rule ip kproxy nat-prerouting ip daddr 10.96.0.1 tcp dport 80 goto svc\n\
add rule ip kproxy svc meta l4proto tcp dnat to numgen random mod 3 map { 0 : 10.0.1.1 . 8080, 1 : 10.0.2.2 . 8080, 2 : 10.0.2.2 . 8080 }\n";

#[test]
fn nft_anonymous_maps_and_priorities() {
    let t = tracer_for(BackendKind::Nftables, NFT).expect("parses");
    let trace = t.trace(&packet(), &Node::default()).expect("traces");
    assert_eq!(trace.outcome().to_string(), ONE_IN_THREE);
    // UDP does not match `tcp dport`.
    let mut udp = packet();
    udp.proto = Protocol::Udp;
    assert!(
        t.trace(&udp, &Node::default())
            .expect("traces")
            .outcome()
            .is_not_handled()
    );
}

#[test]
fn unknown_nft_statement_names_it() {
    let text = NFT.replace("goto svc", "limit rate 5/second goto svc");
    let t = tracer_for(BackendKind::Nftables, &text).expect("parses");
    assert_unsupported(
        &*t,
        &packet(),
        "statement",
        "nat-prerouting",
        "limit rate",
        "limit",
    );
    // Its understood comparisons (ip daddr 10.96.0.1) rule other
    // destinations out: those connections pass it by.
    let mut other = packet();
    other.dst = "10.96.0.2".parse().expect("ip");
    let trace = t
        .trace(&other, &Node::default())
        .expect("passes the rule by");
    assert!(trace.outcome().is_not_handled());
    // Broken structure is still a parse error with its line.
    let broken = format!("{NFT}add rule ip kproxy svc {{ accept\n");
    assert!(matches!(
        tracer_for(BackendKind::Nftables, &broken),
        Err(TraceError::Parse { .. })
    ));
}

#[test]
fn foreign_rules_that_cannot_match_are_passed_by() {
    // Docker's masquerade rule: `! -o` is not understood, but its source
    // match rules out every connection not from 172.17.0.0/16.
    let t = iptables_with(
        "COMMIT\n",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\nCOMMIT\n",
    );
    assert_eq!(t.unknown_rules().len(), 1, "{:?}", t.unknown_rules());
    let trace = t
        .trace(&packet(), &Node::default())
        .expect("passes the rule by");
    assert!(!trace.outcome().parts[0].masquerade);
    let mut docker = packet();
    docker.src = "172.17.0.5".parse().expect("ip");
    let e = t.trace(&docker, &Node::default()).expect_err("could match");
    assert!(e.to_string().contains("docker0"), "{e}");
}
