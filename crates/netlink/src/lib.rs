//! kproxy-netlink: nf_tables over netlink, the messages kproxy writes and
//! reads straight to and from the kernel, without `nft`.
//!
//! `nft list` builds its cache of the whole table (every set element)
//! before it prints even one chain, which at 50,000 Services costs a
//! 100+ MiB process. The drift check only needs to know which chains,
//! sets and elements exist and how many rules each chain has, so it reads
//! them as netlink dumps and counts messages and attributes as they
//! arrive; nothing is turned into text and nothing is kept beyond the
//! counts.
//!
//! - [`socket`]: [`NfSocket`], a `NETLINK_NETFILTER` socket (in this
//!   network namespace or a named one) that sends one request and hands
//!   each reply message to a callback;
//! - [`msg`]: the nf_tables message types and attributes used here
//!   (`include/uapi/linux/netfilter/nf_tables.h`), request encoding and
//!   attribute lookup;
//! - [`summary`]: [`TableSummary`], the chains with their rule counts and
//!   the sets with their element counts of one table, read with
//!   `NFT_MSG_GETTABLE`, `GETCHAIN`, `GETRULE`, `GETSET` and `GETSETELEM`;
//!   [`ChainRules`], one chain's rule count and jump targets (what
//!   iptables-nft keeps in its `nat`/`filter`/`mangle` tables);
//! - [`conntrack`]: ctnetlink (`NFNL_SUBSYS_CTNETLINK`): a filtered dump
//!   of one protocol's flows, deletes and creates, batched;
//! - [`acct`]: nfnetlink_acct (`NFNL_SUBSYS_ACCT`): create and read the
//!   named counters `-m nfacct` counts into;
//! - [`nfnl`]: [`nfnl::Writer`], nfnetlink messages of any subsystem
//!   written one after another into one buffer;
//! - [`batch`], [`expr`], [`obj`]: the write side, an nf_tables
//!   transaction as one atomic nfnetlink batch (tables, chains, rules with
//!   their expressions, sets and elements), sent in chunks by
//!   [`NfSocket::send_batch`](crate::NfSocket::send_batch) with errors mapped to sequence numbers.
//!
//! The readers only read. The netlink framing (headers, attribute
//! buffers) comes from `netlink-packet-core`, the socket from
//! `netlink-sys`; the nf_tables layer on top is this crate's. The drift
//! checks of both the nftables backend (kproxy-nftables) and iptables-nft
//! (kproxy-iptables) use it; it depends on neither.

#![deny(missing_docs)]

pub mod acct;
pub mod batch;
pub mod conntrack;
pub mod expr;
pub mod msg;
pub mod nfnl;
pub mod obj;
pub mod socket;
pub mod summary;

pub use socket::NfSocket;
pub use summary::{
    ChainRules, ChainSummary, SetSummary, TableSummary, read_chain, read_table,
    set_elements_expiring, set_keys,
};

/// The family of an nf_tables table kproxy reads (the `nfgen_family` of
/// each request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `ip` (IPv4, `NFPROTO_IPV4`).
    Ip,
    /// `ip6` (IPv6, `NFPROTO_IPV6`).
    Ip6,
}

impl Family {
    /// The nfproto number (`NFPROTO_IPV4`, `NFPROTO_IPV6`).
    pub const fn nfproto(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }
}

/// An error talking to nf_tables over netlink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be opened, written or read.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The network namespace could not be entered.
    #[error("entering network namespace {name}: {reason}")]
    Netns {
        /// The namespace (`ip netns` name).
        name: String,
        /// Why.
        reason: String,
    },
    /// The kernel answered the request with an error.
    #[error("{request}: {source}")]
    Kernel {
        /// The request, for messages.
        request: &'static str,
        /// The errno, as an OS error.
        #[source]
        source: std::io::Error,
    },
    /// A reply that does not parse.
    #[error("{request}: malformed reply: {reason}")]
    Decode {
        /// The request, for messages.
        request: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The ruleset changed while it was being dumped (`NLM_F_DUMP_INTR`):
    /// what was read may mix two generations.
    #[error("{request}: the dump was interrupted by a concurrent change")]
    Interrupted {
        /// The request, for messages.
        request: &'static str,
    },
}

impl Error {
    /// The kernel said the object does not exist (`ENOENT`).
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(ENOENT)
    }

    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

const ENOENT: i32 = 2;
