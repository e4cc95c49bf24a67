//! The netlink transport against `nft -f`: the same transactions applied
//! both ways, in two network namespaces, must list the same
//! (`nft list ruleset` and `nft -j list ruleset`). Covers every golden
//! fixture (full loads), the property tests' random clusters, incremental
//! sequences (compared after every step), and atomicity (a refused batch
//! leaves the previous rules in force, with an error naming the
//! statement).

mod common;

use common::cluster::{Svc, changes, graph};
use common::random::{v4, v6};
use kproxy_graph::{Backend, Generator, ProxyMode, ServiceGraph};
use kproxy_nftables::{
    NetlinkTransport, Nft, NftGenerator, NftablesBackend, Transaction, TransportKind,
};
use std::cell::RefCell;

use kproxy_testkit::{Draw, NetNs, TestRng, check_property, draws, fixtures, load_fixture};

/// Two namespaces, one per transport.
struct Pair {
    exec_ns: NetNs,
    nl_ns: NetNs,
    nft: Nft,
    nl: NetlinkTransport,
}

impl Pair {
    fn new() -> Pair {
        let exec_ns = NetNs::new("nleq-x");
        let nl_ns = NetNs::new("nleq-n");
        let nft = Nft::in_netns(exec_ns.name());
        let nl = NetlinkTransport::in_netns(nl_ns.name());
        Pair {
            exec_ns,
            nl_ns,
            nft,
            nl,
        }
    }

    /// Apply `tx` both ways; both must succeed.
    fn apply(&mut self, what: &str, tx: &Transaction) {
        self.nft
            .apply(&tx.render())
            .unwrap_or_else(|e| panic!("{what}: nft -f: {e}"));
        self.nl
            .apply(tx)
            .unwrap_or_else(|e| panic!("{what}: netlink: {e}"));
    }

    /// Both listings (text and JSON) must be equal.
    fn assert_same(&self, what: &str) {
        assert_same_listing(what, &self.exec_ns, &self.nl_ns);
    }
}

/// `nft list ruleset` and `nft -j list ruleset` equal in both namespaces.
fn assert_same_listing(what: &str, exec_ns: &NetNs, nl_ns: &NetNs) {
    for args in [&["list", "ruleset"][..], &["-j", "list", "ruleset"][..]] {
        let mut x = vec!["nft"];
        x.extend_from_slice(args);
        let a = exec_ns.exec(&x);
        let b = nl_ns.exec(&x);
        assert!(a.len() > 100, "{what}: nothing listed");
        if a != b {
            let diff = first_difference(&a, &b);
            panic!(
                "{what}: `nft {}` differs (nft -f vs netlink):\n{diff}",
                args.join(" ")
            );
        }
    }
}

/// The first differing lines (or JSON objects), for the failure message.
fn first_difference(a: &str, b: &str) -> String {
    let split = |s: &str| -> Vec<String> {
        if s.starts_with('{') {
            s.split("}, {").map(str::to_string).collect()
        } else {
            s.lines().map(str::to_string).collect()
        }
    };
    let (la, lb) = (split(a), split(b));
    for (i, (x, y)) in la.iter().zip(lb.iter()).enumerate() {
        if x != y {
            return format!("item {i}:\n  nft -f:  {x}\n  netlink: {y}");
        }
    }
    format!("lengths differ: {} vs {} items", la.len(), lb.len())
}

fn full_load(graph: &kproxy_graph::ServiceGraph) -> Transaction {
    let ruleset = NftGenerator.generate(graph).expect("generate");
    let mut tx = Transaction::new();
    for t in ruleset.tables() {
        tx.extend(Transaction::replace_table(&t));
    }
    tx
}

#[test]
fn golden_fixtures_list_the_same() {
    let names = fixtures();
    assert!(!names.is_empty(), "no fixtures");
    for name in names {
        let mut p = Pair::new();
        let graph = load_fixture(&name, ProxyMode::Nftables);
        let tx = full_load(&graph);
        p.apply(&name, &tx);
        p.assert_same(&name);
        // A second full load replaces the tables (delete and recreate).
        p.apply(&name, &tx);
        p.assert_same(&format!("{name} (reloaded)"));
    }
}

