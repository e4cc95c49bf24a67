//! Rule-level checks of kube-proxy's behaviours (after the upstream tests in
//! pkg/proxy/iptables/proxier_test.go, e.g. TestOverallIPTablesRules) on
//! the shared fixtures, plus structural invariants over every fixture.

use std::collections::BTreeSet;

use data_encoding::BASE32;
use kproxy_graph::{IpFamily, ProxyMode, Render as _, ServiceGraph};
use kproxy_iptables::{FamilyRuleset, GenOptions, TableName, generate};
use kproxy_testkit::{fixtures, load_fixture};
use sha2::{Digest, Sha256};

fn v4(name: &str) -> FamilyRuleset {
    family(&load_fixture(name, ProxyMode::Iptables), IpFamily::V4)
}

fn family(g: &ServiceGraph, f: IpFamily) -> FamilyRuleset {
    generate(g, &GenOptions::default())
        .family(f)
        .cloned()
        .unwrap_or_else(|| panic!("no {f} ruleset"))
}

fn text(fr: &FamilyRuleset) -> String {
    fr.render_full()
}

#[track_caller]
fn has(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "missing line:\n{line}\nin:\n{text}"
    );
}

#[track_caller]
fn lacks(text: &str, needle: &str) {
    assert!(!text.contains(needle), "unexpected {needle:?} in:\n{text}");
}

/// The KUBE-SVC hash computed here, independently of the crate.
fn expected_hash(s: &str) -> String {
    BASE32.encode(&Sha256::digest(s.as_bytes()))[..16].to_string()
}

#[test]
fn seed_article_structure() {
    let t = text(&v4("seed"));
    let h = expected_hash("web/web-servicetcp");
    let sep = |ep: &str| expected_hash(&format!("web/web-servicetcp{ep}"));
    let (sep1, sep2) = (sep("10.244.1.5:80"), sep("10.244.2.4:80"));
    has(
        &t,
        &format!(
            "-A KUBE-SERVICES -m comment --comment \"web/web-service cluster IP\" -m tcp -p tcp -d 10.107.33.105 --dport 80 -j KUBE-SVC-{h}"
        ),
    );
    has(
        &t,
        &format!(
            "-A KUBE-NODEPORTS -m comment --comment web/web-service -m tcp -p tcp --dport 30007 -j KUBE-EXT-{h}"
        ),
    );
    has(&t, &format!("-A KUBE-EXT-{h} -j KUBE-SVC-{h}"));
    has(
        &t,
        &format!(
            "-A KUBE-SVC-{h} -m comment --comment \"web/web-service -> 10.244.1.5:80\" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-{sep1}"
        ),
    );
    has(
        &t,
        &format!(
            "-A KUBE-SVC-{h} -m comment --comment \"web/web-service -> 10.244.2.4:80\" -j KUBE-SEP-{sep2}"
        ),
    );
    for (sep, ep) in [(sep1, "10.244.1.5:80"), (sep2, "10.244.2.4:80")] {
        let last = t
            .lines()
            .rfind(|l| l.starts_with(&format!("-A KUBE-SEP-{sep} ")))
            .expect("SEP chain");
        assert!(
            last.ends_with(&format!("-j DNAT --to-destination {ep}")),
            "{last}"
        );
    }
    // The NodePort catch-all is the last rule of nat KUBE-SERVICES.
    let fr = v4("seed");
    let ks = fr
        .chain(TableName::Nat, "KUBE-SERVICES")
        .expect("KUBE-SERVICES");
    assert_eq!(
        ks.rules.last().and_then(|r| r.jump_target()),
        Some("KUBE-NODEPORTS")
    );
    // The seed cluster is IPv4-only.
    lacks(
        &text(&family(
            &load_fixture("seed", ProxyMode::Iptables),
            IpFamily::V6,
        )),
        "KUBE-SVC-",
    );
}

#[test]
fn kube_proxy_chain_names_on_reference_services() {
    let t = text(&v4("source-ranges"));
    // Names from kube-proxy's TestOverallIPTablesRules.
    has(
        &t,
        "-A KUBE-SERVICES -m comment --comment \"ns5/svc5:p80 loadbalancer IP\" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C",
    );
    has(
        &t,
        "-A KUBE-PROXY-FIREWALL -m comment --comment \"ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C\" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP",
    );
    has(
        &t,
        "-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment \"ns5/svc5:p80 loadbalancer IP\" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C",
    );
    has(
        &t,
        "-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment \"other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL\"",
    );
}

