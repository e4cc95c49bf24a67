//! The incremental transaction builder against the kernel: a sequence of
//! changes (add, change, remove services and endpoints) applied
//! incrementally in one namespace must leave the same table as a fresh
//! full load of the same state in another.

mod common;

use common::cluster::{Svc, bulk, changes, graph};
use common::{assert_same_tables, normalised_listing};
use kproxy_graph::{Backend, Generator, ServiceGraph};
use kproxy_nftables::NftablesBackend;
use kproxy_testkit::NetNs;

fn base() -> Vec<Svc> {
    let mut a = Svc::new("ns1", "a", "172.30.0.41", 80).ep("10.180.0.1", "test-node");
    a.port_name = "p80".into();
    let mut b = Svc::new("ns2", "b", "172.30.0.42", 80)
        .ep("10.180.0.2", "node-2")
        .ep("10.180.1.2", "node-3");
    b.node_port = Some(30042);
    let mut c = Svc::new("ns3", "c", "172.30.0.43", 443)
        .ep("10.180.0.3", "test-node")
        .ep("10.180.1.3", "node-2");
    c.affinity = Some(600);
    c.external_ips = vec!["192.168.99.3".into()];
    let mut d = Svc::new("ns4", "d", "172.30.0.44", 53)
        .ep("10.180.0.4", "test-node")
        .ep("10.180.2.4", "node-3");
    d.protocol = "UDP";
    d.lb_ips = vec!["5.6.7.8".into()];
    d.node_port = Some(30053);
    d.etp_local = true;
    d.source_ranges = vec!["203.0.113.0/25".into()];
    let v6 = Svc::new("ns6", "v6", "fd00:30::10", 80)
        .ep("fd00:10::5", "test-node")
        .ep("fd00:10::6", "node-2");
    vec![a, b, c, d, v6]
}

/// A fresh namespace where a full sync loaded `g`.
fn full_load(g: &ServiceGraph) -> NetNs {
    let ns = NetNs::new("nft");
    NftablesBackend::in_netns(ns.name())
        .sync(g, None)
        .unwrap_or_else(|e| panic!("full load: {e}"));
    ns
}

fn find<'a>(svcs: &'a mut [Svc], name: &str) -> &'a mut Svc {
    svcs.iter_mut().find(|s| s.name == name).expect("service")
}

/// The states the test walks through, each with a description.
fn steps() -> Vec<(&'static str, Vec<Svc>)> {
    let mut out = Vec::new();
    let mut s = base();
    out.push(("initial", s.clone()));
    let mut e = Svc::new("ns5", "e", "172.30.0.45", 8080).ep("10.180.0.5", "node-2");
    e.node_port = Some(30045);
    s.push(e);
    out.push(("add a service", s.clone()));
    find(&mut s, "b")
        .endpoints
        .push(("10.180.3.2".into(), "node-4".into(), true));
    out.push(("add an endpoint (2 -> 3)", s.clone()));
    find(&mut s, "a").endpoints.clear();
    out.push(("remove the only endpoint (reject)", s.clone()));
    s.retain(|x| x.name != "c");
    out.push(("remove an affinity service", s.clone()));
    find(&mut s, "d").etp_local = false;
    find(&mut s, "b").endpoints.remove(0);
    out.push(("change a policy and remove an endpoint", s.clone()));
    let mut c = Svc::new("ns3", "c", "172.30.0.43", 443).ep("10.180.4.3", "node-2");
    c.affinity = Some(60);
    s.push(c);
    find(&mut s, "a")
        .endpoints
        .push(("10.180.0.9".into(), "test-node".into(), true));
    find(&mut s, "v6").endpoints.pop();
    out.push(("re-add a service, endpoints back, IPv6 change", s.clone()));
    s.retain(|x| x.name != "e");
    out.push(("remove a NodePort service", s));
    out
}

#[test]
fn incremental_syncs_match_full_loads() {
    let inc_ns = NetNs::new("nft");
    let mut inc = NftablesBackend::in_netns(inc_ns.name());
    let mut prev: Option<ServiceGraph> = None;
    for (what, svcs) in steps() {
        let g = graph(&svcs);
        let stats = match &prev {
            None => inc.sync(&g, None),
            Some(p) => inc.sync(&g, Some(&changes(p, &g))),
        }
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(stats.full, prev.is_none(), "{what}: full sync only first");

        let full_ns = full_load(&g);
        assert_same_tables(&full_ns, &inc_ns, true, what);
        assert!(inc.check().expect("check"), "{what}: check after sync");
        // What the backend says it applied, generated again from its
        // state, is the full render of the graph.
        assert!(
            inc.last_applied() == Some(inc.render_full(&g).expect("render")),
            "{what}: last_applied differs from the full render"
        );
        prev = Some(g);
    }
    // One more (empty) sync deletes the chains flushed by the last one:
    // then the tables are identical, empty chains included.
    let g = prev.expect("graph");
    inc.sync(&g, Some(&changes(&g, &g))).expect("empty sync");
    let full_ns = full_load(&g);
    assert_same_tables(&full_ns, &inc_ns, false, "after cleanup");
}

