//! The nft backend end to end inside a network namespace (needs root).

use kproxy_graph::{Backend, BackendKind, ChangeSet, ProxyMode};
use kproxy_iptables_nft::IptablesNftBackend;
use kproxy_testkit::{NetNs, load_fixture};

#[test]
fn seed_syncs_checks_and_cleans_up_through_nft() {
    let ns = NetNs::new("ipt");
    let g = load_fixture("seed", ProxyMode::Iptables);
    let mut be = IptablesNftBackend::in_netns(ns.name());
    assert_eq!(be.kind(), BackendKind::IptablesNft);
    let stats = be.sync(&g, None).expect("sync");
    assert!(stats.full && stats.rules_written > 0);
    let saved = ns.exec(&["iptables-nft-save", "-t", "nat"]);
    assert!(
        saved.contains("-A KUBE-NODEPORTS -p tcp -m comment --comment \"web/web-service\" -m tcp --dport 30007 -j KUBE-EXT-6NP7QLHXVWVVFBVL"),
        "{saved}"
    );
    assert!(be.check().expect("check"));
    let stats = be
        .sync(&g, Some(&ChangeSet::between(&g, &g)))
        .expect("partial");
    assert!(!stats.full);
    assert_eq!(be.last_applied(), Some(be.render_full(&g).expect("render")));
    be.cleanup().expect("cleanup");
    let saved = ns.exec(&["iptables-nft-save", "-t", "nat"]);
    assert!(!saved.contains("KUBE-"), "{saved}");
}
