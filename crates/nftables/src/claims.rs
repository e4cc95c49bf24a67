//! Who owns each key of the shared sets and maps.
//!
//! Several service ports can claim one key: two Services with the same
//! ExternalIP or LoadBalancer IP and port, an ExternalIP equal to another
//! Service's ClusterIP, a shared NodePort, or (legitimately) two ports of
//! one Service sharing its ClusterIP in `cluster-ips`, or two Services
//! backed by one pod sharing a `hairpin-connections` element. A full render
//! ([`crate::FamilyRules::render_full`], [`crate::FamilyRules::assemble`])
//! writes one element per key: the skeleton's, else that of the first
//! claimant in service-port order (the order of `FamilyRules::services`),
//! the first of its elements with that key.
//!
//! [`Claims`] is the index an incremental sync needs to write the same
//! element: for every key, which service ports claim it (and where in
//! their contribution). [`winner`] applies the full render's rule to a set
//! of claimants, so the incremental builder emits, for every key a change
//! touches, the element the full render would have before and after it:
//! the loser takes over when the winner goes, and keeps out while the
//! winner stays, whichever of them changes.
//!
//! Keys are indexed by a 64-bit fingerprint of (set, key), not by their
//! text (the backend keeps no element texts between syncs: it generates
//! a contribution again when it needs one): a 16-byte hash-table entry
//! per key, 20-40 bytes with the table's slack, plus two copies of each
//! service port's name (an `Arc` each). A fingerprint only locates
//! candidates: every candidate is checked against the key's text in its
//! contribution, so two keys with one fingerprint can never be confused.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use kproxy_graph::ServicePortName;

use crate::generate::{ElemRef, FastHash, ServiceRules};
use crate::ir::Table;

/// The fingerprint of a key of a set.
pub fn fingerprint(set: &str, key: &str) -> u64 {
    let mut h = FastHash.build_hasher();
    h.write(set.as_bytes());
    h.write(&[0xff]);
    h.write(key.as_bytes());
    h.finish()
}

/// One claim: a service port (by id) and the index of its first element
/// with the key's fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    id: u32,
    at: u32,
}

/// The claimants of every key of one family's shared sets and maps.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    ids: HashMap<ServicePortName, u32>,
    names: Vec<Option<ServicePortName>>,
    free: Vec<u32>,
    /// Keys with one claimant (nearly all of them).
    one: HashMap<u64, Claim, FastHash>,
    /// Keys with several claimants, in no particular order.
    many: HashMap<u64, Vec<Claim>, FastHash>,
}

/// The distinct fingerprints of a contribution, each with the index of its
/// first element.
fn firsts(sr: &ServiceRules) -> Vec<(u64, u32)> {
    let mut fps: Vec<(u64, u32)> = sr
        .elems
        .iter()
        .enumerate()
        .map(|(i, e)| (fingerprint(e.set, e.key()), i as u32))
        .collect();
    // Stable: the first element of each fingerprint stays first.
    fps.sort_by_key(|(fp, _)| *fp);
    fps.dedup_by_key(|(fp, _)| *fp);
    fps
}