#[test]
fn one_endpoint_change_is_a_small_transaction() {
    let ns = NetNs::new("nft");
    let mut be = NftablesBackend::in_netns(ns.name());
    let mut svcs = bulk(200, "bulk", "172.30", ["10.1", "10.2"]);
    let g1 = graph(&svcs);
    be.sync(&g1, None).expect("full");
    svcs[7].endpoints[1].0 = "10.3.0.8".into();
    let g2 = graph(&svcs);
    let stats = be.sync(&g2, Some(&changes(&g1, &g2))).expect("incremental");
    assert!(!stats.full);
    // One data-map element replaced (delete + add), plus the generation.
    assert!(
        stats.bytes_written < 600,
        "{} bytes: {stats:?}",
        stats.bytes_written
    );
}

#[test]
fn failed_transaction_keeps_rules_and_reports_the_statement() {
    let ns = NetNs::new("nft");
    let mut be = NftablesBackend::in_netns(ns.name());
    let svcs = base();
    let g1 = graph(&svcs);
    be.sync(&g1, None).expect("full");
    let before = normalised_listing(&ns, false);
    // The kernel keeps the previous rules when a transaction fails.
    let mut next = svcs.clone();
    next.retain(|s| s.name != "c");
    let g2 = graph(&next);
    // Someone deletes an element our next transaction deletes: nft
    // refuses the whole transaction.
    ns.exec_all(&["nft delete element ip kproxy service-ips { 172.30.0.43 . tcp . 443 }"]);
    let tampered = normalised_listing(&ns, false);
    assert_ne!(before, tampered);
    let err = be
        .sync(&g2, Some(&changes(&g1, &g2)))
        .expect_err("transaction must fail");
    let msg = err.to_string();
    assert!(msg.contains("statement: "), "{msg}");
    assert_eq!(
        normalised_listing(&ns, false),
        tampered,
        "kernel unchanged by the failed transaction"
    );
    // The next sync is full and repairs everything.
    let stats = be
        .sync(&g2, Some(&changes(&g1, &g2)))
        .expect("full sync after failure");
    assert!(stats.full);
    let full_ns = full_load(&g2);
    assert_same_tables(
        &full_ns,
        &ns,
        false,
        "full sync after the failed transaction",
    );
}

#[test]
fn large_full_loads_split_into_bounded_transactions_load_the_same_table() {
    let svcs: Vec<Svc> = (0..300)
        .map(|i| {
            let mut s = Svc::new(
                "bulk",
                &format!("s{i}"),
                &format!("172.30.{}.{}", i / 250, i % 250 + 1),
                80,
            )
            .ep(&format!("10.1.{}.{}", i / 250, i % 250 + 1), "node-2")
            .ep(&format!("10.2.{}.{}", i / 250, i % 250 + 1), "test-node");
            s.node_port = Some(30000 + i as u16);
            s
        })
        .collect();
    let g = graph(&svcs);
    let split_ns = NetNs::new("nft");
    let stats = NftablesBackend::in_netns(split_ns.name())
        .max_elements_per_transaction(1000)
        .sync(&g, None)
        .expect("split load");
    assert!(stats.full);
    let one_ns = full_load(&g);
    assert_same_tables(&one_ns, &split_ns, false, "split load");
    // The split really happened: 300 services make far more than 1000 elements.
    let elements: usize = kproxy_nftables::NftGenerator
        .generate(&g)
        .expect("generate")
        .tables()
        .iter()
        .map(|t| t.element_count())
        .sum();
    assert!(elements > 2000, "{elements}");
}

/// A full sync of a large cluster whose tables are in place is a diff
/// against what was applied (one transaction, tables never emptied), also
/// when the skeleton changes; after drift it reloads.
#[test]
fn large_full_resync_is_a_diff_and_drift_reloads() {
    let mut svcs = bulk(300, "bulk", "172.30", ["10.1", "10.2"]);
    let ns = NetNs::new("nft");
    let mut be = NftablesBackend::in_netns(ns.name()).max_elements_per_transaction(1000);
    let g1 = graph(&svcs);
    let first = be.sync(&g1, None).expect("first load");
    assert!(first.full);
    // Periodic full resync with one changed service and a changed node
    // address (skeleton): sent as a small diff.
    svcs[3].endpoints.pop();
    let mut g2 = graph(&svcs);
    if let Some(fg) = g2.families.get_mut(&kproxy_graph::IpFamily::V4) {
        fg.nodeport_ips = kproxy_graph::NodePortIps::Only(vec!["192.168.0.9".parse().expect("ip")]);
    }
    let resync = be.sync(&g2, None).expect("resync");
    assert!(resync.full);
    assert!(
        resync.bytes_written * 10 < first.bytes_written,
        "resync wrote {} bytes, first load {}",
        resync.bytes_written,
        first.bytes_written
    );
    let fresh = full_load(&g2);
    assert_same_tables(&fresh, &ns, true, "full resync as a diff");
    // Drift: check() notices, and the next full sync reloads everything.
    ns.exec_all(&["nft delete table ip kproxy"]);
    assert!(!be.check().expect("check"));
    let reload = be.sync(&g2, None).expect("reload");
    assert!(reload.bytes_written > resync.bytes_written * 10);
    assert_same_tables(&fresh, &ns, false, "reload after drift");
}

