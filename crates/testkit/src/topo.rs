//! Small network topologies for kernel tests.

use crate::NetNs;

/// Client ns — node ns — pod ns. The node has `192.168.49.2/24` towards
/// the client (its `vc`) and `10.244.0.1/16` towards the pods (its `vp`);
/// the pod ns holds the pod IPs on its `eth0`; the client (192.168.49.10)
/// routes the Service network 10.96.0.0/12 via the node.
#[derive(Debug)]
pub struct Topology {
    /// The node (kproxy's rules go here).
    pub node: NetNs,
    /// The pods.
    pub pod: NetNs,
    /// An outside client.
    pub client: NetNs,
}

impl Topology {
    /// Client, node and pod namespaces (`kp-<prefix>-*`) and their links:
    /// the node's `vc` to the client's `eth0`, and its `vp` to the pod's
    /// `eth0`; all down and without addresses.
    pub fn linked(prefix: &str) -> Topology {
        let node = NetNs::new(prefix);
        let pod = NetNs::new(prefix);
        let client = NetNs::new(prefix);
        node.veth("vc", &client, "eth0");
        node.veth("vp", &pod, "eth0");
        Topology { node, pod, client }
    }

    /// The seed article's network with these pod IPs (namespaces
    /// `kp-<prefix>-*`).
    pub fn seed(prefix: &str, pod_ips: &[&str]) -> Topology {
        let Topology { node, pod, client } = Topology::linked(prefix);
        node.exec_all(&[
            "sysctl -qw net.ipv4.ip_forward=1",
            // Rejections are ICMP errors, rate-limited per peer by default.
            "sysctl -qw net.ipv4.icmp_ratelimit=0",
            "ip addr add 192.168.49.2/24 dev vc",
            "ip addr add 10.244.0.1/16 dev vp",
            "ip link set vc up",
            "ip link set vp up",
            "ip route add default via 192.168.49.10",
        ]);
        client.exec_all(&[
            "ip addr add 192.168.49.10/24 dev eth0",
            "ip link set eth0 up",
            "ip route add 10.96.0.0/12 via 192.168.49.2",
        ]);
        for ip in pod_ips {
            pod.exec(&["ip", "addr", "add", &format!("{ip}/16"), "dev", "eth0"]);
        }
        pod.exec_all(&["ip link set eth0 up", "ip route add default via 10.244.0.1"]);
        Topology { node, pod, client }
    }
}
