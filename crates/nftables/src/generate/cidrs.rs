//! CIDR lists made disjoint for nft interval sets.

use ipnet::IpNet;

/// The CIDRs of `nets` (normalised to their network address) without the
/// ones another contains. An anonymous nft interval set refuses
/// overlapping elements, and two CIDRs either nest or are disjoint, so
/// this is all that is needed.
///
/// O(n log n): sorted by network address, shorter prefixes first, a CIDR
/// inside any kept one is inside the last kept one (the kept ones are
/// disjoint and in address order, so an earlier one ends before the last
/// one starts). One containment check per CIDR.
pub(crate) fn disjoint_cidrs(nets: Vec<IpNet>) -> Vec<IpNet> {
    disjoint_sorted(nets, |outer, inner| outer.contains(inner))
}

/// [`disjoint_cidrs`] with the containment check as a parameter (the
/// tests count its calls).
fn disjoint_sorted(
    nets: Vec<IpNet>,
    mut contains: impl FnMut(&IpNet, &IpNet) -> bool,
) -> Vec<IpNet> {
    let mut nets: Vec<IpNet> = nets.into_iter().map(|n| n.trunc()).collect();
    // `IpNet` orders by family, address, then prefix length: a container
    // comes before everything it contains.
    nets.sort_unstable();
    nets.dedup();
    let mut out: Vec<IpNet> = Vec::with_capacity(nets.len());
    for n in nets {
        if !out.last().is_some_and(|last| contains(last, &n)) {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_made_disjoint() {
        let nets = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.3/32",
            "192.168.1.7/24",
            "192.168.1.0/24",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let got: Vec<String> = disjoint_cidrs(nets).iter().map(|n| n.to_string()).collect();
        assert_eq!(got, vec!["10.0.0.0/8", "192.168.1.0/24"]);
    }

    /// Random nested and disjoint CIDRs of both families: the same answer
    /// as the definition (keep what no other CIDR contains), in order.
    #[test]
    fn disjoint_cidrs_matches_the_definition() {
        use kproxy_testkit::rand::rngs::StdRng;
        use kproxy_testkit::rand::{RngExt, SeedableRng};
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let nets: Vec<IpNet> = (0..rng.random_range(0..40))
                .map(|_| {
                    let a = rng.random_range(0..16u32) << 24 | rng.random_range(0..4u32) << 8;
                    if rng.random_bool(0.2) {
                        let ip = std::net::Ipv6Addr::from(u128::from(a) << 96);
                        IpNet::new(ip.into(), rng.random_range(0..=128)).unwrap()
                    } else {
                        let ip = std::net::Ipv4Addr::from(a);
                        IpNet::new(ip.into(), rng.random_range(0..=32)).unwrap()
                    }
                })
                .collect();
            let truncated: Vec<IpNet> = nets.iter().map(|n| n.trunc()).collect();
            let mut want: Vec<IpNet> = truncated
                .iter()
                .filter(|n| !truncated.iter().any(|o| o != *n && o.contains(*n)))
                .copied()
                .collect();
            want.sort();
            want.dedup();
            assert_eq!(disjoint_cidrs(nets.clone()), want, "seed {seed}: {nets:?}");
        }
    }

    /// Linear in the number of ranges (60,000 source ranges were
    /// quadratic): one containment check per CIDR, whatever their shape.
    #[test]
    fn disjoint_cidrs_checks_each_cidr_once() {
        let n = 20_000u32;
        // Disjoint /32s, and a run of CIDRs each inside the one before.
        let mut nets: Vec<IpNet> = (0..n)
            .map(|i| IpNet::new(std::net::Ipv4Addr::from(0x0b00_0000 + i * 4).into(), 32).unwrap())
            .collect();
        nets.extend((8..=32).map(|p| IpNet::new([12, 0, 0, 0].into(), p).unwrap()));
        let total = nets.len();
        let mut calls = 0usize;
        let out = disjoint_sorted(nets, |a, b| {
            calls += 1;
            a.contains(b)
        });
        assert_eq!(out.len(), n as usize + 1);
        assert!(
            calls < total,
            "{calls} containment checks for {total} CIDRs"
        );
    }
}
