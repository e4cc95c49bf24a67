//! kube-proxy's iptables mode for kproxy: both backends, iptables-legacy
//! and iptables-nft, as one [`IptablesBackend`] taking a [`Flavour`].
//!
//! - [`ir`]: the typed IR ([`Ruleset`], [`FamilyRuleset`], [`Table`],
//!   [`Chain`], [`Rule`], [`Match`], [`Target`]);
//! - [`names`]: kube-proxy's chain-name hashing and probabilities;
//! - [`generate`](mod@generate): the generator ([`IptablesGenerator`], [`generate`]) from a
//!   [`kproxy_graph::ServiceGraph`], reproducing kube-proxy's rules;
//! - [`render`]: the iptables-restore writer and [`RestorePlan`] (which
//!   chains a sync rewrites);
//! - [`parse`]: the iptables-save parser ([`parse_save`]);
//! - [`diff`]: in-place chain edits ([`diff::ChainEdit`], [`diff::edit_script`]);
//! - [`drift`]: the drift check's expected jumps and rule counts;
//! - [`nfacct`]: kube-proxy's nfacct counters, created over nfnetlink_acct;
//! - [`plan`]: which chains a sync rewrites ([`plan_full`], [`plan_partial`]);
//! - [`flavour`]: the [`Flavour`]s (legacy, nft) and [`detect_flavour`];
//! - [`transport`]: [`IptablesTransport`], the only code that runs the
//!   iptables tools (through kproxy-exec's [`Runner`]);
//! - [`backend`]: [`IptablesBackend`], the [`kproxy_graph::Backend`] for
//!   both flavours.

#![deny(missing_docs)]

pub mod backend;
pub mod diff;
pub mod drift;
pub mod flavour;
pub mod generate;
pub mod ir;
pub mod names;
pub mod nfacct;
pub mod parse;
pub mod plan;
pub mod render;
pub mod transport;

/// The old name of [`names`].
#[doc(hidden)]
pub mod naming {
    pub use crate::names::*;
}

/// The old home of the flavours, the transport, planning and the backend.
#[doc(hidden)]
pub mod exec {
    pub use crate::backend::*;
    pub use crate::flavour::*;
    pub use crate::plan::*;
    pub use crate::transport::*;
    pub use kproxy_exec::Runner;
}

pub use backend::IptablesBackend;
pub use flavour::{Flavour, detect_flavour, detect_flavour_with, xtables_runner};
pub use generate::{
    GenOptions, IptablesGenerator, NFACCT_COUNTERS, NFACCT_CT_STATE_INVALID,
    NFACCT_LOCALHOST_NODEPORTS, generate, generate_reusing,
};
pub use ir::{
    Addr, AddrTypeDir, BuiltinRule, Chain, FamilyRuleset, Match, Recent, Rule, Ruleset, Table,
    TableName, Target,
};
pub use kproxy_exec::Runner;
pub use parse::{ParseError, Saved, parse_save, parse_save_lenient};
pub use plan::{plan_full, plan_partial};
pub use render::{BatchLimits, RestorePlan, render_batches, render_restore};
pub use transport::{FamilyPayload, IptablesTransport};
