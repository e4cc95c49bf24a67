//! kube-proxy's iptables mode for kproxy, shared by the
//! `kproxy-iptables-legacy` and `kproxy-iptables-nft` backends.
//!
//! - [`ir`]: the typed IR ([`Ruleset`], [`FamilyRuleset`], [`Table`],
//!   [`Chain`], [`Rule`], [`Match`], [`Target`]);
//! - [`naming`]: kube-proxy's chain-name hashing and probabilities;
//! - [`generate`](mod@generate): the generator ([`IptablesGenerator`], [`generate`]) from a
//!   [`kproxy_graph::ServiceGraph`], reproducing kube-proxy's rules;
//! - [`render`]: the iptables-restore writer and [`RestorePlan`] (which
//!   chains a sync rewrites);
//! - [`parse`]: the iptables-save parser ([`parse_save`]);
//! - [`diff`]: in-place chain edits ([`diff::ChainEdit`], [`diff::edit_script`]);
//! - [`drift`]: the drift check's expected jumps and rule counts;
//! - [`nfacct`]: kube-proxy's nfacct counters, created over nfnetlink_acct;
//! - [`exec`]: the [`Flavour`]s (legacy, nft), the process [`Runner`],
//!   [`detect_flavour`], and [`IptablesBackend`], the
//!   [`kproxy_graph::Backend`] both backend crates wrap.

#![deny(missing_docs)]

pub mod diff;
pub mod drift;
pub mod exec;
pub mod generate;
pub mod ir;
pub mod naming;
pub mod nfacct;
pub mod parse;
pub mod render;

pub use exec::{Flavour, IptablesBackend, Runner, detect_flavour, detect_flavour_with};
pub use generate::{
    GenOptions, IptablesGenerator, NFACCT_COUNTERS, NFACCT_CT_STATE_INVALID,
    NFACCT_LOCALHOST_NODEPORTS, generate, generate_reusing,
};
pub use ir::{
    Addr, AddrTypeDir, BuiltinRule, Chain, FamilyRuleset, Match, Recent, Rule, Ruleset, Table,
    TableName, Target,
};
pub use parse::{ParseError, Saved, parse_save, parse_save_lenient};
pub use render::{BatchLimits, RestorePlan, render_batches, render_restore};
