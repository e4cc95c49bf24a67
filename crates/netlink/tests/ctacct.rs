//! ctnetlink and nfnetlink_acct against the kernel, in a network namespace
//! (root): what kproxy creates, dumps and deletes is what the `conntrack`
//! and `iptables` tools see.

use std::net::{IpAddr, Ipv4Addr};

use kproxy_netlink::conntrack::{self, Flow, IPPROTO_TCP, IPPROTO_UDP, Tuple};
use kproxy_netlink::{Family, NfSocket, acct};
use kproxy_testkit::NetNs;

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

/// Client `i` (10.1.x.y:i) to `dst:53`, answered by `reply_src:5353`.
fn flow(proto: u8, i: u32, dst: IpAddr, reply_src: IpAddr) -> Flow {
    let client = v4(0x0a01_0000 + i);
    let sport = 10000 + (i % 50000) as u16;
    Flow {
        proto,
        orig: Tuple {
            src: client,
            dst,
            sport,
            dport: 53,
        },
        reply: Tuple {
            src: reply_src,
            dst: client,
            sport: 5353,
            dport: sport,
        },
        zone: 0,
        id: None,
    }
}

fn udp_count_by_tool(ns: &NetNs) -> usize {
    ns.exec(&["conntrack", "-L", "-p", "udp"])
        .lines()
        .filter(|l| l.starts_with("udp"))
        .count()
}

#[test]
fn conntrack_dump_and_delete_match_the_tool() {
    let ns = NetNs::new("ct");
    let mut sock = NfSocket::open_in_netns(ns.name()).unwrap();
    let svc = v4(0xac1e_0032); // 172.30.0.50
    let (gone_ep, serving_ep) = (v4(0x0ab4_0009), v4(0x0ab4_0001));
    let mut flows: Vec<Flow> = (0..2000)
        .map(|i| flow(IPPROTO_UDP, i, svc, gone_ep))
        .collect();
    flows.extend((2000..2500).map(|i| flow(IPPROTO_UDP, i, svc, serving_ep)));
    flows.extend((0..300).map(|i| flow(IPPROTO_TCP, i, svc, gone_ep)));
    assert_eq!(
        conntrack::create(&mut sock, Family::Ip, &flows, 300).unwrap(),
        2800
    );
    assert_eq!(udp_count_by_tool(&ns), 2500);

    let mut dumped = Vec::new();
    conntrack::dump(&mut sock, Family::Ip, IPPROTO_UDP, |f| dumped.push(*f)).unwrap();
    assert_eq!(dumped.len(), 2500, "only UDP flows are dumped");
    assert!(dumped.iter().all(|f| f.id.is_some()));
    let mut v6 = 0;
    conntrack::dump(&mut sock, Family::Ip6, IPPROTO_UDP, |_| v6 += 1).unwrap();
    assert_eq!(v6, 0, "no IPv4 flow in the IPv6 dump");

    let stale: Vec<Flow> = dumped
        .iter()
        .filter(|f| f.reply.src == gone_ep)
        .copied()
        .collect();
    assert_eq!(stale.len(), 2000);
    let d = conntrack::delete(&mut sock, Family::Ip, &stale, |e| panic!("errno {e}")).unwrap();
    assert_eq!((d.deleted, d.gone, d.failed), (2000, 0, 0));
    let left = ns.exec(&["conntrack", "-L", "-p", "udp"]);
    assert_eq!(udp_count_by_tool(&ns), 500, "{left}");
    assert!(!left.contains("src=10.180.0.9"), "{left}");
    let tcp = ns.exec(&["conntrack", "-L", "-p", "tcp"]);
    assert_eq!(tcp.lines().filter(|l| l.starts_with("tcp")).count(), 300);

    // Deleting again: every one is gone already.
    let d = conntrack::delete(&mut sock, Family::Ip, &stale, |e| panic!("errno {e}")).unwrap();
    assert_eq!((d.deleted, d.gone), (0, 2000));
}

#[test]
fn nfacct_counters_are_created_once_and_count() {
    let ns = NetNs::new("acct");
    let mut sock = NfSocket::open_in_netns(ns.name()).unwrap();
    let err = acct::get(&mut sock, "kproxy_test_pkts").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    acct::ensure(&mut sock, "kproxy_test_pkts").unwrap();
    acct::ensure(&mut sock, "kproxy_test_pkts").unwrap();
    assert_eq!(
        acct::get(&mut sock, "kproxy_test_pkts").unwrap(),
        acct::Counter::default()
    );
    ns.exec(&["ip", "link", "set", "lo", "up"]);
    ns.exec(&[
        "iptables-legacy",
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "-m",
        "nfacct",
        "--nfacct-name",
        "kproxy_test_pkts",
    ]);
    // Three datagrams of 2 bytes ("x\n"): 28 bytes of headers each.
    ns.exec(&[
        "bash",
        "-c",
        "for i in 1 2 3; do echo x > /dev/udp/127.0.0.1/9; done",
    ]);
    let c = acct::get(&mut sock, "kproxy_test_pkts").unwrap();
    assert_eq!(
        c,
        acct::Counter {
            packets: 3,
            bytes: 3 * 30
        }
    );
}