/// The draws one random cluster, or one cluster and its 7 changes, takes
/// at the most. Cases are set by `KPROXY_PROPTEST_CASES=N`.
const DRAWS: usize = 2048;

const NAMES: &[&str] = &[
    "web",
    "a",
    "x-y.z",
    "ns\"; flush ruleset; #",
    "name with space",
    "ünï",
    "a/b",
];

/// One random Service with a name from [`NAMES`] (made unique by `i`).
fn random_svc(r: &mut TestRng, i: u64) -> Svc {
    let ns = r.pick(NAMES).to_string();
    let name = format!("{}{i}", r.pick(NAMES));
    let port_name = r.pick(NAMES).to_string();
    common::random::random_svc(r, &ns, &name, &port_name)
}

fn random_cluster(r: &mut TestRng) -> Vec<Svc> {
    (0..1 + r.below(12)).map(|i| random_svc(r, i)).collect()
}

/// One random change: add or remove a service, add or remove an
/// endpoint, flip a traffic policy or affinity, change source ranges.
fn mutate(r: &mut TestRng, svcs: &mut Vec<Svc>, step: u64) {
    let n = svcs.len() as u64;
    match r.below(7) {
        0 => svcs.push(random_svc(r, 100 + step)),
        1 if n > 1 => {
            svcs.remove(r.below(n) as usize);
        }
        2 if n > 0 => {
            let s = &mut svcs[r.below(n) as usize];
            let six = s.cluster_ip.contains(':');
            let ip = if six {
                v6(r, "fd00:10")
            } else {
                v4(r, "10.181")
            };
            s.endpoints.push((ip, "test-node".into(), true));
        }
        3 if n > 0 => {
            let s = &mut svcs[r.below(n) as usize];
            s.endpoints.pop();
        }
        4 if n > 0 => {
            let s = &mut svcs[r.below(n) as usize];
            s.etp_local = !s.etp_local;
            s.itp_local = r.chance(50);
        }
        5 if n > 0 => {
            let s = &mut svcs[r.below(n) as usize];
            s.affinity = match s.affinity {
                Some(_) => None,
                None => Some(60),
            };
        }
        _ if n > 0 => {
            let s = &mut svcs[r.below(n) as usize];
            if s.cluster_ip.contains(':') {
                s.source_ranges = vec!["fd00:56::/64".into()];
            } else {
                s.source_ranges = vec!["10.1.0.0/16".into(), "10.2.0.0/16".into()];
            }
            s.lb_ips = vec![if s.cluster_ip.contains(':') {
                "fd00:56::9".into()
            } else {
                "5.6.9.9".into()
            }];
            s.node_port.get_or_insert(30011);
        }
        _ => svcs.push(random_svc(r, 100 + step)),
    }
}

fn backends() -> (NetNs, NftablesBackend, NetNs, NftablesBackend) {
    let exec_ns = NetNs::new("nleq-x");
    let nl_ns = NetNs::new("nleq-n");
    let exec = NftablesBackend::in_netns(exec_ns.name()).transport(TransportKind::Exec);
    let nl = NftablesBackend::in_netns(nl_ns.name()).transport(TransportKind::Netlink);
    assert_eq!(nl.transport_kind(), TransportKind::Netlink);
    (exec_ns, exec, nl_ns, nl)
}

#[test]
fn random_graphs_list_the_same() {
    let (exec_ns, exec, nl_ns, nl) = backends();
    let (exec, nl) = (RefCell::new(exec), RefCell::new(nl));
    check_property(file!(), 40, &draws(DRAWS), |mut r| {
        let g = graph(&random_cluster(&mut r));
        let what = "the cluster";
        exec.borrow_mut()
            .sync(&g, None)
            .unwrap_or_else(|e| panic!("{what}: exec: {e}"));
        nl.borrow_mut()
            .sync(&g, None)
            .unwrap_or_else(|e| panic!("{what}: netlink: {e}"));
        assert_same_listing(what, &exec_ns, &nl_ns);
        Ok(())
    });
}

