//! Session affinity entries: carried over a table replacement, purged
//! for endpoints that go away.

use std::collections::BTreeSet;

use kproxy_graph::ApplyError;

use crate::generate::{FamilyRules, TABLE, sets};
use crate::ir::{Family, Transaction};
use kproxy_netlink::{self as netlink, NfSocket};

use super::{NftablesBackend, TransportKind, netlink_err};

impl NftablesBackend {
    /// Before the tables are replaced: the affinity entries in the kernel
    /// whose endpoint is still in `fams`, as keys with their remaining
    /// time (`client . hi . lo timeout Ns`), so a restart or a resync
    /// after drift keeps every client on its endpoint as kube-proxy does.
    /// Nothing when there is no table yet.
    pub(super) fn carried_affinity(
        &self,
        fams: &[(Family, FamilyRules)],
    ) -> Vec<(Family, Vec<String>)> {
        let mut out = Vec::new();
        for (f, fr) in fams {
            let ids: BTreeSet<(u32, u32)> = fr
                .services
                .values()
                .flat_map(|sr| sr.affinity_ids.iter().copied())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let Ok(listing) = self.affinity_read(*f) else {
                continue;
            };
            let keys: Vec<String> = listing
                .into_iter()
                .filter(|e| ids.contains(&e.id))
                .filter_map(|e| match e.expires {
                    Some(s) if s > 0 => Some(format!("{} timeout {s}s", e.key())),
                    _ => None,
                })
                .collect();
            if !keys.is_empty() {
                out.push((*f, keys));
            }
        }
        out
    }

    /// Remove the `affinity` entries whose endpoint id is in `ids`; returns
    /// how many. The kernel adds and expires entries on its own, so the
    /// listing can be stale by the time the delete arrives (an entry
    /// expired in between fails the delete): one retry with a fresh
    /// listing.
    pub(super) fn purge_affinity(
        &mut self,
        family: Family,
        ids: &BTreeSet<(u32, u32)>,
    ) -> Result<usize, ApplyError> {
        let mut last = None;
        for _ in 0..2 {
            let keys: Vec<String> = self
                .affinity_read(family)?
                .into_iter()
                .filter(|e| ids.contains(&e.id))
                .map(|e| e.key())
                .collect();
            if keys.is_empty() {
                return Ok(0);
            }
            let mut tx = Transaction::new();
            tx.delete_elements(family, TABLE, sets::AFFINITY, keys.iter().cloned());
            match self.transport.send(&tx) {
                Ok(_) => return Ok(keys.len()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ApplyError::Other {
            backend: "nftables",
            message: "affinity purge failed".into(),
        }))
    }
}

impl NftablesBackend {
    /// The `affinity` set's entries: over netlink with the netlink
    /// transport (no `nft` needed), else from `nft -j list set`.
    fn affinity_read(&self, family: Family) -> Result<Vec<AffinityEntry>, ApplyError> {
        if self.transport.kind() == TransportKind::Exec {
            let json = self.nft.run(
                &["-j", "list", "set", family.as_str(), TABLE, sets::AFFINITY],
                None,
            )?;
            return Ok(affinity_listing(&json));
        }
        let mut sock = NfSocket::open_in(self.nft.netns()).map_err(netlink_err)?;
        let elems = netlink::set_elements_expiring(&mut sock, family.into(), TABLE, sets::AFFINITY)
            .map_err(netlink_err)?;
        let addr_len = match family {
            Family::Ip => 4,
            Family::Ip6 => 16,
        };
        Ok(elems
            .into_iter()
            .filter_map(|(k, exp)| {
                if k.len() != addr_len + 8 {
                    return None;
                }
                let client = match family {
                    Family::Ip => {
                        std::net::IpAddr::from(<[u8; 4]>::try_from(&k[..4]).ok()?).to_string()
                    }
                    Family::Ip6 => {
                        std::net::IpAddr::from(<[u8; 16]>::try_from(&k[..16]).ok()?).to_string()
                    }
                };
                let word = |at: usize| {
                    <[u8; 4]>::try_from(&k[at..at + 4])
                        .ok()
                        .map(u32::from_ne_bytes)
                };
                Some(AffinityEntry {
                    client,
                    id: (word(addr_len)?, word(addr_len + 4)?),
                    expires: exp.map(|ms| ms / 1000),
                })
            })
            .collect())
    }
}

/// One entry of the `affinity` set as `nft -j list set` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AffinityEntry {
    client: String,
    id: (u32, u32),
    /// Seconds left before it expires.
    expires: Option<u64>,
}

impl AffinityEntry {
    pub(super) fn key(&self) -> String {
        format!("{} . {} . {}", self.client, self.id.0, self.id.1)
    }
}

/// The entries of an `nft -j list set` of the affinity set (nothing on
/// output it cannot read: the entries only ever matter as a courtesy).
fn affinity_listing(json: &str) -> Vec<AffinityEntry> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let objects = v.get("nftables").and_then(|n| n.as_array());
    for obj in objects.into_iter().flatten() {
        let Some(elems) = obj.pointer("/set/elem").and_then(|e| e.as_array()) else {
            continue;
        };
        for e in elems {
            // With timeouts an element is `{"elem": {"val": ...}}`.
            let val = e.pointer("/elem/val").unwrap_or(e);
            let Some([client, hi, lo]) = val
                .get("concat")
                .and_then(|c| c.as_array())
                .map(|c| c.as_slice())
            else {
                continue;
            };
            let (Some(client), Some(hi), Some(lo)) = (client.as_str(), hi.as_u64(), lo.as_u64())
            else {
                continue;
            };
            let (Ok(hi), Ok(lo)) = (u32::try_from(hi), u32::try_from(lo)) else {
                continue;
            };
            out.push(AffinityEntry {
                client: client.to_string(),
                id: (hi, lo),
                expires: e.pointer("/elem/expires").and_then(|x| x.as_u64()),
            });
        }
    }
    out
}

/// The keys (`client . hi . lo`) of the listed entries whose id is in `ids`.
#[cfg(test)]
fn affinity_entries(json: &str, ids: &BTreeSet<(u32, u32)>) -> Vec<String> {
    affinity_listing(json)
        .into_iter()
        .filter(|e| ids.contains(&e.id))
        .map(|e| e.key())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_entries_of_removed_endpoints() {
        // `nft -j list set ip kproxy affinity` (nft 1.0.6), IPv4 and IPv6.
        let out = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "ip", "name": "affinity", "table": "kproxy", "type": ["ipv4_addr", "integer", "integer"], "flags": ["timeout"], "elem": [{"elem": {"val": {"concat": ["10.0.0.2", 5, 6]}, "timeout": 3600, "expires": 3599}}, {"elem": {"val": {"concat": ["10.0.0.3", 4000000000, 7]}, "timeout": 3600, "expires": 3599}}, {"elem": {"val": {"concat": ["fd00::2", 5, 6]}, "timeout": 60}}]}}]}"#;
        let ids: BTreeSet<(u32, u32)> = [(5, 6), (9, 9)].into();
        assert_eq!(
            affinity_entries(out, &ids),
            vec!["10.0.0.2 . 5 . 6", "fd00::2 . 5 . 6"]
        );
        let ids: BTreeSet<(u32, u32)> = [(4_000_000_000, 7)].into();
        assert_eq!(
            affinity_entries(out, &ids),
            vec!["10.0.0.3 . 4000000000 . 7"]
        );
        assert!(affinity_entries("not json", &ids).is_empty());
        assert!(affinity_entries(r#"{"nftables": []}"#, &ids).is_empty());
    }
}
