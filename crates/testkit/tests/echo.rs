//! The echo servers and probes in a network namespace (needs root; fails,
//! never skips, without it).

use std::time::Duration;

use kproxy_testkit::{NetNs, echo_server, probe, probe_many, udp_echo_server, udp_probe};

#[test]
fn servers_answer_with_their_address_and_stop_on_drop() {
    let ns = NetNs::new("echo");
    ns.exec(&["ip", "addr", "add", "10.9.0.1/32", "dev", "lo"]);
    let tcp = echo_server(&ns, "0.0.0.0:8080");
    let udp = udp_echo_server(&ns, "10.9.0.1:5353");
    assert_eq!(probe(&ns, "10.9.0.1:8080").as_deref(), Ok("10.9.0.1"));
    assert_eq!(probe(&ns, "127.0.0.1:8080").as_deref(), Ok("127.0.0.1"));
    assert_eq!(udp_probe(&ns, "10.9.0.1:5353").as_deref(), Ok("10.9.0.1"));
    assert_eq!(
        probe_many(ns.name(), "10.9.0.1:8080", 3),
        ["10.9.0.1".to_string()].into()
    );
    drop((tcp, udp));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        probe(&ns, "10.9.0.1:8080").is_err(),
        "the TCP server stopped"
    );
    assert!(
        udp_probe(&ns, "10.9.0.1:5353").is_err(),
        "the UDP server stopped"
    );
}
