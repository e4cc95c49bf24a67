//! The interfaces every backend implements.
//!
//! A backend is two halves:
//! - a pure **generator**: [`Generator::generate`] turns a [`ServiceGraph`]
//!   into the backend's IR, [`Render::render`] turns that IR into the
//!   loader's text (iptables-restore input, an `nft -f` script);
//! - a **transport** ([`Transport`]) that alone writes to the kernel: it
//!   applies one payload as one atomic transaction ([`Recording`] records
//!   them instead).
//!
//! The daemon drives both through [`Backend`], which a backend crate
//! implements on top of its generator and transport: full and incremental
//! syncs, drift checks, the live rules (`trace --live`, `diff`), cleanup
//! of its own and kube-proxy's rules, per-table rule counts. The daemon
//! never asks which backend it drives, beyond the one place that builds
//! it; [`DryRun`] wraps any backend so that nothing is written.

use std::fmt::Debug;

use crate::changes::ChangeSet;
use crate::config::ProxyMode;
use crate::model::{IpFamily, ServiceGraph};

/// The backends kproxy has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendKind {
    /// iptables rules through `iptables-legacy-restore`.
    IptablesLegacy,
    /// iptables rules through `iptables-nft-restore`.
    IptablesNft,
    /// Native nftables through `nft -f`.
    Nftables,
}

impl BackendKind {
    /// The name used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::IptablesLegacy => "iptables-legacy",
            BackendKind::IptablesNft => "iptables-nft",
            BackendKind::Nftables => "nftables",
        }
    }

    /// The kube-proxy mode this backend stands in for: it decides the
    /// graph's mode defaults (nodePortAddresses, localhost NodePorts) and
    /// which of kube-proxy's mode-specific metrics the daemon exports.
    pub fn mode(self) -> ProxyMode {
        match self {
            BackendKind::Nftables => ProxyMode::Nftables,
            BackendKind::IptablesLegacy | BackendKind::IptablesNft => ProxyMode::Iptables,
        }
    }

    /// Every backend.
    pub const ALL: [BackendKind; 3] = [
        BackendKind::IptablesLegacy,
        BackendKind::IptablesNft,
        BackendKind::Nftables,
    ];
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error while generating rules. Generation only fails on a graph that
/// violates its own invariants; bad input was already dropped by intake.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The graph holds something the generator cannot express.
    #[error("cannot generate rules for {object}: {reason}")]
    Unsupported {
        /// The service port or object concerned.
        object: String,
        /// Why.
        reason: String,
    },
}

/// An error from a transport.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The loader could not be started (missing binary, say).
    #[error("{backend}: cannot run {program}: {source}")]
    Spawn {
        /// The backend.
        backend: &'static str,
        /// The program that failed to start.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The loader ran and refused the payload; the kernel still holds the
    /// previous rules.
    #[error("{backend}: {program} failed ({status}): {stderr}")]
    Rejected {
        /// The backend.
        backend: &'static str,
        /// The program.
        program: String,
        /// Its exit status.
        status: String,
        /// Its standard error, with the offending statement where the
        /// backend could map it back.
        stderr: String,
    },
    /// Anything else (reading the kernel's state, an unexpected dump).
    #[error("{backend}: {message}")]
    Other {
        /// The backend.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// A generator: pure, deterministic, no I/O.
pub trait Generator {
    /// The backend's IR.
    type Ruleset: Render + Debug + PartialEq + Clone;

    /// Build the complete ruleset for `graph`.
    fn generate(&self, graph: &ServiceGraph) -> Result<Self::Ruleset, GenError>;
}

/// Render an IR value to the exact text its loader consumes.
pub trait Render {
    /// The loader's input.
    fn render(&self) -> String;
}

/// How a backend's transactions reach the kernel: the part of a backend
/// that writes. A backend holds one and sends every transaction through
/// it, so the same backend runs over a process (`nft -f -`,
/// `iptables-restore`), over netlink, or into a [`Recording`].
pub trait Transport {
    /// What one transaction carries: the backend's typed transaction
    /// (nftables: its `Transaction` IR, so that a netlink transport encodes
    /// the IR itself) or the loader's input (iptables: restore text per
    /// family).
    type Payload: ?Sized;

    /// Apply one payload as one atomic transaction: on error the kernel
    /// still holds what it held before.
    fn apply(&mut self, payload: &Self::Payload) -> Result<(), ApplyError>;
}

/// A transport that applies nothing and records every payload, in order
/// (tests of what a backend would send; `--dry-run` is the [`DryRun`]
/// decorator, which records whole rulesets).
#[derive(Debug)]
pub struct Recording<P: ToOwned + ?Sized> {
    /// The payloads, oldest first.
    pub applied: Vec<P::Owned>,
}

impl<P: ToOwned + ?Sized> Default for Recording<P> {
    fn default() -> Self {
        Recording {
            applied: Vec::new(),
        }
    }
}

impl<P: ToOwned + ?Sized> Transport for Recording<P> {
    type Payload = P;

    fn apply(&mut self, payload: &P) -> Result<(), ApplyError> {
        self.applied.push(payload.to_owned());
        Ok(())
    }
}

/// What one sync did, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// A full sync (everything rewritten) rather than an incremental one.
    pub full: bool,
    /// Service ports in the graph (all families).
    pub services: usize,
    /// Endpoints in the graph (all families).
    pub endpoints: usize,
    /// Rules (or statements) the backend owns after the sync.
    pub rules_total: usize,
    /// Rules (or statements) sent to the kernel in this sync.
    pub rules_written: usize,
    /// Bytes sent to the kernel.
    pub bytes_written: usize,
    /// Rules sent to the kernel per family and table, for backends that
    /// have tables of rules (iptables); empty otherwise.
    pub rules_written_by_table: Vec<(IpFamily, String, usize)>,
}

/// The rules a backend owns in one table of one family (kube-proxy's
/// `sync_proxy_rules_iptables_total` per table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRules {
    /// The family.
    pub family: IpFamily,
    /// The table (`filter`, `nat`, ...).
    pub table: String,
    /// Rules kproxy owns there.
    pub rules: usize,
}

