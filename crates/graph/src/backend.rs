//! The interfaces every backend implements.
//!
//! A backend is two halves:
//! - a pure **generator**: [`Generator::generate`] turns a [`ServiceGraph`]
//!   into the backend's IR, [`Render::render`] turns that IR into the
//!   loader's text (iptables-restore input, an `nft -f` script);
//! - a **transport** ([`Transport`]) that alone touches the kernel: it
//!   applies one payload as one atomic transaction, dumps what the kernel
//!   holds and cleans up.
//!
//! The daemon drives both through [`Backend`], which a backend crate
//! implements on top of its generator and transport (full and incremental
//! syncs, drift checks, cleanup).

use std::fmt::Debug;

use crate::changes::ChangeSet;
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

/// The only part of a backend that touches the kernel.
pub trait Transport {
    /// What one transaction carries.
    type Payload;

    /// Apply one payload as one atomic transaction.
    fn apply(&mut self, payload: &Self::Payload) -> Result<(), ApplyError>;

    /// What the kernel holds of this backend's rules, in the loader's syntax.
    fn dump(&mut self) -> Result<String, ApplyError>;

    /// Remove everything this backend (and kube-proxy's equivalent mode)
    /// installed; run every step and return every error.
    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>>;
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

    /// Remove everything this backend installed.
    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>>;
}
