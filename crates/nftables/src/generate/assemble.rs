//! Assembly: each service port's contribution ([`ServiceRules`]) and the
//! skeleton merged into one family's [`Table`] ([`FamilyRules`]), and the
//! hasher the render path uses.

use std::collections::HashMap;

use super::*;

/// What one service port contributes to its family's table: chains and
/// elements of the skeleton's sets and maps (no sets of its own).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct ServiceRules {
    /// Per-service chains (affinity, eTP=Local, firewall), sorted by name.
    pub chains: Vec<Chain>,
    /// Elements in shared sets and maps, packed.
    pub elems: Elems,
    /// The ids its endpoints have in the shared `affinity` set, sorted:
    /// when an endpoint goes away, the backend removes its entries.
    pub affinity_ids: Vec<(u32, u32)>,
    /// The shared load-balancing chains it uses, sorted (a vector: a
    /// service port uses one or two, where a set's node took 200 bytes).
    pub lb: Vec<LbChain>,
}

/// One family's rules: the skeleton plus each service port's contribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRules {
    /// Base and helper chains, shared sets and maps with the elements that
    /// do not belong to a service port.
    pub skeleton: Table,
    /// Per service port.
    pub services: BTreeMap<ServicePortName, ServiceRules>,
    /// The masquerade mark (shared load-balancing chains use it).
    pub mark: u32,
}

impl FamilyRules {
    /// The complete table. Where two service ports claim the same key
    /// (two Services with one ExternalIP and port, say) the first in
    /// service-port order wins, so the output is still loadable.
    pub fn assemble(&self) -> Table {
        let mut t = self.structure();
        for sr in self.services.values() {
            for e in sr.elems.iter() {
                if let Some(set) = t.sets.get_mut(e.set) {
                    set.elements
                        .entry(e.key().to_string())
                        .or_insert_with(|| e.element());
                }
            }
        }
        t
    }

    /// The table without the service ports' elements: every chain (base,
    /// helper, per-service, shared load-balancing) and every set and map
    /// (with the skeleton's own elements).
    pub fn structure(&self) -> Table {
        let mut t = self.skeleton.clone();
        let mut lbs = BTreeSet::new();
        for sr in self.services.values() {
            for c in &sr.chains {
                t.chains.entry(c.name.clone()).or_insert_with(|| c.clone());
            }
            lbs.extend(sr.lb.iter().copied());
        }
        let fam = Fam { f: t.fam() };
        for lb in lb_closure(&lbs) {
            let c = lb.chain(&fam, self.mark);
            t.chains.insert(c.name.clone(), c);
        }
        t
    }