/// The daemon's handle on a backend: generator plus transport plus the
/// state between syncs (what was last applied).
pub trait Backend: Send {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;

    /// The complete ruleset text a full sync of `graph` would apply.
    fn render_full(&self, graph: &ServiceGraph) -> Result<String, GenError>;

    /// Bring the kernel to `graph`. With `changes` (from the last graph this
    /// backend applied successfully) the sync may be incremental; `None`
    /// forces a full sync. On error the kernel keeps the previous rules and
    /// the next call must be a full sync.
    fn sync(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError>;

    /// Cheap check that the kernel still holds what the last successful
    /// sync applied, compared as counts (tables and chains present, rules
    /// per chain, jumps from built-in chains, set sizes; each backend says
    /// which), never by listing everything as text. `Ok(false)` means
    /// drift: the backend has logged what differs and its next sync is
    /// full; the caller forces one. Also `Ok(false)` when nothing was
    /// applied (no sync yet, or the last one failed): callers check only
    /// after a successful sync, since a failed one is already retried as a
    /// full sync.
    fn check(&mut self) -> Result<bool, ApplyError>;

    /// The last applied ruleset, in the backend's own syntax.
    fn last_applied(&self) -> Option<String>;

    /// Remove everything this backend installed, and what kube-proxy's
    /// equivalent mode installed (`kproxy cleanup`, and other modes'
    /// leftovers after a backend switch).
    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>>;

    /// Remove what kube-proxy's equivalent mode installed without touching
    /// this backend's own rules (run after the first successful sync, as
    /// [`cleanup`](Backend::cleanup) of every other backend is). Default:
    /// nothing, for backends whose rules are kube-proxy's own (iptables).
    fn cleanup_foreign(&mut self) -> Result<(), Vec<ApplyError>> {
        Ok(())
    }

    /// What the kernel holds of this backend's rules for `family` now, in
    /// the syntax [`render_full`](Backend::render_full) prints (`kproxy
    /// trace --live`, `kproxy diff`); `None` when nothing of this backend
    /// is installed for the family.
    fn dump_live(&mut self, family: IpFamily) -> Result<Option<String>, ApplyError>;

    /// The rules this backend owns per family and table after the last
    /// successful sync; `None` for backends without tables of rules (only
    /// iptables has them). May cost a render of the ruleset: callers rate
    /// limit it.
    fn rules_per_table(&self) -> Option<Vec<TableRules>> {
        None
    }
}

/// Where a dry run's rulesets go (standard output in the daemon).
pub type DryRunSink = Box<dyn FnMut(&str) + Send>;

/// `--dry-run` as a decorator: a backend that applies nothing. Each sync
/// renders the complete ruleset with the wrapped backend's generator,
/// records it (what [`last_applied`](Backend::last_applied) returns) and
/// hands it to the sink, once per distinct ruleset (periodic syncs of an
/// unchanged state would only repeat it). Reading the kernel
/// ([`dump_live`](Backend::dump_live)) goes to the wrapped backend;
/// everything that would write (sync, cleanup) touches nothing, and the
/// drift check always finds the (absent) rules in place.
pub struct DryRun {
    inner: Box<dyn Backend>,
    sink: DryRunSink,
    recorded: Option<String>,
}

impl std::fmt::Debug for DryRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DryRun")
            .field("kind", &self.inner.kind())
            .field("recorded_bytes", &self.recorded.as_ref().map(String::len))
            .finish()
    }
}

