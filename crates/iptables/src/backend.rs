//! [`IptablesBackend`]: generator, transport and the state between syncs,
//! behind the daemon's [`Backend`] trait, for both flavours.

use std::collections::BTreeMap;

use kproxy_exec::Runner;
use kproxy_graph::{
    ApplyError, Backend, BackendKind, ChangeSet, GenError, IpFamily, Render, ServiceGraph,
    SyncStats, TableRules, Transport,
};
use kproxy_netlink::{self as netlink, NfSocket};

use crate::drift::{self, ChainState};
use crate::flavour::Flavour;
use crate::generate::{GenOptions, generate, generate_reusing};
use crate::ir::{Ruleset, TableName};
use crate::parse::parse_save_lenient;
use crate::plan::{plan_full, plan_partial};
use crate::render::{BatchLimits, is_noop, render_batches, render_restore};
use crate::transport::{FamilyPayload, IptablesTransport};

/// The [`Backend`] shared by both flavours: generator, transport and the
/// state between syncs.
#[derive(Debug)]
pub struct IptablesBackend {
    transport: IptablesTransport,
    options: GenOptions,
    last: Option<Ruleset>,
    batch_limits: BatchLimits,
    need_full: bool,
    /// iptables-nft: the netlink socket the drift check reads through
    /// (opened on first use, dropped after an error).
    sock: Option<NfSocket>,
    /// The nfacct counters were created (or found missing support) before
    /// the first sync ([`GenOptions::nfacct`]).
    nfacct_checked: bool,
    /// The iptables version was asked whether it takes `--random-fully`
    /// before the first sync ([`GenOptions::random_fully`]).
    random_fully_checked: bool,
}

impl IptablesBackend {
    /// A backend for `flavour` programming the host.
    pub fn new(flavour: Flavour) -> Self {
        Self::with_runner(flavour, Runner::host())
    }

    /// A backend whose every command runs in network namespace `name`.
    pub fn in_netns(flavour: Flavour, name: &str) -> Self {
        Self::with_runner(flavour, Runner::in_netns(name))
    }

    /// A backend with an explicit runner.
    pub fn with_runner(flavour: Flavour, runner: Runner) -> Self {
        IptablesBackend {
            transport: IptablesTransport { flavour, runner },
            options: GenOptions::default(),
            last: None,
            batch_limits: BatchLimits::default(),
            need_full: true,
            sock: None,
            nfacct_checked: false,
            random_fully_checked: false,
        }
    }

    /// Generate with `options` (what the node's configuration decides).
    pub fn with_options(mut self, options: GenOptions) -> Self {
        self.options = options;
        self
    }

    /// Change how iptables-nft syncs that write many chains are split
    /// into several restores (see [`render_batches`]).
    pub fn set_batch_limits(&mut self, limits: BatchLimits) {
        self.batch_limits = limits;
    }

    /// The flavour.
    pub fn flavour(&self) -> Flavour {
        self.transport.flavour
    }

    /// The transport (for dumps and syntax checks).
    pub fn transport(&self) -> &IptablesTransport {
        &self.transport
    }

    /// The IR last applied successfully.
    pub fn last_ruleset(&self) -> Option<&Ruleset> {
        self.last.as_ref()
    }

    /// The next sync will be full (startup, after a failure or drift).
    /// The periodic full sync (kube-proxy's `FullSyncPeriod`) is the
    /// caller's: the daemon's reconciler passes no change set when
    /// `--full-sync-period` is due.
    pub fn needs_full_sync(&self) -> bool {
        self.need_full || self.last.is_none()
    }

    /// Whether the node's iptables takes `--random-fully`: like kube-proxy,
    /// no when its version is older than 1.6.2 or cannot be read.
    fn detect_random_fully(&self) -> bool {
        let flavour = self.transport.flavour;
        match flavour.has_random_fully(&self.transport.runner) {
            Some(yes) => {
                if !yes {
                    tracing::info!(
                        backend = %flavour.kind(),
                        "iptables older than 1.6.2: MASQUERADE without --random-fully"
                    );
                }
                yes
            }
            None => {
                tracing::warn!(
                    backend = %flavour.kind(),
                    "could not read the iptables version: MASQUERADE without --random-fully"
                );
                false
            }
        }
    }