#[test]
fn no_endpoints_reject_in_filter_only() {
    // S2: every destination rejected, nothing in nat for the service.
    let fr = v4("no-endpoints");
    let t = text(&fr);
    has(
        &t,
        "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 has no endpoints\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT",
    );
    has(
        &t,
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns1/svc1:p80 has no endpoints\" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j REJECT",
    );
    has(
        &t,
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns1/svc1:p80 has no endpoints\" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j REJECT",
    );
    has(
        &t,
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns1/svc1:p80 has no endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j REJECT",
    );
    let nat = fr.table(TableName::Nat).expect("nat");
    assert!(
        nat.chains.iter().all(|c| c.owner.is_none()),
        "no service chains"
    );
    assert!(!render_table(&fr, TableName::Nat).contains("ns1/svc1"));
}

fn render_table(fr: &FamilyRuleset, t: TableName) -> String {
    let full = fr.render_full();
    let start = full.find(&format!("*{t}\n")).expect("table");
    full[start..]
        .split("COMMIT")
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn etp_local_preserves_source_and_short_circuits() {
    // S5.
    let t = text(&v4("etp-local"));
    let h = "XPGD46QRK7WJZT7O";
    has(
        &t,
        &format!(
            "-A KUBE-EXT-{h} -m comment --comment \"pod traffic for ns1/svc1:p80 external destinations\" -s 10.0.0.0/8 -j KUBE-SVC-{h}"
        ),
    );
    has(
        &t,
        &format!(
            "-A KUBE-EXT-{h} -m comment --comment \"masquerade LOCAL traffic for ns1/svc1:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
        ),
    );
    has(
        &t,
        &format!(
            "-A KUBE-EXT-{h} -m comment --comment \"route LOCAL traffic for ns1/svc1:p80 external destinations\" -m addrtype --src-type LOCAL -j KUBE-SVC-{h}"
        ),
    );
    has(&t, &format!("-A KUBE-EXT-{h} -j KUBE-SVL-{h}"));
    lacks(&t, "masquerade traffic for ns1/svc1:p80");
    // Only the local endpoint (10.180.2.1 on test-node) is in SVL.
    has(
        &t,
        &format!(
            "-A KUBE-SVL-{h} -m comment --comment \"ns1/svc1:p80 -> 10.180.2.1:80\" -j KUBE-SEP-ZX7GRIZKSNUQ3LAJ"
        ),
    );
    has(
        &t,
        "-A KUBE-NODEPORTS -m comment --comment \"ns1/svc1:p80 health check node port\" -m tcp -p tcp --dport 30000 -j ACCEPT",
    );
}

#[test]
fn etp_local_without_local_endpoints_drops_external() {
    let t = text(&v4("etp-local-no-local-endpoints"));
    let h = "XPGD46QRK7WJZT7O";
    has(
        &t,
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns1/svc1:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP",
    );
    // The EXT chain stays for the short-circuits but has no fall-through.
    has(&t, &format!(":KUBE-EXT-{h} - [0:0]"));
    lacks(&t, &format!("-A KUBE-EXT-{h} -j "));
    lacks(&t, &format!("KUBE-SVL-{h}"));
}

#[test]
fn etp_cluster_masquerades_external() {
    let t = text(&v4("etp-cluster"));
    assert!(
        t.contains("masquerade traffic for ns1/svc1:p80 external destinations\" -j KUBE-MARK-MASQ"),
        "{t}"
    );
}

#[test]
fn itp_local_uses_svl_or_drops() {
    // S6: svc1 has a local endpoint → SVL; svc2 none → DROP.
    let t = text(&v4("itp-local"));
    has(
        &t,
        "-A KUBE-SERVICES -m comment --comment \"ns1/svc2 has no local endpoints\" -m tcp -p tcp -d 172.30.1.2 --dport 80 -j DROP",
    );
    assert!(t.contains("-A KUBE-SERVICES -m comment --comment \"ns1/svc1 cluster IP\" -m tcp -p tcp -d 172.30.1.1 --dport 80 -j KUBE-SVL-"));
}

#[test]
fn session_affinity_uses_recent() {
    let t = text(&v4("session-affinity"));
    has(
        &t,
        "-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --rcheck --seconds 10800 --reap -j KUBE-SEP-SXIVWICOYRO3J4NJ",
    );
    has(
        &t,
        "-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m recent --name KUBE-SEP-SXIVWICOYRO3J4NJ --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80",
    );
    // Affinity checks come before the probabilistic branches.
    let svc: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-XPGD46QRK7WJZT7O "))
        .collect();
    let first_stat = svc
        .iter()
        .position(|l| l.contains("statistic"))
        .expect("statistic");
    let last_recent = svc
        .iter()
        .rposition(|l| l.contains("--rcheck"))
        .expect("recent");
    assert!(last_recent < first_stat, "{svc:#?}");
}

#[test]
fn lb_ipmode_proxy_gets_no_rule() {
    let t = text(&v4("lb-ipmode-proxy"));
    let g = load_fixture("lb-ipmode-proxy", ProxyMode::Iptables);
    let proxy_ips: Vec<String> = g.families[&IpFamily::V4]
        .services
        .values()
        .flat_map(|s| s.load_balancer_ips.iter())
        .filter(|l| l.mode == kproxy_graph::LbIpMode::Proxy)
        .map(|l| l.ip.to_string())
        .collect();
    assert!(!proxy_ips.is_empty(), "fixture has a Proxy-mode IP");
    for ip in proxy_ips {
        lacks(&t, &format!("-d {ip} "));
    }
    has(
        &t,
        "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 loadbalancer IP\" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-XPGD46QRK7WJZT7O",
    );
}

#[test]
fn nodeport_addresses_and_localhost() {
    // S4: default (all) on IPv4 with localhost NodePorts: addrtype LOCAL,
    // KUBE-FIREWALL present; IPv6 excludes ::1.
    let g = load_fixture("nodeports", ProxyMode::Iptables);
    let t4 = text(&family(&g, IpFamily::V4));
    has(
        &t4,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    );
    has(
        &t4,
        "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
    );
    has(&t4, "-I INPUT -j KUBE-FIREWALL");
    let t6 = text(&family(&g, IpFamily::V6));
    has(
        &t6,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS",
    );
    lacks(&t6, "KUBE-FIREWALL");
    // {192.168.0.0/24, 127.0.0.1/32} with localhostNodePorts false: only
    // the node IP, no localhost, no KUBE-FIREWALL.
    let t = text(&v4("nodeport-addresses"));
    has(
        &t,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -d 192.168.0.2 -j KUBE-NODEPORTS",
    );
    lacks(&t, "-d 127.0.0.1 -j KUBE-NODEPORTS");
    lacks(&t, "KUBE-FIREWALL");
}

#[test]
fn masquerade_all_and_mark_format() {
    // The fixture sets masqueradeBit 10 (mark 0x400).
    let t = text(&v4("masquerade-all"));
    has(
        &t,
        "-A KUBE-SVC-CW3AQCZPGQ5G56X3 -m comment --comment \"ns1/svc1:http cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ",
    );
    has(&t, "-A KUBE-MARK-MASQ -j MARK --or-mark 0x00000400");
    has(
        &t,
        "-A KUBE-POSTROUTING -m mark ! --mark 0x00000400/0x00000400 -j RETURN",
    );
    has(&t, "-A KUBE-POSTROUTING -j MARK --xor-mark 0x00000400");
}

/// kube-proxy's nfacct matches (`syncProxyRules`: the KUBE-FORWARD
/// INVALID drop, and a localhost rule per NodePort before the NodePort
/// rule, IPv4 with localhost NodePorts only), and none without nfacct.
#[test]
fn nfacct_matches_as_kube_proxy() {
    let g = load_fixture("nodeports", ProxyMode::Iptables);
    let t4 = text(&family(&g, IpFamily::V4));
    let t6 = text(&family(&g, IpFamily::V6));
    for t in [&t4, &t6] {
        has(
            t,
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP",
        );
    }
    let h = expected_hash("ns1/svc1:p80tcp");
    let lines: Vec<&str> = t4.lines().collect();
    let localhost = format!(
        "-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp -d 127.0.0.0/8 --dport 3001 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-{h}"
    );
    let at = lines
        .iter()
        .position(|l| *l == localhost)
        .unwrap_or_else(|| panic!("missing line:\n{localhost}\nin:\n{t4}"));
    assert_eq!(
        lines[at + 1],
        format!(
            "-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-{h}"
        ),
        "the NodePort rule follows the localhost one"
    );
    lacks(&t6, "localhost_nps_accepted_pkts");
    // localhostNodePorts off (127.0.0.1 not among the NodePort addresses).
    let t = text(&v4("nodeport-addresses"));
    lacks(&t, "localhost_nps_accepted_pkts");
    has(
        &t,
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP",
    );
    // No nfnetlink_acct: no match anywhere, the rules otherwise the same.
    let opts = GenOptions {
        nfacct: false,
        ..GenOptions::default()
    };
    let plain = generate(&g, &opts).render();
    lacks(&plain, "nfacct");
    assert!(
        plain
            .lines()
            .any(|l| l == "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP")
    );
    let with: Vec<String> = generate(&g, &GenOptions::default())
        .render()
        .lines()
        .filter(|l| !l.contains("localhost_nps_accepted_pkts"))
        .map(|l| l.replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", ""))
        .collect();
    assert_eq!(with, plain.lines().map(str::to_string).collect::<Vec<_>>());
}

#[test]
fn large_cluster_mode_drops_endpoint_comments() {
    use std::fmt::Write as _;
    let mut y = String::new();
    // 11 services x 100 endpoints = 1100 > 1000.
    for s in 0..11 {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{s}, namespace: big}}\nspec:\n  clusterIP: 172.30.1.{s}\n  ports: [{{port: 80, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{s}-x, namespace: big, labels: {{kubernetes.io/service-name: s{s}}}}}\naddressType: IPv4\nports: [{{port: 80, protocol: TCP}}]\nendpoints:\n"
        );
        for e in 0..100 {
            let _ = writeln!(
                y,
                "- {{addresses: [10.1.{s}.{e}], conditions: {{ready: true}}}}"
            );
        }
    }
    let (objs, _) = kproxy_graph::Objects::from_yaml("big", &y).expect("yaml");
    let mut cfg = kproxy_graph::ProxyConfig {
        node_name: "test-node".into(),
        ..Default::default()
    };
    cfg.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    let g = ServiceGraph::build(&objs, &cfg);
    let fr = family(&g, IpFamily::V4);
    assert!(fr.large_cluster);
    let t = text(&fr);
    lacks(&t, "-> 10.1.");
    // ... but per-service comments stay.
    assert!(t.contains("\"big/s0 cluster IP\""));
    let sep = t
        .lines()
        .find(|l| l.starts_with("-A KUBE-SEP-"))
        .unwrap_or("");
    assert!(sep.is_empty() || !sep.contains("comment"), "{sep}");
}