impl DryRun {
    /// Wrap `inner`; every distinct ruleset goes to `sink`, headed by a
    /// `# kproxy dry run: ...` comment line.
    pub fn new(inner: Box<dyn Backend>, sink: DryRunSink) -> Self {
        DryRun {
            inner,
            sink,
            recorded: None,
        }
    }

    /// The ruleset the last sync would have applied.
    pub fn recorded(&self) -> Option<&str> {
        self.recorded.as_deref()
    }
}

impl Backend for DryRun {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }

    fn render_full(&self, graph: &ServiceGraph) -> Result<String, GenError> {
        self.inner.render_full(graph)
    }

    fn sync(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        let kind = self.kind();
        let text = self
            .inner
            .render_full(graph)
            .map_err(|e| ApplyError::Other {
                backend: kind.as_str(),
                message: e.to_string(),
            })?;
        if self.recorded.as_deref() != Some(text.as_str()) {
            let sync = if changes.is_none() { "full" } else { "partial" };
            (self.sink)(&format!(
                "# kproxy dry run: {sync} sync, backend {kind}\n{text}"
            ));
        }
        let stats = SyncStats {
            full: true,
            services: graph.families.values().map(|f| f.services.len()).sum(),
            endpoints: graph.families.values().map(|f| f.total_endpoints()).sum(),
            rules_total: text.lines().count(),
            ..SyncStats::default()
        };
        self.recorded = Some(text);
        Ok(stats)
    }

    fn check(&mut self) -> Result<bool, ApplyError> {
        Ok(true)
    }

    fn last_applied(&self) -> Option<String> {
        self.recorded.clone()
    }

    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
        Ok(())
    }

    fn cleanup_foreign(&mut self) -> Result<(), Vec<ApplyError>> {
        Ok(())
    }

    fn dump_live(&mut self, family: IpFamily) -> Result<Option<String>, ApplyError> {
        self.inner.dump_live(family)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{Objects, ProxyConfig};

    /// A backend that renders a counter and fails every write.
    struct Loud(Arc<Mutex<u32>>);

    impl Backend for Loud {
        fn kind(&self) -> BackendKind {
            BackendKind::Nftables
        }
        fn render_full(&self, _graph: &ServiceGraph) -> Result<String, GenError> {
            Ok(format!(
                "table ip kproxy {{}} # {}\n",
                self.0.lock().unwrap()
            ))
        }
        fn sync(
            &mut self,
            _: &ServiceGraph,
            _: Option<&ChangeSet>,
        ) -> Result<SyncStats, ApplyError> {
            panic!("a dry run must not sync")
        }
        fn check(&mut self) -> Result<bool, ApplyError> {
            panic!("a dry run must not read drift")
        }
        fn last_applied(&self) -> Option<String> {
            None
        }
        fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
            panic!("a dry run must not clean up")
        }
        fn cleanup_foreign(&mut self) -> Result<(), Vec<ApplyError>> {
            panic!("a dry run must not clean up")
        }
        fn dump_live(&mut self, _: IpFamily) -> Result<Option<String>, ApplyError> {
            Ok(Some("live".into()))
        }
    }

    #[test]
    fn recording_keeps_every_payload_in_order() {
        let mut r: Recording<str> = Recording::default();
        r.apply("add table ip t").expect("records");
        r.apply("delete table ip t").expect("records");
        assert_eq!(r.applied, ["add table ip t", "delete table ip t"]);
    }

    #[test]
    fn dry_run_records_each_distinct_ruleset_once_and_writes_nothing() {
        let counter = Arc::new(Mutex::new(1));
        let printed = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = printed.clone();
        let mut b = DryRun::new(
            Box::new(Loud(counter.clone())),
            Box::new(move |t: &str| sink.lock().unwrap().push(t.to_string())),
        );
        let g = ServiceGraph::build(&Objects::default(), &ProxyConfig::default());
        let stats = b.sync(&g, None).expect("dry run");
        assert_eq!(stats.rules_total, 1);
        assert_eq!(stats.bytes_written, 0);
        b.sync(&g, Some(&ChangeSet::default())).expect("dry run");
        *counter.lock().unwrap() = 2;
        b.sync(&g, Some(&ChangeSet::default())).expect("dry run");
        assert_eq!(
            *printed.lock().unwrap(),
            [
                "# kproxy dry run: full sync, backend nftables\ntable ip kproxy {} # 1\n",
                "# kproxy dry run: partial sync, backend nftables\ntable ip kproxy {} # 2\n",
            ]
        );
        assert_eq!(b.recorded(), Some("table ip kproxy {} # 2\n"));
        assert_eq!(b.last_applied().as_deref(), b.recorded());
        assert!(b.check().expect("no drift"));
        assert!(b.cleanup().is_ok());
        assert!(b.cleanup_foreign().is_ok());
        assert_eq!(
            b.dump_live(IpFamily::V4).expect("read"),
            Some("live".into())
        );
    }
}
