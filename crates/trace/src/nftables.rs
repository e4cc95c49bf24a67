//! The nftables tracer: reads `nft -f` scripts (flat `add table/chain/rule/
//! map/set/element`, `flush`, `delete` commands, as kproxy writes them)
//! and `nft list table` output (nested blocks), and walks a packet through
//! the base chains of every matching table in hook and priority order.
//!
//! [`NftRuleset`] holds [`NftTable`]s of [`NftChain`]s (rules parsed into
//! [`Stmt`]s) and [`NftSet`]s (sets and maps with their elements). The
//! expressions understood are those kproxy's generator writes: `ip`/`ip6`
//! `saddr`/`daddr`, `meta l4proto`, `th dport` (and `tcp dport` ...),
//! marks with bit operations, `ct state`, `ct status`, `fib saddr/daddr
//! type`, `iif`/`iifname`, `numgen random mod N`, concatenations, set and
//! map lookups (named and anonymous), verdict maps, `dnat to` (literal or
//! through a map), `masquerade`, `reject`, `drop`, `accept`, `jump`,
//! `goto`, `return`. Anything else is an error naming the statement.

//!
//! The module follows the pipeline: [`lex`] (text to tokens), [`ast`] (the
//! parsed ruleset), [`parse`] (tokens to the ruleset) and [`eval`] (a packet
//! through the ruleset).

mod ast;
mod eval;
mod lex;
mod parse;

pub use ast::{
    BaseChain, DnatTo, ElemValue, MapRef, MarkOp, NftChain, NftRule, NftRuleset, NftSet, NftTable,
    Rhs, Sel, SetElem, Stmt, Val, VerdictStmt,
};