/// kube-proxy's `checkIPTablesRuleJumps`: every jump target exists in its
/// table, and every service chain is jumped to.
#[test]
fn every_jump_has_a_target_and_every_chain_a_jump() {
    for name in fixtures() {
        let g = load_fixture(&name, ProxyMode::Iptables);
        for fr in generate(&g, &GenOptions::default()).families {
            for table in &fr.tables {
                let chains: BTreeSet<&str> = table.chains.iter().map(|c| c.name.as_str()).collect();
                let mut targets: BTreeSet<&str> = BTreeSet::new();
                let rules = table
                    .chains
                    .iter()
                    .flat_map(|c| c.rules.iter())
                    .chain(table.builtin_rules.iter().map(|b| &b.rule));
                for r in rules {
                    if let Some(t) = r.jump_target() {
                        assert!(
                            chains.contains(t),
                            "{name} {} {}: jump to missing {t}",
                            fr.family,
                            table.name
                        );
                        targets.insert(t);
                    }
                }
                for c in table.chains.iter().filter(|c| c.owner.is_some()) {
                    assert!(
                        targets.contains(c.name.as_str()),
                        "{name} {} {}: {} is never jumped to",
                        fr.family,
                        table.name,
                        c.name
                    );
                }
            }
        }
    }
}