    /// Write the statements that replace this family's table (`add table;
    /// delete table;` then everything) into `w`. Same content as
    /// [`crate::ir::Transaction::replace_table`] of [`FamilyRules::assemble`], with
    /// elements in service-port order, without building either.
    pub fn render_full(&self, w: &mut ChunkWriter) {
        // The chains of [`FamilyRules::structure`], borrowed rather than
        // cloned (all per-service chains and rules: 14 MB at 50,000
        // services, alive while the first transaction is compiled).
        let st = &self.skeleton;
        let mut lbs = BTreeSet::new();
        let mut chains: BTreeMap<&str, &Chain> =
            st.chains.iter().map(|(n, c)| (n.as_str(), c)).collect();
        for sr in self.services.values() {
            for c in &sr.chains {
                chains.entry(c.name.as_str()).or_insert(c);
            }
            lbs.extend(sr.lb.iter().copied());
        }
        let fam = Fam { f: st.fam() };
        let lb_chains: Vec<Chain> = lb_closure(&lbs)
            .into_iter()
            .map(|lb| lb.chain(&fam, self.mark))
            .collect();
        for c in &lb_chains {
            chains.insert(c.name.as_str(), c);
        }
        let (f, t) = (st.fam(), st.name.as_str());
        w.op(
            f,
            t,
            &Op::AddTable {
                comment: st.comment.clone(),
            },
        );
        w.op(f, t, &Op::DeleteTable);
        w.op(
            f,
            t,
            &Op::AddTable {
                comment: st.comment.clone(),
            },
        );
        for c in chains.values() {
            w.op(
                f,
                t,
                &Op::AddChain {
                    name: c.name.clone(),
                    hook: c.hook.clone(),
                },
            );
        }
        for s in st.sets.values() {
            w.op(f, t, &Op::AddSet(s.decl_only()));
        }
        for c in chains.values() {
            for r in &c.rules {
                w.op(
                    f,
                    t,
                    &Op::AddRule {
                        chain: c.name.clone(),
                        rule: r.clone(),
                    },
                );
            }
        }
        // Data maps and sets first, verdict maps last: when the load is
        // split, a service is routed only once its endpoints are in place.
        let is_verdict =
            |s: &Set| matches!(&s.set_type, SetType::Type(ty) if ty.ends_with(": verdict"));
        let ordered = st
            .sets
            .values()
            .filter(|s| !is_verdict(s))
            .chain(st.sets.values().filter(|s| is_verdict(s)));
        // One pass over the contributions, bucketed by set; the first
        // claim of a key wins (the same rule as `assemble`).
        let mut own: Vec<Elem> = Vec::new();
        for (name, set) in &st.sets {
            for (k, e) in &set.elements {
                // Skeleton sets are named by `sets` constants; find the
                // static name so the element can be bucketed with the rest.
                if let Some(static_name) = skeleton_set_name(name) {
                    own.push(Elem::new(static_name, k, e));
                }
            }
        }
        let all: Vec<ElemRef<'_>> = own
            .iter()
            .map(Elem::as_ref)
            .chain(self.services.values().flat_map(|sr| sr.elems.iter()))
            .filter(|e| st.sets.contains_key(e.set))
            .collect();
        let keep = first_claims(&all);
        let mut buckets: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for i in keep {
            buckets.entry(all[i as usize].set).or_default().push(i);
        }
        for s in ordered {
            if let Some(b) = buckets.remove(s.name.as_str()) {
                let elems = b.into_iter().map(|i| all[i as usize].rendered());
                w.rendered_elements(f, t, &s.name, elems);
            }
        }
    }
}

/// The indexes of the elements of `all` that are the first with their
/// (set, key), in order. Keys are told apart by a 32-bit fingerprint (an
/// 8-byte table entry a key, where two string slices took 32 bytes and
/// dominated a large full sync's memory); a fingerprint seen before is
/// checked against that element's text, and the rare different key with
/// the same fingerprint is looked up in an exact set, so two keys are never
/// confused.
fn first_claims(all: &[ElemRef<'_>]) -> Vec<u32> {
    use std::collections::hash_map::Entry;
    let mut first: HashMap<u32, u32, FastHash> =
        HashMap::with_capacity_and_hasher(all.len(), FastHash);
    let mut others: HashSet<(&str, &str), FastHash> = HashSet::default();
    let mut keep = Vec::with_capacity(all.len());
    for (i, e) in all.iter().enumerate() {
        let fp = crate::claims::fingerprint(e.set, e.key()) as u32;
        let new = match first.entry(fp) {
            Entry::Vacant(v) => {
                v.insert(i as u32);
                true
            }
            Entry::Occupied(o) => {
                let f = all[*o.get() as usize];
                !(f.set == e.set && f.key() == e.key()) && others.insert((e.set, e.key()))
            }
        };
        if new {
            keep.push(i as u32);
        }
    }
    keep
}

/// The static name of a skeleton set.
pub(super) fn skeleton_set_name(name: &str) -> Option<&'static str> {
    super::layout::STATIC_SETS.into_iter().find(|s| *s == name)
}

/// The hasher of the render path's tables and key fingerprints: rustc's
/// FxHash. The render path hashes ~600,000 short keys at 50,000 services,
/// where SipHash's DoS resistance buys nothing (the keys are ours) and a
/// byte-at-a-time hash (FNV) costs a multiplication per byte.
pub(crate) use rustc_hash::FxBuildHasher as FastHash;

#[cfg(test)]
mod tests {
    use super::*;

    /// Two different keys whose 32-bit fingerprints are equal, found by
    /// counting up (about 80,000 keys by the birthday bound).
    fn colliding_keys() -> (String, String) {
        let mut seen: HashMap<u32, String> = HashMap::new();
        for i in 0u32.. {
            let key = format!("10.{}.{}.{} . tcp . 80", i >> 16, (i >> 8) & 255, i & 255);
            let fp = crate::claims::fingerprint(sets::SERVICE_IPS, &key) as u32;
            if let Some(other) = seen.insert(fp, key.clone()) {
                return (other, key);
            }
        }
        unreachable!()
    }

