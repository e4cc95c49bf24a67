//! The drift check: the kernel's tables, read over netlink as counts,
//! against what the last sync applied.

use kproxy_graph::ApplyError;

use crate::drift;
use crate::generate::{TABLE, sets};
use kproxy_netlink::{self as netlink, NfSocket};

use super::{NftablesBackend, netlink_err};

impl NftablesBackend {
    /// What differs between the kernel and the last sync, read through
    /// netlink as counts ([`crate::drift`]): `None` when nothing does.
    /// Nothing applied (no sync yet, or the last one failed) is reported
    /// as a difference too: there is nothing to compare with.
    pub(super) fn drift(&mut self) -> Result<Option<String>, ApplyError> {
        let Some(state) = self.state.as_ref() else {
            return Ok(Some("nothing applied".into()));
        };
        if self
            .expected
            .as_ref()
            .is_none_or(|(g, _)| *g != self.generation)
        {
            let mut summaries = Vec::new();
            for fs in state {
                // The contributions are generated again one at a time.
                let mut failed = None;
                let services = fs.contributions().map_while(|r| match r {
                    Ok(sr) => Some(sr),
                    Err(e) => {
                        failed = Some(e);
                        None
                    }
                });
                let mut s = drift::expected(&fs.skeleton, fs.mark, services, fs.lb_refs.keys());
                if let Some(e) = failed {
                    return Err(e);
                }
                // The one element each sync writes.
                if let Some(g) = s.sets.get_mut(sets::GENERATION) {
                    g.elements = 1;
                }
                summaries.push((fs.family, s));
            }
            self.expected = Some((self.generation, summaries));
        }
        let sock = NfSocket::kept(&mut self.sock, self.nft.netns()).map_err(netlink_err)?;
        let Some((_, expected)) = self.expected.as_ref() else {
            return Ok(None);
        };
        for (f, want) in expected {
            let exact = |set: &str| {
                want.sets
                    .get(set)
                    .is_some_and(|s| s.elements <= self.exact_limit)
            };
            let Some(got) =
                netlink::read_table(sock, (*f).into(), TABLE, &exact).map_err(netlink_err)?
            else {
                return Ok(Some(format!("table {} {TABLE} is gone", f.as_str())));
            };
            let flushed: Vec<&str> = self
                .stale
                .iter()
                .filter(|(sf, _)| sf == f)
                .map(|(_, c)| c.as_str())
                .collect();
            let diffs = drift::compare(*f, want, &got, &flushed);
            if !diffs.is_empty() {
                return Ok(Some(diffs.join("; ")));
            }
            // Same counts: still the generation kproxy wrote last (another
            // writer's reload would show another one).
            let keys = netlink::set_keys(sock, (*f).into(), TABLE, sets::GENERATION)
                .map_err(netlink_err)?;
            let want_key = self.generation.to_ne_bytes();
            if keys.len() != 1 || keys[0] != want_key {
                return Ok(Some(format!(
                    "set {} {} holds another generation than {:#x}",
                    f.as_str(),
                    sets::GENERATION,
                    self.generation
                )));
            }
        }
        Ok(None)
    }
}