impl Claims {
    /// The index of every contribution in `services`.
    pub fn build<'a>(
        services: impl IntoIterator<Item = (&'a ServicePortName, &'a ServiceRules)>,
    ) -> Claims {
        let mut c = Claims::default();
        for (name, sr) in services {
            c.add(name, sr);
        }
        c
    }

    /// Record `name`'s contribution (it must not be recorded already).
    pub fn add(&mut self, name: &ServicePortName, sr: &ServiceRules) {
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = Some(name.clone());
                id
            }
            None => {
                self.names.push(Some(name.clone()));
                (self.names.len() - 1) as u32
            }
        };
        self.ids.insert(name.clone(), id);
        for (fp, at) in firsts(sr) {
            let claim = Claim { id, at };
            if let Some(v) = self.many.get_mut(&fp) {
                v.push(claim);
            } else if let Some(other) = self.one.remove(&fp) {
                self.many.insert(fp, vec![other, claim]);
            } else {
                self.one.insert(fp, claim);
            }
        }
    }

    /// Forget `name`'s contribution `sr` (as recorded by [`Claims::add`]).
    pub fn remove(&mut self, name: &ServicePortName, sr: &ServiceRules) {
        let Some(id) = self.ids.remove(name) else {
            return;
        };
        for (fp, _) in firsts(sr) {
            if let Some(v) = self.many.get_mut(&fp) {
                v.retain(|c| c.id != id);
                if v.len() == 1 {
                    let last = v[0];
                    self.many.remove(&fp);
                    self.one.insert(fp, last);
                }
            } else if self.one.get(&fp).is_some_and(|c| c.id == id) {
                self.one.remove(&fp);
            }
        }
        self.names[id as usize] = None;
        self.free.push(id);
    }

    /// The recorded claimants of `key` in `set` (and, rarely, of another
    /// key with the same fingerprint): name and where to look first.
    pub fn claimants(&self, set: &str, key: &str) -> Vec<(&ServicePortName, usize)> {
        let fp = fingerprint(set, key);
        let one = self.one.get(&fp).map(std::slice::from_ref);
        let many = self.many.get(&fp).map(Vec::as_slice);
        one.or(many)
            .unwrap_or(&[])
            .iter()
            .filter_map(|c| {
                let name = self.names.get(c.id as usize)?.as_ref()?;
                Some((name, c.at as usize))
            })
            .collect()
    }

    /// How many keys have more than one claimant.
    pub fn shared_keys(&self) -> usize {
        self.many.len()
    }
}

/// The first element of `sr` with `key` in `set`, looked up at `hint` first.
pub fn element_of<'a>(
    sr: &'a ServiceRules,
    set: &str,
    key: &str,
    hint: usize,
) -> Option<ElemRef<'a>> {
    let matches = |e: &ElemRef<'_>| e.set == set && e.key() == key;
    match sr.elems.get(hint) {
        // The hint is the first element with this fingerprint, so when it
        // matches it is also the first with this key.
        Some(e) if matches(&e) => Some(e),
        _ => sr.elems.iter().find(matches),
    }
}

/// What the full render writes for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner<'a> {
    /// The skeleton's own element (the skeleton's diff writes it).
    Skeleton,
    /// This service port's element.
    Service(ElemRef<'a>),
    /// Nothing.
    None,
}

