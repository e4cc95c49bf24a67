//! The host's own addresses, added to the Node's (`extra_node_ips`).
//!
//! kube-proxy matches `nodePortAddresses` CIDRs against the addresses of
//! the node's interfaces, not only those the Node object lists; kproxy does
//! the same by reading them at every sync (a changed address changes the
//! configuration, which forces a full sync). Loopback and link-local
//! addresses are left out: they are never a NodePort address by CIDR
//! (localhost NodePorts are decided separately) and never a primary IP.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// The interface addresses worth adding, sorted.
pub fn host_ips() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = BTreeSet::new();
    for a in addrs {
        let Some(sa) = a.address else { continue };
        let ip: IpAddr = if let Some(v4) = sa.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = sa.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        if usable(&ip) {
            out.insert(ip);
        }
    }
    out.into_iter().collect()
}

fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_link_local_are_left_out() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!usable(&ip("127.0.0.1")));
        assert!(!usable(&ip("::1")));
        assert!(!usable(&ip("169.254.1.1")));
        assert!(!usable(&ip("fe80::1")));
        assert!(usable(&ip("192.168.0.2")));
        assert!(usable(&ip("2001:db8::1")));
        // Whatever this machine has, nothing unusable comes back.
        assert!(host_ips().iter().all(usable));
    }
}
