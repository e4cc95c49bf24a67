//! Assembly: each service port's contribution ([`ServiceRules`]) and the
//! skeleton merged into one family's [`Table`] ([`FamilyRules`]), and the
//! hasher the render path uses.

use super::*;

/// What one service port contributes to its family's table: chains and
/// elements of the skeleton's sets and maps (no sets of its own).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct ServiceRules {
    /// Per-service chains (affinity, eTP=Local, firewall), sorted by name.
    pub chains: Vec<Chain>,
    /// Elements in shared sets and maps.
    pub elems: Vec<Elem>,
    /// The ids its endpoints have in the shared `affinity` set, sorted:
    /// when an endpoint goes away, the backend removes its entries.
    pub affinity_ids: Vec<(u32, u32)>,
    /// The shared load-balancing chains it uses.
    pub lb: BTreeSet<LbChain>,
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
            for e in &sr.elems {
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
        let st = self.structure();
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
        for c in st.chains.values() {
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
        for c in st.chains.values() {
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
        let mut buckets: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let total = own.len()
            + self
                .services
                .values()
                .map(|sr| sr.elems.len())
                .sum::<usize>();
        let mut seen: HashSet<(&str, &str), FastHash> =
            HashSet::with_capacity_and_hasher(total, FastHash);
        for e in own
            .iter()
            .chain(self.services.values().flat_map(|sr| sr.elems.iter()))
        {
            if st.sets.contains_key(e.set) && seen.insert((e.set, e.key())) {
                buckets.entry(e.set).or_default().push(e.rendered());
            }
        }
        drop(seen);
        for s in ordered {
            if let Some(b) = buckets.remove(s.name.as_str()) {
                w.rendered_elements(f, t, &s.name, b);
            }
        }
    }
}

/// The static name of a skeleton set.
pub(super) fn skeleton_set_name(name: &str) -> Option<&'static str> {
    [
        sets::CLUSTER_IPS,
        sets::NODEPORT_IPS,
        sets::SERVICE_CIDRS,
        sets::SERVICE_IPS,
        sets::SERVICE_NODEPORTS,
        sets::NO_ENDPOINT_SERVICES,
        sets::NO_ENDPOINT_NODEPORTS,
        sets::FIREWALL_IPS,
        sets::HAIRPIN,
        sets::GENERATION,
        sets::AFFINITY,
    ]
    .into_iter()
    .chain(sets::CLUSTER_EPS)
    .chain(sets::LOCAL_EPS)
    .chain(sets::NP_CLUSTER_EPS)
    .chain(sets::NP_LOCAL_EPS)
    .find(|s| *s == name)
}

/// A word-at-a-time multiplicative hash (the rotate-xor-multiply step of
/// rustc's FxHash, over 8 bytes at a time): the render path hashes
/// ~600,000 short keys at 50,000 services, where SipHash's DoS resistance
/// buys nothing (the keys are ours) and a byte-at-a-time hash (FNV) costs
/// a multiplication per byte.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FastHash;

impl std::hash::BuildHasher for FastHash {
    type Hasher = Fx;
    fn build_hasher(&self) -> Fx {
        Fx(0)
    }
}

/// The hasher of [`FastHash`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fx(u64);

/// FxHash's multiplier (from rustc-hash).
const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

impl Fx {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_K);
    }
}

impl std::hash::Hasher for Fx {
    #[inline]
    fn finish(&self) -> u64 {
        // The multiplication leaves the low bits weak; hashbrown takes
        // its bucket from the low bits and its tag from the top 7.
        self.0.rotate_left(26)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}