#[test]
fn output_is_deterministic_and_round_trips_through_the_parser() {
    for name in fixtures() {
        let g = load_fixture(&name, ProxyMode::Iptables);
        let a = generate(&g, &GenOptions::default());
        let b = generate(&g, &GenOptions::default());
        assert_eq!(a, b, "{name}");
        for fr in &a.families {
            let parsed = kproxy_iptables::parse_save(&fr.render_full())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for table in &fr.tables {
                let pt = parsed.table(table.name).expect("table");
                for c in &table.chains {
                    let pc = pt.chain(&c.name).expect("chain");
                    let got: Vec<_> = pc
                        .rules
                        .iter()
                        .map(|r| r.rule.clone().expect("parsed"))
                        .collect();
                    assert_eq!(got, c.rules, "{name} {} {}", table.name, c.name);
                }
            }
        }
    }
}

#[test]
fn ipv6_rules_use_ip6tables_spelling() {
    let g = load_fixture("dual-stack", ProxyMode::Iptables);
    let t6 = text(&family(&g, IpFamily::V6));
    has(
        &t6,
        "-A KUBE-SEP-JP3Z47LPJQUFTNBW -m comment --comment ds/web:http -m tcp -p tcp -j DNAT --to-destination [fd00:10:180::1]:8080",
    );
    has(
        &t6,
        "-A KUBE-SEP-JP3Z47LPJQUFTNBW -m comment --comment ds/web:http -s fd00:10:180::1 -j KUBE-MARK-MASQ",
    );
    // The SEP hash covers the bracketed endpoint, as net.JoinHostPort.
    assert_eq!(
        expected_hash("ds/web:httptcp[fd00:10:180::1]:8080"),
        "JP3Z47LPJQUFTNBW"
    );
    // No IPv4 address leaks into the IPv6 ruleset, and vice versa.
    let t4 = text(&family(&g, IpFamily::V4));
    for l in t6.lines().filter(|l| l.starts_with("-A")) {
        assert!(!l.contains("10.180.") && !l.contains("172.30."), "{l}");
    }
    for l in t4.lines().filter(|l| l.starts_with("-A")) {
        assert!(!l.contains("fd00:"), "{l}");
    }
}

