//! [`ByName`]: shared objects found by their namespace and name, without a
//! copy of either.
//!
//! A `HashMap<(String, String), Arc<T>>` holds each object's namespace and
//! name a second time, as its key: at 50,000 Services, with a map for the
//! Services and one for the EndpointSlices in the API source and another
//! in [`crate::IncrementalGraph`], the keys took about 5 MB a map. A
//! [`ByName`] reads the key from the object itself.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

/// Shared objects found by the `(namespace, name)` that `key` reads from
/// each; one object per key.
pub struct ByName<T> {
    table: HashTable<Arc<T>>,
    hasher: RandomState,
    key: fn(&T) -> (&str, &str),
}

impl<T> std::fmt::Debug for ByName<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByName")
            .field("len", &self.table.len())
            .finish_non_exhaustive()
    }
}

impl<T> Clone for ByName<T> {
    fn clone(&self) -> Self {
        ByName {
            table: self.table.clone(),
            hasher: self.hasher.clone(),
            key: self.key,
        }
    }
}

impl<T> ByName<T> {
    /// An empty map whose objects are found by `key`.
    pub fn new(key: fn(&T) -> (&str, &str)) -> Self {
        ByName {
            table: HashTable::new(),
            hasher: RandomState::new(),
            key,
        }
    }

    fn hash(hasher: &RandomState, key: (&str, &str)) -> u64 {
        hasher.hash_one(key)
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The object named `name` in `namespace`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Arc<T>> {
        let h = Self::hash(&self.hasher, (namespace, name));
        self.table.find(h, |v| (self.key)(v) == (namespace, name))
    }

    /// Add `value`, returning the object it replaces (the one with its
    /// key).
    pub fn insert(&mut self, value: Arc<T>) -> Option<Arc<T>> {
        let key = self.key;
        let h = Self::hash(&self.hasher, key(&value));
        let hasher = &self.hasher;
        match self
            .table
            .entry(h, |v| key(v) == key(&value), |v| Self::hash(hasher, key(v)))
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(e.get_mut(), value))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(value);
                None
            }
        }
    }

    /// Remove the object named `name` in `namespace`.
    pub fn remove(&mut self, namespace: &str, name: &str) -> Option<Arc<T>> {
        let key = self.key;
        let h = Self::hash(&self.hasher, (namespace, name));
        match self.table.find_entry(h, |v| key(v) == (namespace, name)) {
            Ok(e) => Some(e.remove().0),
            Err(_) => None,
        }
    }

    /// The objects, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<T>> {
        self.table.iter()
    }

    /// The objects with their keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = ((&str, &str), &Arc<T>)> {
        let key = self.key;
        self.table.iter().map(move |v| (key(v), v))
    }

    /// Keep only the objects `f` accepts.
    pub fn retain(&mut self, mut f: impl FnMut(&Arc<T>) -> bool) {
        self.table.retain(|v| f(v));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(v: &(String, String, u32)) -> (&str, &str) {
        (&v.0, &v.1)
    }

    fn obj(ns: &str, name: &str, n: u32) -> Arc<(String, String, u32)> {
        Arc::new((ns.into(), name.into(), n))
    }

    #[test]
    fn objects_are_found_replaced_and_removed_by_their_key() {
        let mut m = ByName::new(key);
        assert!(m.is_empty());
        for i in 0..1000 {
            assert!(
                m.insert(obj(&format!("ns{}", i % 7), &format!("o{i}"), i))
                    .is_none()
            );
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.get("ns3", "o10").unwrap().2, 10);
        assert!(m.get("ns4", "o10").is_none());
        assert!(m.get("ns3o", "10").is_none());
        let old = m.insert(obj("ns3", "o10", 5000)).unwrap();
        assert_eq!(old.2, 10);
        assert_eq!(m.get("ns3", "o10").unwrap().2, 5000);
        assert_eq!(m.len(), 1000);
        assert_eq!(m.remove("ns3", "o10").unwrap().2, 5000);
        assert!(m.remove("ns3", "o10").is_none());
        assert_eq!(m.len(), 999);
        m.retain(|v| v.2 % 2 == 0);
        assert_eq!(m.len(), 499);
        assert!(
            m.iter()
                .all(|((ns, name), v)| ns == v.0 && name == v.1 && v.2 % 2 == 0)
        );
        assert_eq!(m.values().count(), 499);
    }
}