/// The full render's choice for `key` in `set` among `claimants` (service
/// port, contribution, where to look first; any order, non-claimants
/// allowed): the skeleton's element, else the first claimant's in
/// service-port order.
pub fn winner<'a>(
    skeleton: &Table,
    set: &str,
    key: &str,
    claimants: impl IntoIterator<Item = (&'a ServicePortName, &'a ServiceRules, usize)>,
) -> Winner<'a> {
    if skeleton
        .sets
        .get(set)
        .is_some_and(|s| s.elements.contains_key(key))
    {
        return Winner::Skeleton;
    }
    claimants
        .into_iter()
        .filter_map(|(name, sr, hint)| Some((name, element_of(sr, set, key, hint)?)))
        .min_by(|a, b| a.0.cmp(b.0))
        .map_or(Winner::None, |(_, e)| Winner::Service(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Elem;
    use crate::ir::Element;
    use kproxy_graph::Protocol;

    fn spn(name: &str) -> ServicePortName {
        ServicePortName::new("ns", name, "", Protocol::Tcp)
    }

    fn rules(elems: &[(&'static str, &str, &str)]) -> ServiceRules {
        ServiceRules {
            elems: elems
                .iter()
                .map(|(set, k, v)| {
                    Elem::new(
                        set,
                        k,
                        &Element {
                            value: Some(v.to_string()),
                            comment: None,
                        },
                    )
                })
                .collect(),
            ..ServiceRules::default()
        }
    }

    fn value<'a>(w: Winner<'a>) -> Option<&'a str> {
        match w {
            Winner::Service(e) => e.value(),
            _ => None,
        }
    }

    #[test]
    fn first_claimant_in_service_port_order_wins_and_losers_take_over() {
        let skel = Table::new(crate::ir::Family::Ip, "kproxy", None);
        let (a, b, c) = (spn("a"), spn("b"), spn("c"));
        let ra = rules(&[("service-ips", "1.2.3.4 . tcp . 80", "goto x-a")]);
        let rb = rules(&[
            ("service-ips", "9.9.9.9 . tcp . 80", "goto y-b"),
            ("service-ips", "1.2.3.4 . tcp . 80", "goto x-b"),
            ("service-ips", "1.2.3.4 . tcp . 80", "goto x-b2"),
        ]);
        let rc = rules(&[("service-ips", "1.2.3.4 . tcp . 80", "goto x-c")]);
        // Recorded in reverse order: the index does not depend on it.
        let mut claims = Claims::build([(&c, &rc), (&b, &rb), (&a, &ra)]);
        assert_eq!(claims.shared_keys(), 1);
        let all = [(&a, &ra), (&b, &rb), (&c, &rc)];
        let current = |claims: &Claims| {
            let cl: Vec<_> = claims
                .claimants("service-ips", "1.2.3.4 . tcp . 80")
                .into_iter()
                .map(|(n, hint)| {
                    let sr = all.iter().find(|(x, _)| *x == n).unwrap().1;
                    (n, sr, hint)
                })
                .collect();
            value(winner(&skel, "service-ips", "1.2.3.4 . tcp . 80", cl)).map(String::from)
        };
        assert_eq!(current(&claims).as_deref(), Some("goto x-a"));
        claims.remove(&a, &ra);
        // b's first element with the key, not its second.
        assert_eq!(current(&claims).as_deref(), Some("goto x-b"));
        claims.remove(&b, &rb);
        assert_eq!(current(&claims).as_deref(), Some("goto x-c"));
        assert_eq!(claims.shared_keys(), 0);
        claims.remove(&c, &rc);
        assert_eq!(current(&claims), None);
        // Ids are reused.
        claims.add(&b, &rb);
        assert_eq!(claims.names.len(), 3);
        assert_eq!(current(&claims).as_deref(), Some("goto x-b"));
    }

    #[test]
    fn the_skeleton_wins_over_services() {
        let mut skel = Table::new(crate::ir::Family::Ip, "kproxy", None);
        let mut set = crate::ir::Set {
            name: "nodeport-ips".into(),
            map: false,
            set_type: crate::ir::SetType::Type("ipv4_addr".into()),
            flags: vec![],
            timeout: None,
            size: None,
            comment: None,
            elements: Default::default(),
        };
        set.elements.insert("1.2.3.4".into(), Element::default());
        skel.sets.insert("nodeport-ips".into(), set);
        let a = spn("a");
        let ra = rules(&[("nodeport-ips", "1.2.3.4", "x")]);
        assert_eq!(
            winner(&skel, "nodeport-ips", "1.2.3.4", [(&a, &ra, 0)]),
            Winner::Skeleton
        );
        assert_eq!(
            value(winner(&skel, "service-ips", "1.2.3.4", [(&a, &ra, 0)])),
            None
        );
    }

    #[test]
    fn a_hint_that_misses_falls_back_to_a_scan() {
        let a = spn("a");
        let ra = rules(&[("m", "k", "1"), ("m", "k2", "2"), ("m", "k", "3")]);
        let skel = Table::new(crate::ir::Family::Ip, "kproxy", None);
        assert_eq!(value(winner(&skel, "m", "k", [(&a, &ra, 1)])), Some("1"));
    }
}