#[test]
fn cluster_ip_multi_port_and_protocols() {
    // S1: one chain set per (port name, protocol); each DNATs to its
    // target port with its protocol's module.
    let t = text(&v4("cluster-ip-general"));
    for (port, proto, dport, target) in [
        ("http", "tcp", 80, 80),
        ("https", "tcp", 443, 8443),
        ("dns-udp", "udp", 53, 53),
        ("dns-tcp", "tcp", 53, 5353),
        ("dns-sctp", "sctp", 53, 53),
    ] {
        let svc = format!(
            "KUBE-SVC-{}",
            expected_hash(&format!("ns2/svc2:{port}{proto}"))
        );
        has(
            &t,
            &format!(
                "-A KUBE-SERVICES -m comment --comment \"ns2/svc2:{port} cluster IP\" -m {proto} -p {proto} -d 172.30.0.42 --dport {dport} -j {svc}"
            ),
        );
        for ep in ["10.180.0.1", "10.180.2.1"] {
            let sep = expected_hash(&format!("ns2/svc2:{port}{proto}{ep}:{target}"));
            has(
                &t,
                &format!(
                    "-A KUBE-SEP-{sep} -m comment --comment ns2/svc2:{port} -m {proto} -p {proto} -j DNAT --to-destination {ep}:{target}"
                ),
            );
        }
    }
    // Pods are not masqueraded to a ClusterIP; everything else is.
    assert!(t.contains("--dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"));
}

#[test]
fn both_policies_local_still_short_circuit_through_the_cluster_chain() {
    // kube-proxy's UsesClusterEndpoints: an externally reachable port
    // always has KUBE-SVC for the EXT chain's pod and LOCAL short-circuits.
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: ll, namespace: ns}\nspec:\n  type: NodePort\n  clusterIP: 172.30.0.9\n  internalTrafficPolicy: Local\n  externalTrafficPolicy: Local\n  ports: [{name: p, port: 80, protocol: TCP, nodePort: 3009}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: ll-x, namespace: ns, labels: {kubernetes.io/service-name: ll}}\naddressType: IPv4\nports: [{name: p, port: 80, protocol: TCP}]\nendpoints:\n- {addresses: [10.180.0.9], conditions: {ready: true}, nodeName: node2}\n";
    let (objs, _) = kproxy_graph::Objects::from_yaml("ll", yaml).expect("yaml");
    let mut cfg = kproxy_graph::ProxyConfig {
        node_name: "test-node".into(),
        ..Default::default()
    };
    cfg.cluster_cidrs = vec!["10.0.0.0/8".parse().expect("cidr")];
    let t = text(&family(&ServiceGraph::build(&objs, &cfg), IpFamily::V4));
    let h = expected_hash("ns/ll:ptcp");
    has(
        &t,
        "-A KUBE-SERVICES -m comment --comment \"ns/ll:p has no local endpoints\" -m tcp -p tcp -d 172.30.0.9 --dport 80 -j DROP",
    );
    has(
        &t,
        &format!(
            "-A KUBE-EXT-{h} -m comment --comment \"pod traffic for ns/ll:p external destinations\" -s 10.0.0.0/8 -j KUBE-SVC-{h}"
        ),
    );
    has(
        &t,
        &format!(
            "-A KUBE-EXT-{h} -m comment --comment \"route LOCAL traffic for ns/ll:p external destinations\" -m addrtype --src-type LOCAL -j KUBE-SVC-{h}"
        ),
    );
    has(
        &t,
        "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns/ll:p has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3009 -j DROP",
    );
    lacks(&t, &format!("KUBE-SVL-{h}"));
}
