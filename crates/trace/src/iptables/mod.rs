//! The iptables tracer: reads iptables-save output or iptables-restore
//! input (kproxy's own, with `--noflush` semantics: `:CHAIN` flushes,
//! `-A` appends, `-I` inserts, `-X` deletes) and walks a packet through
//! the built-in chains of each table in kernel order.
//!
//! [`IptablesRuleset`] holds one [`Tables`] per family section (kproxy's
//! combined output separates them with `# IPv4` / `# IPv6` header
//! comments; text without headers is one section for either family).
//! Each rule is parsed into [`IptRule`] (matches and a target); any option
//! the tracer does not know is an error naming the line.
//!
//! - here: the model ([`IptablesRuleset`], [`Tables`], [`IptChain`],
//!   [`IptRule`], [`IptMatch`], [`IptTarget`]);
//! - `parse`: the text to the model, through kproxy-iptables' parser
//!   ([`IptablesRuleset::parse`]);
//! - `eval`: the per-table walk state and whether (with what
//!   probability) a rule's matches hold for a packet;
//! - `walk`: the walk through chains and targets, per hook, in kernel
//!   order ([`Tracer`](crate::Tracer) for [`IptablesRuleset`]).

mod eval;
mod parse;
mod walk;

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use kproxy_graph::{IpFamily, Protocol};

/// One match of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum IptMatch {
    /// `[!] -p PROTO` (`None` = `all`).
    Protocol {
        /// `!`.
        negated: bool,
        /// The protocol number.
        proto: Option<u8>,
    },
    /// `[!] -s NET`.
    Source {
        /// `!`.
        negated: bool,
        /// The network.
        net: IpNet,
    },
    /// `[!] -d NET`.
    Destination {
        /// `!`.
        negated: bool,
        /// The network.
        net: IpNet,
    },
    /// `[!] -i NAME` (`NAME+` = prefix).
    InInterface {
        /// `!`.
        negated: bool,
        /// The name as written.
        name: String,
    },
    /// `[!] --dport LO[:HI]`.
    DestPort {
        /// `!`.
        negated: bool,
        /// First port.
        lo: u16,
        /// Last port.
        hi: u16,
    },
    /// `-m addrtype [!] --src-type/--dst-type LOCAL`.
    AddrTypeLocal {
        /// `--dst-type` rather than `--src-type`.
        dst: bool,
        /// `!`.
        negated: bool,
    },
    /// `-m conntrack [!] --ctstate S1,S2`.
    CtState {
        /// `!`.
        negated: bool,
        /// The states, upper case.
        states: Vec<String>,
    },
    /// `-m mark [!] --mark V[/M]`.
    Mark {
        /// `!`.
        negated: bool,
        /// Value.
        value: u32,
        /// Mask.
        mask: u32,
    },
    /// `-m statistic --mode random --probability P`.
    Probability(f64),
    /// `-m recent --rcheck`/`--update`: the client was seen recently. A
    /// first packet never was.
    RecentCheck(String),
    /// `-m recent --set`: remembers the client; always matches.
    RecentSet(String),
    /// `-m comment --comment TEXT`.
    Comment(String),
    /// `-m nfacct --nfacct-name NAME`: counts; always matches.
    Nfacct(String),
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum IptTarget {
    /// `-j CHAIN`.
    Jump(String),
    /// `-g CHAIN`.
    Goto(String),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j REJECT`.
    Reject,
    /// `-j RETURN`.
    Return,
    /// `-j DNAT --to-destination IP[:PORT]`.
    Dnat {
        /// The address.
        ip: IpAddr,
        /// The port, when given.
        port: Option<u16>,
    },
    /// `-j MASQUERADE`.
    Masquerade,
    /// `-j MARK` in `--set-xmark V/M` form: `mark = (mark & !M) ^ V`.
    Mark {
        /// Value.
        value: u32,
        /// Mask.
        mask: u32,
    },
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct IptRule {
    /// The line as written (without counters).
    pub text: String,
    /// 1-based line number.
    pub line: usize,
    /// The matches.
    pub matches: Vec<IptMatch>,
    /// The target; `None` for a rule that only counts (or comments).
    pub target: Option<IptTarget>,
    /// Why the rule was not understood (another program's rule, say). A
    /// packet that reaches it stops the trace with an error naming it.
    pub unknown: Option<String>,
}

impl IptRule {
    /// A spelling-independent form: what `iptables-save` and
    /// `iptables-restore` input both mean (for diffs).
    pub fn canonical(&self) -> String {
        let mut parts: Vec<String> = self
            .matches
            .iter()
            .map(|m| match m {
                IptMatch::Probability(p) => format!("Probability({p:.8})"),
                other => format!("{other:?}"),
            })
            .collect();
        parts.sort();
        if self.unknown.is_some() {
            // Not understood: compared as written.
            return format!("unknown {}", self.text);
        }
        format!("{} => {:?}", parts.join(" "), self.target)
    }
}

/// A chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IptChain {
    /// Built-in chain policy (`ACCEPT`, `DROP`); `None` for user chains.
    pub policy: Option<String>,
    /// The rules in order.
    pub rules: Vec<IptRule>,
}

/// One family's tables: table name → chain name → chain.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tables {
    /// The tables.
    pub tables: BTreeMap<String, BTreeMap<String, IptChain>>,
}

impl Tables {
    /// A chain.
    pub fn chain(&self, table: &str, chain: &str) -> Option<&IptChain> {
        self.tables.get(table).and_then(|t| t.get(chain))
    }
}

/// A parsed iptables ruleset, per family section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IptablesRuleset {
    /// `(family, tables)`; the family is `None` for text without
    /// kproxy's family headers.
    pub sections: Vec<(Option<IpFamily>, Tables)>,
}

fn builtin(table: &str, chain: &str) -> bool {
    matches!(
        (table, chain),
        ("filter", "INPUT" | "FORWARD" | "OUTPUT")
            | ("nat", "PREROUTING" | "INPUT" | "OUTPUT" | "POSTROUTING")
            | ("mangle" | "security" | "raw", _)
    ) && matches!(
        chain,
        "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING"
    )
}

/// The protocol number of a [`Protocol`].
pub fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}