    fn sync_inner(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        if self.options.nfacct && !self.nfacct_checked {
            self.nfacct_checked = true;
            self.options.nfacct = crate::nfacct::ensure_counters(self.transport.runner.netns());
        }
        if self.options.random_fully && !self.random_fully_checked {
            self.random_fully_checked = true;
            self.options.random_fully = self.detect_random_fully();
        }
        let full = self.needs_full_sync() || changes.is_none_or(|c| c.needs_full_sync);
        // A partial sync moves the unchanged services' chains out of the
        // previous ruleset instead of generating them again.
        let (rs, reused) = match (full, self.last.as_mut(), changes) {
            (false, Some(prev), Some(c)) => (generate_reusing(graph, &self.options, prev, c), true),
            _ => (generate(graph, &self.options), false),
        };
        // Pessimistic until every family is in: a failure half-way leaves
        // the next sync full.
        self.need_full = true;
        match self.apply_ruleset(graph, &rs, full, changes) {
            Ok(stats) => {
                self.last = Some(rs);
                self.need_full = false;
                Ok(stats)
            }
            Err(e) => {
                // The previous ruleset lent its chains to `rs`: it no
                // longer says what the kernel holds (the next sync is full
                // and reads the kernel instead).
                if reused {
                    self.last = None;
                }
                Err(e)
            }
        }
    }

    fn apply_ruleset(
        &mut self,
        graph: &ServiceGraph,
        rs: &Ruleset,
        full: bool,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        let mut stats = SyncStats {
            full,
            ..SyncStats::default()
        };
        for fr in &rs.families {
            let prev = self.last.as_ref().and_then(|l| l.family(fr.family));
            let plan = match (full, prev, changes) {
                (false, Some(prev), Some(c)) => plan_partial(prev, fr, &c.family(fr.family)),
                _ => {
                    let text = self.transport.save(fr.family)?;
                    let kernel = parse_save_lenient(&text).map_err(|e| ApplyError::Other {
                        backend: self.transport.backend(),
                        message: e.to_string(),
                    })?;
                    plan_full(fr, &kernel)
                }
            };
            let chains_written: usize = fr.tables.iter().map(|t| plan.rewritten_count(t)).sum();
            let restores = if self.transport.flavour == Flavour::Nft
                && chains_written > self.batch_limits.names
            {
                render_batches(fr, &plan, self.batch_limits)
            } else {
                vec![render_restore(fr, &plan)]
            };
            for (text, written) in restores {
                tracing::trace!(family = %fr.family, full, bytes = text.len(), "iptables-restore input");
                // Nothing to change: legacy would still read (and with a
                // chain line, replace) the whole table.
                if is_noop(&text) {
                    continue;
                }
                let bytes = text.len();
                for (table, n) in rules_per_table(&text) {
                    match stats
                        .rules_written_by_table
                        .iter_mut()
                        .find(|(f, t, _)| *f == fr.family && *t == table)
                    {
                        Some((_, _, sum)) => *sum += n,
                        None => stats.rules_written_by_table.push((fr.family, table, n)),
                    }
                }
                self.transport.apply(&FamilyPayload {
                    family: fr.family,
                    text,
                })?;
                stats.rules_written += written;
                stats.bytes_written += bytes;
            }
            stats.rules_total += fr.rule_count();
        }
        for fg in graph.families.values() {
            stats.services += fg.services.len();
            stats.endpoints += fg.total_endpoints();
        }
        Ok(stats)
    }
}

/// The rules (`-A`, `-I`, `-R` lines) of a restore input, per table.
fn rules_per_table(text: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            out.push((t.trim().to_string(), 0));
        } else if (line.starts_with("-A ") || line.starts_with("-I ") || line.starts_with("-R "))
            && let Some((_, n)) = out.last_mut()
        {
            *n += 1;
        }
    }
    out
}

impl IptablesBackend {
    /// What differs between the kernel and the last sync ([`drift`]):
    /// `None` when nothing does; "nothing applied" before the first
    /// successful sync.
    fn drift(&mut self) -> Result<Option<String>, ApplyError> {
        let Some(last) = &self.last else {
            return Ok(Some("nothing applied".into()));
        };
        let wanted: Vec<(IpFamily, Vec<drift::TableExpect>)> = last
            .families
            .iter()
            .map(|fr| (fr.family, drift::expected(fr)))
            .collect();
        let mut diffs = Vec::new();
        for (family, tables) in &wanted {
            for want in tables {
                let got = if self.transport.flavour == Flavour::Legacy {
                    let chains: Vec<&str> = want.chains_to_read().collect();
                    self.transport.save_chains(*family, want.table, &chains)?
                } else {
                    let mut got = BTreeMap::new();
                    for chain in want.chains_to_read() {
                        let state = self.read_chain(*family, want.table, chain)?;
                        got.insert(chain.to_string(), state);
                    }
                    got
                };
                diffs.extend(drift::compare(*family, want, &got));
            }
        }
        Ok((!diffs.is_empty()).then(|| diffs.join("; ")))
    }