/// Pipelined batches: each is applied while the next is compiled. When
/// one is refused, the next is not sent, its caller gets the refusal
/// (naming the statement), and what the kernel holds is what the batches
/// before the refused one made.
#[test]
fn pipelined_batches_stop_at_the_first_refusal() {
    use kproxy_nftables::{Element, Family, NetlinkTransport, Op, Transaction};
    let ns = NetNs::new("nftpipe");
    let mut nl = NetlinkTransport::in_netns(ns.name());
    let chain = |name: &str| {
        let mut tx = Transaction::new();
        tx.push(
            Family::Ip,
            "kptest",
            Op::AddChain {
                name: name.into(),
                hook: None,
            },
        );
        tx
    };
    let mut first = Transaction::new();
    first.push(Family::Ip, "kptest", Op::AddTable { comment: None });
    first.push(
        Family::Ip,
        "kptest",
        Op::AddSet(kproxy_nftables::Set {
            name: "m".into(),
            map: true,
            set_type: kproxy_nftables::SetType::Type("ipv4_addr : verdict".into()),
            flags: vec![],
            timeout: None,
            size: None,
            comment: None,
            elements: Default::default(),
        }),
    );
    first.extend(chain("one"));
    nl.send_pipelined(first).expect("first batch compiles");
    // Refused by the kernel: a verdict to a chain that does not exist.
    let mut bad = chain("two");
    bad.add_elements(
        Family::Ip,
        "kptest",
        "m",
        [(
            "10.9.9.9".to_string(),
            Element {
                value: Some("goto no-such-chain".into()),
                comment: None,
            },
        )],
    );
    nl.send_pipelined(bad)
        .expect("the first batch was applied; the refused one is in flight");
    let err = nl
        .send_pipelined(chain("three"))
        .expect_err("the refusal of the batch before comes back here");
    let msg = err.to_string();
    assert!(msg.contains("operation 2: Error: "), "{msg}");
    assert!(msg.contains("no-such-chain"), "names the statement: {msg}");
    nl.wait().expect("nothing in flight after a refusal");
    let listing = ns.exec(&["nft", "list", "table", "ip", "kptest"]);
    assert!(listing.contains("chain one"), "{listing}");
    assert!(!listing.contains("chain two"), "refused batch: {listing}");
    assert!(!listing.contains("chain three"), "never sent: {listing}");
    // The transport goes on: the next batch builds on what was applied.
    nl.send_pipelined(chain("four")).expect("sent");
    nl.wait().expect("applied");
    let listing = ns.exec(&["nft", "list", "table", "ip", "kptest"]);
    assert!(listing.contains("chain four"), "{listing}");
}

/// A full resync of a large ruleset in another generation context (the
/// local-traffic detector, which the eTP=Local services' external chains
/// read), with a changed and a removed service: the diff the backend
/// builds from the ports it kept gives the table a full load gives.
#[test]
fn large_full_resync_in_another_context_equals_a_full_load() {
    let mut svcs = base();
    svcs.extend(bulk(300, "bulk", "172.30", ["10.1", "10.2"]));
    let ns = NetNs::new("nft");
    let mut be = NftablesBackend::in_netns(ns.name()).max_elements_per_transaction(1000);
    let g1 = graph(&svcs);
    assert!(be.sync(&g1, None).expect("first load").full);
    find(&mut svcs, "b").endpoints.pop();
    svcs.retain(|x| x.name != "s7");
    let mut g2 = graph(&svcs);
    let fg = g2
        .families
        .get_mut(&kproxy_graph::IpFamily::V4)
        .expect("IPv4");
    let before = fg.local_traffic.clone();
    fg.local_traffic = kproxy_graph::LocalTraffic::Cidr("10.77.0.0/16".parse().expect("cidr"));
    assert_ne!(before, fg.local_traffic);
    let resync = be.sync(&g2, None).expect("resync");
    assert!(resync.full);
    let fresh = full_load(&g2);
    assert_same_tables(&fresh, &ns, true, "resync");
    assert!(be.check().expect("check"), "check after the resync");
}