#[test]
fn incremental_sequences_list_the_same_after_every_step() {
    check_property(file!(), 6, &draws(DRAWS), |mut r| {
        let (exec_ns, mut exec, nl_ns, mut nl) = backends();
        let mut svcs = random_cluster(&mut r);
        let mut prev: Option<ServiceGraph> = None;
        for step in 0..8 {
            if step > 0 {
                mutate(&mut r, &mut svcs, step);
            }
            let g = graph(&svcs);
            let what = format!("step {step}");
            let ch = prev.as_ref().map(|p| changes(p, &g));
            let a = exec
                .sync(&g, ch.as_ref())
                .unwrap_or_else(|e| panic!("{what}: exec: {e}"));
            let b = nl
                .sync(&g, ch.as_ref())
                .unwrap_or_else(|e| panic!("{what}: netlink: {e}"));
            assert_eq!(a.full, b.full, "{what}: same kind of sync");
            assert_eq!(a.full, step == 0, "{what}: incremental after the first");
            assert_same_listing(&what, &exec_ns, &nl_ns);
            assert!(
                nl.check().expect("check"),
                "{what}: drift check after a netlink sync"
            );
            prev = Some(g);
        }
        Ok(())
    });
}

/// A batch the kernel refuses changes nothing (the chain and rule added
/// before the bad element are gone too), and the error names the
/// statement and the kernel's reason.
#[test]
fn refused_batch_keeps_the_previous_rules_and_names_the_statement() {
    use kproxy_nftables::{Element, Family, Op, Rule};
    let ns = NetNs::new("nleq-a");
    let mut nl = NetlinkTransport::in_netns(ns.name());
    let graph = load_fixture("seed", ProxyMode::Nftables);
    nl.apply(&full_load(&graph)).expect("full load");
    let before = ns.exec(&["nft", "list", "ruleset"]);
    assert!(before.contains("cluster-tcp-2"), "loaded");

    let mut tx = Transaction::new();
    let t = "kproxy";
    tx.push(
        Family::Ip,
        t,
        Op::AddChain {
            name: "extra".into(),
            hook: None,
        },
    );
    tx.push(
        Family::Ip,
        t,
        Op::AddRule {
            chain: "extra".into(),
            rule: Rule::new("ip daddr @cluster-ips drop"),
        },
    );
    tx.push(Family::Ip, t, Op::FlushChain("services".into()));
    let bad = Element {
        value: Some("goto no-such-chain".into()),
        comment: None,
    };
    tx.add_elements(
        Family::Ip,
        t,
        "service-ips",
        [("10.9.9.9 . tcp . 80".to_string(), bad)],
    );
    let err = nl
        .apply(&tx)
        .expect_err("the kernel refuses a goto to a missing chain");
    let msg = err.to_string();
    assert!(
        msg.contains("operation 4: Error: "),
        "names the statement's position: {msg}"
    );
    assert!(
        msg.contains(
            "add element ip kproxy service-ips { 10.9.9.9 . tcp . 80 : goto no-such-chain }"
        ),
        "quotes the statement: {msg}"
    );
    assert!(
        msg.contains("No such file or directory"),
        "the kernel's reason: {msg}"
    );
    let after = ns.exec(&["nft", "list", "ruleset"]);
    assert_eq!(before, after, "nothing of the refused batch applied");

    // A text the compiler cannot encode is refused before anything is sent.
    let mut tx = Transaction::new();
    tx.push(
        Family::Ip,
        t,
        Op::AddRule {
            chain: "services".into(),
            rule: Rule::new("tcp flags syn drop"),
        },
    );
    let msg = nl.apply(&tx).expect_err("unsupported grammar").to_string();
    assert!(
        msg.contains("operation 1: Error: ") && msg.contains("unsupported token"),
        "{msg}"
    );
    assert_eq!(before, ns.exec(&["nft", "list", "ruleset"]));
}
