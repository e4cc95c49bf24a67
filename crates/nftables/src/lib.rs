//! kproxy-nftables: kproxy's native nftables backend.
//!
//! - [`ir`]: the typed IR ([`Table`], [`Chain`], [`Rule`], [`Set`],
//!   [`Element`]) and [`Transaction`], which renders to `nft -f` text;
//! - [`generate`]: [`NftGenerator`], the pure generator from a
//!   [`kproxy_graph::ServiceGraph`] (one `table ip kproxy` and one
//!   `table ip6 kproxy`), built from a skeleton plus one [`ServiceRules`]
//!   per service port;
//! - [`diff`]: the incremental transaction builder (last applied IR → new
//!   IR: element adds/deletes, chain adds/flushes, "flush now, delete
//!   later");
//! - [`claims`]: which service ports claim each key of the shared sets
//!   and maps, so an incremental sync writes the element a full render
//!   would (first claim in service-port order wins);
//! - [`transport`]: [`Nft`], the wrapper around `nft -f -` that maps nft's
//!   `line:col` errors back to the offending statement;
//! - [`compile`] and [`nl_transport`]: [`NetlinkTransport`], the same
//!   transactions sent as one atomic nf_tables netlink batch without
//!   `nft` (rules, sets and elements compiled to expressions and bytes);
//! - [`drift`]: the drift check's expected counts and comparison, against
//!   what [`kproxy_netlink`] reads from the kernel (chains, rule and
//!   element counts);
//! - [`backend`]: [`NftablesBackend`], the daemon's
//!   [`kproxy_graph::Backend`], and [`supported`] for `--backend auto`.
//!
//! The layout (shared load-balancing chains per endpoint count, named maps
//! keyed by VIP . proto . port) is described in docs/backends/nftables.md.

#![deny(missing_docs)]

pub mod backend;
pub mod claims;
pub mod compile;
pub mod diff;
pub mod drift;
pub mod generate;
pub mod ir;
pub mod names;
pub mod nl_transport;
pub mod transport;

pub use backend::{NftTransport, NftablesBackend, TransportKind, supported, supported_for};
pub use generate::{FamilyRules, NftGenerator, NftRuleset, ServiceRules};
pub use ir::{Chain, Element, Family, Op, Rule, Set, SetType, Table, Transaction};
pub use nl_transport::NetlinkTransport;
pub use transport::Nft;

/// docs/library.md, whose Rust examples run as this crate's doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/library.md")]
pub struct LibraryGuide;
