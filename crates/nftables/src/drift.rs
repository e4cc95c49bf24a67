//! The drift check's two halves: what the last sync applied, as counts
//! ([`expected`]), and how it differs from what the kernel holds
//! ([`compare`]).
//!
//! Counts, not contents: every chain with its rule count, every named set
//! and map with its element count. That finds a deleted or flushed table,
//! chain, set or map, a rule deleted from or added to any chain (the
//! `jump services` of a base chain, say) and an element deleted from or
//! added to any set or map of up to [`EXACT_LIMIT`] elements, for the cost
//! of netlink dumps ([`kproxy_netlink`]). Larger sets (the endpoint maps of
//! a large cluster) are only checked for being empty: the kernel's dump of
//! a hash set walks it from the start for every ~32 KiB reply, so counting
//! n elements costs it O(n²) (0.7 s of system time for the 110,000
//! elements of a 10,000-Service cluster's endpoint map). Not seen: a rule
//! or element edited in place into another of the same count, and single
//! elements of the large sets; the periodic full sync (`fullSyncPeriod`)
//! replaces those.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};

use crate::generate::{Fam, LbChain, ServiceRules, sets};
use crate::ir::{Family, Table};
use kproxy_netlink::msg::set_flags;
use kproxy_netlink::{ChainSummary, SetSummary, TableSummary};

/// Sets with up to this many elements are counted exactly by the check;
/// larger ones are only checked for being non-empty.
pub const EXACT_LIMIT: usize = 65_536;

/// The counts the kernel must hold after a sync that applied `skeleton`
/// with the service ports' contributions `services` (in one pass, so that
/// they can be generated one at a time) and shared load-balancing chains
/// `lbs` (made with masquerade mark `mark`). Keys several service ports
/// claim count once, as they are loaded once. Memory is one `u64` per
/// element of the service ports while they are counted.
pub fn expected<'a>(
    skeleton: &Table,
    mark: u32,
    services: impl IntoIterator<Item = impl std::borrow::Borrow<ServiceRules>>,
    lbs: impl Iterator<Item = &'a LbChain>,
) -> TableSummary {
    let skel = skeleton;
    let mut s = TableSummary::default();
    for c in skel.chains.values() {
        s.chains.insert(
            c.name.clone(),
            ChainSummary {
                rules: c.rules.len(),
                base: c.hook.is_some(),
            },
        );
    }
    let mut keys: HashMap<&'static str, Vec<u64>> = HashMap::new();
    for sr in services {
        let sr = sr.borrow();
        for c in &sr.chains {
            s.chains
                .entry(c.name.clone())
                .or_insert_with(|| ChainSummary {
                    rules: c.rules.len(),
                    base: false,
                });
        }
        for e in sr.elems.iter() {
            keys.entry(e.set).or_default().push(key_hash(e.key()));
        }
    }
    let fam = Fam { f: skel.fam() };
    for lb in lbs {
        let c = lb.chain(&fam, mark);
        s.chains.insert(
            c.name,
            ChainSummary {
                rules: c.rules.len(),
                base: false,
            },
        );
    }
    for (name, set) in &skel.sets {
        let mut flags = if set.map { set_flags::MAP } else { 0 };
        for f in &set.flags {
            flags |= match *f {
                "interval" => set_flags::INTERVAL,
                "timeout" => set_flags::TIMEOUT,
                "dynamic" => set_flags::EVAL,
                _ => 0,
            };
        }
        if set.timeout.is_some() {
            flags |= set_flags::TIMEOUT;
        }
        let mut hashes = keys.remove(name.as_str()).unwrap_or_default();
        hashes.extend(set.elements.keys().map(|k| key_hash(k)));
        hashes.sort_unstable();
        hashes.dedup();
        s.sets.insert(
            name.clone(),
            SetSummary {
                elements: hashes.len(),
                complete: true,
                flags,
            },
        );
    }
    s
}