    #[test]
    fn first_claims_keeps_the_first_of_each_key_even_when_fingerprints_collide() {
        let (a, b) = colliding_keys();
        assert_ne!(a, b);
        let el = |set, k: &str| Elem::new(set, k, &Element::default());
        let elems = [
            el(sets::SERVICE_IPS, &a),
            el(sets::SERVICE_IPS, &b),
            el(sets::SERVICE_IPS, &a),
            el(sets::SERVICE_IPS, &b),
            el(sets::CLUSTER_IPS, &a),
            el(sets::SERVICE_IPS, "10.0.0.1 . tcp . 80"),
            el(sets::CLUSTER_IPS, &a),
        ];
        let all: Vec<ElemRef<'_>> = elems.iter().map(Elem::as_ref).collect();
        assert_eq!(first_claims(&all), [0, 1, 4, 5]);
    }

    #[test]
    fn elements_keep_key_comment_and_value() {
        assert!(std::mem::size_of::<Elem>() <= 40);
        let long = "c".repeat(crate::names::COMMENT_MAX);
        for (key, value, comment) in [
            ("10.0.0.1 . tcp . 80", None, None),
            ("10.0.0.1 . tcp . 80", Some("goto cluster-2"), None),
            ("10.0.0.1 . tcp . 80", None, Some("ns/web:http")),
            (
                "fd00::1 . udp . 53 . 0",
                Some("fd00::2 . 53"),
                Some(long.as_str()),
            ),
            ("", Some(""), Some("")),
        ] {
            let el = Element {
                value: value.map(String::from),
                comment: comment.map(String::from),
            };
            let e = Elem::new(sets::SERVICE_IPS, key, &el);
            assert_eq!(e.key(), key);
            assert_eq!(e.value(), value);
            assert_eq!(e.comment(), comment);
            assert_eq!(e.element(), el);
            let mut text = key.to_string();
            if let Some(c) = comment {
                text.push_str(&format!(" comment \"{c}\""));
            }
            if let Some(v) = value {
                text.push_str(&format!(" : {v}"));
            }
            assert_eq!(e.rendered(), text);
        }
    }

    #[test]
    fn packed_elements_read_back_as_pushed() {
        let long = "c".repeat(crate::names::COMMENT_MAX);
        let cases: Vec<(&'static str, &str, Element)> = vec![
            (sets::SERVICE_IPS, "10.0.0.1 . tcp . 80", Element::default()),
            (
                sets::CLUSTER_EPS[1],
                "10.0.0.1 . udp . 53 . 0",
                Element {
                    value: Some("10.1.0.1 . 53".into()),
                    comment: None,
                },
            ),
            // A set name that is none of the shared sets'.
            (
                "test-only-set",
                "fd00::1 . udp . 53 . 0",
                Element {
                    value: Some("fd00::2 . 53".into()),
                    comment: Some(long.clone()),
                },
            ),
            (
                sets::AFFINITY,
                "",
                Element {
                    value: Some(String::new()),
                    comment: Some(String::new()),
                },
            ),
            (
                sets::SERVICE_NODEPORTS,
                "tcp . 3051",
                Element {
                    value: Some("goto x".into()),
                    comment: Some("ns/web:http".into()),
                },
            ),
        ];
        let mut packed = Elems::new();
        for (set, key, el) in &cases {
            packed.push(set, key, el);
        }
        packed.shrink_to_fit();
        assert_eq!(packed.len(), cases.len());
        for (i, (set, key, el)) in cases.iter().enumerate() {
            let one = Elem::new(set, key, el);
            let e = packed.get(i).unwrap();
            assert_eq!(e, one.as_ref());
            assert_eq!((e.set, e.key(), e.element()), (*set, *key, el.clone()));
            assert_eq!(e.rendered(), one.rendered());
        }
        assert!(packed.get(cases.len()).is_none());
        let from: Elems = cases.iter().map(|(s, k, e)| Elem::new(s, k, e)).collect();
        assert_eq!(from, packed);
    }
}
