//! ServiceCIDR objects against the kernel: adding, widening, narrowing and
//! removing service CIDRs is an incremental sync that updates the
//! `service-cidrs` set (no rule is rewritten once the drop rule exists),
//! and leaves the same table as a full load of the same state.

mod common;

use common::assert_same_tables;
use common::cluster::{Svc, changes, config, node_object};
use kproxy_graph::{Backend, Objects, ServiceGraph};
use kproxy_nftables::NftablesBackend;
use kproxy_testkit::NetNs;
use serde_json::json;

/// A ServiceCIDR: its name and `spec.cidrs`.
type Cidr<'a> = (&'a str, &'a [&'a str]);

fn services() -> Vec<Svc> {
    vec![
        Svc::new("ns1", "a", "172.30.0.41", 80).ep("10.180.0.1", "test-node"),
        Svc::new("ns6", "v6", "fd00:30::10", 80).ep("fd00:10::5", "node-2"),
    ]
}

/// The graph of the services with these ServiceCIDRs `(name, cidrs)` and
/// no configured service CIDR.
fn graph(cidrs: &[Cidr<'_>]) -> ServiceGraph {
    let mut objects = Objects::default();
    let mut warnings = Vec::new();
    objects.add_value(node_object(), &mut warnings);
    for s in services() {
        for o in s.objects() {
            objects.add_value(o, &mut warnings);
        }
    }
    for (name, c) in cidrs {
        objects.add_value(
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                   "metadata": {"name": name}, "spec": {"cidrs": c}}),
            &mut warnings,
        );
    }
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut config = config();
    config.service_cidrs.clear();
    ServiceGraph::build(&objects, &config)
}

#[test]
fn service_cidr_changes_are_set_updates() {
    let kubernetes: Cidr = ("kubernetes", &["172.30.0.0/16", "fd00:30::/108"]);
    let extra: Cidr = ("extra", &["10.100.0.0/16"]);
    let wide: Cidr = ("wide", &["172.16.0.0/12", "fd00:30::/64"]);
    // (what, ServiceCIDRs, whether the drop rule is written in this step)
    let steps: Vec<(&str, Vec<Cidr>, bool)> = vec![
        ("no ServiceCIDR", vec![], false),
        ("the default ServiceCIDR appears", vec![kubernetes], true),
        ("a second one", vec![kubernetes, extra], false),
        (
            "one that contains the first",
            vec![kubernetes, extra, wide],
            false,
        ),
        ("it goes again", vec![kubernetes, extra], false),
        ("the second goes", vec![kubernetes], false),
        ("none left", vec![], true),
    ];
    let ns = NetNs::new("nftcidr");
    let mut be = NftablesBackend::in_netns(ns.name());
    let mut prev: Option<ServiceGraph> = None;
    for (what, cidrs, rule_changes) in steps {
        let g = graph(&cidrs);
        let stats = match &prev {
            None => be.sync(&g, None),
            Some(p) => {
                let c = changes(p, &g);
                assert!(
                    c.service_cidrs_changed && !c.needs_full_sync,
                    "{what}: {c:?}"
                );
                be.sync(&g, Some(&c))
            }
        }
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        if prev.is_some() {
            assert!(!stats.full, "{what}: an incremental sync");
            if !rule_changes {
                assert_eq!(stats.rules_written, 0, "{what}: only set elements change");
            }
        }
        let full_ns = NetNs::new("nftcidr");
        NftablesBackend::in_netns(full_ns.name())
            .sync(&g, None)
            .unwrap_or_else(|e| panic!("{what} (full): {e}"));
        assert_same_tables(&full_ns, &ns, true, what);
        // The set holds the disjoint union of the ServiceCIDRs' ranges.
        let listing = ns.exec(&["nft", "list", "table", "ip", "kproxy"]);
        let want_v4: Vec<&str> = match cidrs.len() {
            0 => vec![],
            1 => vec!["172.30.0.0/16"],
            2 => vec!["10.100.0.0/16", "172.30.0.0/16"],
            _ => vec!["10.100.0.0/16", "172.16.0.0/12"],
        };
        assert_eq!(
            listing.contains("set service-cidrs"),
            !want_v4.is_empty(),
            "{what}: {listing}"
        );
        for c in ["10.100.0.0/16", "172.30.0.0/16", "172.16.0.0/12"] {
            assert_eq!(
                listing.contains(c),
                want_v4.contains(&c),
                "{what}: {c} in {listing}"
            );
        }
        prev = Some(g);
    }
}