/// A 64-bit hash of a key: two distinct keys of one set collide with a
/// probability of about n²/2⁶⁵ (10⁻⁸ at 500,000 elements), which would
/// only hide the loss of one of them from one check.
fn key_hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// The first differences between what was applied (`want`) and what the
/// kernel holds (`got`), as sentences for the log; empty when they agree.
/// Chains in `flushed` (emptied by a sync, deleted by a later one) may be
/// there, empty, or gone.
pub fn compare(
    family: Family,
    want: &TableSummary,
    got: &TableSummary,
    flushed: &[&str],
) -> Vec<String> {
    const MAX: usize = 5;
    let f = family.as_str();
    let mut out = Vec::new();
    for (name, w) in &want.chains {
        match got.chains.get(name) {
            None => out.push(format!("chain {f} {name} is missing")),
            Some(g) if g.rules != w.rules => out.push(format!(
                "chain {f} {name} has {} rules, {} applied",
                g.rules, w.rules
            )),
            Some(_) => {}
        }
    }
    for (name, g) in &got.chains {
        let applied = want.chains.contains_key(name);
        let flushed_leftover = flushed.contains(&name.as_str()) && g.rules == 0;
        if !applied && !flushed_leftover {
            out.push(format!("chain {f} {name} was not applied"));
        }
    }
    for (name, w) in &want.sets {
        let Some(g) = got.sets.get(name) else {
            out.push(format!("set {f} {name} is missing"));
            continue;
        };
        let differs = if w.is_dynamic() || name == sets::AFFINITY {
            false
        } else if !g.complete {
            // Only the first reply was read (a large set): empty or not.
            (g.elements == 0) != (w.elements == 0)
        } else if w.is_interval() {
            // nft may merge adjacent ranges or split one: only an emptied
            // or newly filled set is certain.
            (g.elements == 0) != (w.elements == 0)
        } else {
            g.elements != w.elements
        };
        if differs {
            out.push(format!(
                "set {f} {name} has {} elements, {} applied",
                g.elements, w.elements
            ));
        }
    }
    for name in got.sets.keys() {
        if !want.sets.contains_key(name) {
            out.push(format!("set {f} {name} was not applied"));
        }
    }
    if out.len() > MAX {
        let more = out.len() - MAX;
        out.truncate(MAX);
        out.push(format!("{more} more differences"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(chains: &[(&str, usize)], sets: &[(&str, usize, u32)]) -> TableSummary {
        TableSummary {
            chains: chains
                .iter()
                .map(|(n, r)| {
                    (
                        n.to_string(),
                        ChainSummary {
                            rules: *r,
                            base: false,
                        },
                    )
                })
                .collect(),
            sets: sets
                .iter()
                .map(|(n, e, f)| {
                    (
                        n.to_string(),
                        SetSummary {
                            elements: *e,
                            complete: true,
                            flags: *f,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn differences_are_named() {
        let want = summary(
            &[("services", 2), ("prerouting", 3)],
            &[
                ("service-ips", 10, set_flags::MAP),
                ("affinity", 0, set_flags::TIMEOUT | set_flags::EVAL),
                ("cidrs", 2, set_flags::INTERVAL),
            ],
        );
        let same = compare(Family::Ip, &want, &want, &[]);
        assert!(same.is_empty(), "{same:?}");
        // The kernel fills the affinity set and may store ranges
        // differently: neither is drift.
        // A large set read only in part: only emptiness counts.
        let mut partial = want.clone();
        if let Some(s) = partial.sets.get_mut("service-ips") {
            (s.elements, s.complete) = (3, false);
        }
        assert!(compare(Family::Ip, &want, &partial, &[]).is_empty());
        if let Some(s) = partial.sets.get_mut("service-ips") {
            s.elements = 0;
        }
        assert_eq!(
            compare(Family::Ip, &want, &partial, &[]),
            vec!["set ip service-ips has 0 elements, 10 applied"]
        );
        let busy = summary(
            &[("services", 2), ("prerouting", 3)],
            &[
                ("service-ips", 10, set_flags::MAP),
                ("affinity", 7, set_flags::TIMEOUT | set_flags::EVAL),
                ("cidrs", 3, set_flags::INTERVAL),
            ],
        );
        assert!(compare(Family::Ip, &want, &busy, &[]).is_empty());
        let got = summary(
            &[
                ("services", 2),
                ("prerouting", 2),
                ("old", 0),
                ("foreign", 0),
            ],
            &[
                ("service-ips", 9, set_flags::MAP),
                ("cidrs", 0, set_flags::INTERVAL),
            ],
        );
        assert_eq!(
            compare(Family::Ip, &want, &got, &["old"]),
            vec![
                "chain ip prerouting has 2 rules, 3 applied",
                "chain ip foreign was not applied",
                "set ip affinity is missing",
                "set ip cidrs has 0 elements, 2 applied",
                "set ip service-ips has 9 elements, 10 applied",
            ]
        );
    }
}