    /// One chain of iptables-nft as the kernel holds it: its tables are
    /// nf_tables tables, read over netlink (one message per rule of the
    /// chain).
    fn read_chain(
        &mut self,
        family: IpFamily,
        table: TableName,
        chain: &str,
    ) -> Result<Option<ChainState>, ApplyError> {
        let backend = self.transport.backend();
        let err = |e: netlink::Error| ApplyError::Other {
            backend,
            message: format!("reading {} {chain}: {e}", table.as_str()),
        };
        let sock = NfSocket::kept(&mut self.sock, self.transport.runner.netns()).map_err(err)?;
        let nf = match family {
            IpFamily::V4 => netlink::Family::Ip,
            IpFamily::V6 => netlink::Family::Ip6,
        };
        Ok(netlink::read_chain(sock, nf, table.as_str(), chain)
            .map_err(err)?
            .map(|c| ChainState {
                rules: c.rules,
                jumps: c.jumps,
            }))
    }
}

impl Backend for IptablesBackend {
    fn kind(&self) -> BackendKind {
        self.transport.flavour.kind()
    }

    fn render_full(&self, graph: &ServiceGraph) -> Result<String, GenError> {
        Ok(generate(graph, &self.options).render())
    }

    fn sync(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        self.sync_inner(graph, changes)
    }

    fn check(&mut self) -> Result<bool, ApplyError> {
        match self.drift() {
            Ok(None) => Ok(true),
            Ok(Some(what)) => {
                tracing::warn!(backend = %self.kind(), differences = %what,
                    "the kernel's kproxy rules differ from the last sync");
                self.need_full = true;
                Ok(false)
            }
            Err(e) => {
                self.sock = None;
                Err(e)
            }
        }
    }

    fn last_applied(&self) -> Option<String> {
        // Rendered on demand: at 50,000 services the text is ~170 MB and
        // most syncs never need it.
        self.last.as_ref().map(Render::render)
    }

    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
        self.last = None;
        self.need_full = true;
        self.transport.cleanup()
    }

    fn dump_live(&mut self, family: IpFamily) -> Result<Option<String>, ApplyError> {
        let program = self.transport.flavour.save_binary(family);
        let header = match family {
            IpFamily::V4 => "# IPv4",
            IpFamily::V6 => "# IPv6",
        };
        let text = self.transport.save(family)?;
        Ok(Some(format!("{header}: {program}\n{text}")))
    }

    fn rules_per_table(&self) -> Option<Vec<TableRules>> {
        // Counted in the rendered full-sync input (`-A` and `-I` lines), so
        // a table kproxy owns but left empty counts 0.
        let mut out = Vec::new();
        for fr in self.last.iter().flat_map(|l| &l.families) {
            for (table, rules) in rules_per_table(&fr.render_full()) {
                out.push(TableRules {
                    family: fr.family,
                    table,
                    rules,
                });
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_counted_per_table() {
        let text = "*filter\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j ACCEPT\nCOMMIT\n*nat\n-I PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n*mangle\nCOMMIT\n";
        assert_eq!(
            rules_per_table(text),
            [
                ("filter".to_string(), 1),
                ("nat".to_string(), 2),
                ("mangle".to_string(), 0)
            ]
        );
    }

    #[test]
    fn owned_rules_per_family_and_table_after_a_sync() {
        let mut b = IptablesBackend::new(Flavour::Nft);
        assert_eq!(b.rules_per_table(), Some(Vec::new()), "nothing applied");
        let mut rs = Ruleset::default();
        let mut fr = crate::ir::FamilyRuleset {
            family: IpFamily::V6,
            tables: vec![crate::ir::Table::new(TableName::Nat)],
            large_cluster: false,
        };
        let rule = crate::ir::Rule::new(Vec::new(), crate::ir::Target::Return);
        fr.tables[0].chains.push(crate::ir::Chain {
            name: "KUBE-SERVICES".into(),
            owner: None,
            rules: vec![rule.clone(), rule],
        });
        rs.families.push(fr);
        b.last = Some(rs);
        assert_eq!(
            b.rules_per_table(),
            Some(vec![TableRules {
                family: IpFamily::V6,
                table: "nat".into(),
                rules: 2
            }])
        );
    }
}
