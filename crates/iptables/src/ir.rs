//! The typed IR: [`Ruleset`] → [`FamilyRuleset`] → [`Table`] → [`Chain`]
//! → [`Rule`], with matches ([`Match`]) and targets ([`Target`]) as data.
//!
//! A [`Rule`]'s matches are kept in the order kube-proxy writes them, so
//! rendering reproduces kube-proxy's restore input byte for byte;
//! [`Rule::canonical`] sorts them for comparisons with what `iptables-save`
//! prints (which orders options its own way).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use kproxy_graph::{IpFamily, Protocol, ServicePortName};

/// An iptables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableName {
    /// `filter`.
    Filter,
    /// `nat`.
    Nat,
    /// `mangle` (only the canary lives here).
    Mangle,
}

impl TableName {
    /// The name as iptables spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TableName::Filter => "filter",
            TableName::Nat => "nat",
            TableName::Mangle => "mangle",
        }
    }

    /// Parse a table name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "filter" => Some(TableName::Filter),
            "nat" => Some(TableName::Nat),
            "mangle" => Some(TableName::Mangle),
            _ => None,
        }
    }

    /// The built-in chains of this table.
    pub fn builtin_chains(self) -> &'static [&'static str] {
        match self {
            TableName::Filter => &["INPUT", "FORWARD", "OUTPUT"],
            TableName::Nat => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
            TableName::Mangle => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        }
    }

    /// Whether `chain` is built into this table.
    pub fn is_builtin(self, chain: &str) -> bool {
        self.builtin_chains().contains(&chain)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address in `-s`/`-d`: a bare IP (kube-proxy writes endpoint and
/// service IPs so) or a CIDR (source ranges, cluster CIDR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Addr {
    /// A single address, written without a prefix length.
    Ip(IpAddr),
    /// A network, written `addr/len`.
    Net(IpNet),
}

impl Addr {
    /// The same address as a network (a bare IP becomes a host route), as
    /// `iptables-save` prints it.
    pub fn canonical(self) -> Addr {
        match self {
            Addr::Ip(ip) => Addr::Net(IpNet::from(ip)),
            Addr::Net(n) => Addr::Net(n.trunc()),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(ip) => write!(f, "{ip}"),
            Addr::Net(n) => write!(f, "{n}"),
        }
    }
}

/// Which address an `addrtype` match tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrTypeDir {
    /// `--src-type`.
    Src,
    /// `--dst-type`.
    Dst,
}

/// The `recent` match kube-proxy uses for ClientIP affinity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Recent {
    /// `--name N --set`: remember the client.
    Set {
        /// The list name (the endpoint chain's name).
        name: String,
    },
    /// `--name N --rcheck --seconds S --reap`: a client seen recently.
    Check {
        /// The list name.
        name: String,
        /// The affinity timeout.
        seconds: u32,
    },
}

/// One match of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// `-m comment --comment TEXT`.
    Comment(String),
    /// `-m P -p P` (kube-proxy always loads the protocol's module too).
    Protocol(Protocol),
    /// `[!] -s ADDR`.
    Source {
        /// `!`.
        negated: bool,
        /// The address.
        addr: Addr,
    },
    /// `[!] -d ADDR`.
    Destination {
        /// `!`.
        negated: bool,
        /// The address.
        addr: Addr,
    },
    /// `[!] -i NAME` (`NAME+` for a prefix).
    InInterface {
        /// `!`.
        negated: bool,
        /// The interface name.
        name: String,
    },
    /// `--dport N` (of the protocol module).
    DestPort(u16),
    /// `-m addrtype --src-type|--dst-type TYPE`.
    AddrType {
        /// Source or destination.
        dir: AddrTypeDir,
        /// The address type (`LOCAL`).
        kind: String,
    },
    /// `-m conntrack [!] --ctstate STATES`.
    Conntrack {
        /// `!`.
        negated: bool,
        /// Comma-separated states as written (`NEW`, `RELATED,ESTABLISHED`).
        states: String,
    },
    /// `-m mark [!] --mark VALUE/MASK`.
    Mark {
        /// `!`.
        negated: bool,
        /// The value.
        value: u32,
        /// The mask.
        mask: u32,
    },
    /// `-m statistic --mode random --probability 1/N`: one in `N`.
    Statistic {
        /// The divisor (kube-proxy's `probability(n)`).
        one_in: u32,
    },
    /// `-m recent ...`.
    Recent(Recent),
    /// `-m nfacct --nfacct-name NAME`: counts into an nfnetlink_acct
    /// counter; always matches.
    Nfacct(String),
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `-j CHAIN` to a user chain.
    Jump(String),
    /// `-j ACCEPT`.
    Accept,
    /// `-j DROP`.
    Drop,
    /// `-j RETURN`.
    Return,
    /// `-j REJECT` (default `--reject-with`).
    Reject,
    /// `-j DNAT --to-destination ADDR:PORT`.
    Dnat(SocketAddr),
    /// `-j MASQUERADE [--random-fully]`.
    Masquerade {
        /// `--random-fully`.
        random_fully: bool,
    },
    /// `-j MARK --or-mark V` (saved as `--set-xmark V/V`).
    MarkOr(u32),
    /// `-j MARK --xor-mark V` (saved as `--set-xmark V/0x0`).
    MarkXor(u32),
    /// `-j MARK --set-xmark V/M` (any other form).
    MarkSetX {
        /// Value.
        value: u32,
        /// Mask.
        mask: u32,
    },
}

/// One rule: matches (ANDed) and an optional target (kube-proxy's FW
/// chains end with a comment-only rule).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rule {
    /// The matches, in the order they are written.
    pub matches: Vec<Match>,
    /// The target.
    pub target: Option<Target>,
}

impl Rule {
    /// A rule with these matches and target.
    pub fn new(matches: Vec<Match>, target: Target) -> Self {
        Rule {
            matches,
            target: Some(target),
        }
    }

    /// The rule with its matches in a fixed order and addresses as
    /// networks: two rules that mean the same compare equal, whatever the
    /// order or spelling their text used.
    pub fn canonical(&self) -> Rule {
        let mut matches: Vec<Match> = self
            .matches
            .iter()
            .map(|m| match m {
                Match::Source { negated, addr } => Match::Source {
                    negated: *negated,
                    addr: addr.canonical(),
                },
                Match::Destination { negated, addr } => Match::Destination {
                    negated: *negated,
                    addr: addr.canonical(),
                },
                other => other.clone(),
            })
            .collect();
        matches.sort();
        Rule {
            matches,
            target: self.target.clone(),
        }
    }

    /// The user chain this rule jumps to, if any.
    pub fn jump_target(&self) -> Option<&str> {
        match &self.target {
            Some(Target::Jump(c)) => Some(c),
            _ => None,
        }
    }
}

/// A user chain kproxy owns.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// The chain name (≤ 28 characters).
    pub name: String,
    /// The service port whose chain this is; `None` for the top-level
    /// chains, which are rewritten on every sync.
    pub owner: Option<ServicePortName>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// A rule kproxy keeps in a built-in chain (a jump into its own chains).
/// Inserted at the top, in list order, on full syncs when missing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BuiltinRule {
    /// The built-in chain (`INPUT`, `PREROUTING`, ...).
    pub chain: String,
    /// The rule.
    pub rule: Rule,
}

/// One table of one family.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Table {
    /// Which table.
    pub name: TableName,
    /// kproxy's chains, top-level first, then per service port.
    pub chains: Vec<Chain>,
    /// Jumps from built-in chains.
    pub builtin_rules: Vec<BuiltinRule>,
}

impl Table {
    /// An empty table.
    pub fn new(name: TableName) -> Self {
        Table {
            name,
            chains: Vec::new(),
            builtin_rules: Vec::new(),
        }
    }

    /// A chain by name.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The chains by name, for many lookups.
    pub(crate) fn chains_by_name(&self) -> std::collections::HashMap<&str, &Chain> {
        self.chains.iter().map(|c| (c.name.as_str(), c)).collect()
    }

    /// Number of rules in kproxy's own chains.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }
}

/// Everything kproxy programs for one family (`iptables` for IPv4,
/// `ip6tables` for IPv6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FamilyRuleset {
    /// The family.
    pub family: IpFamily,
    /// filter, nat, mangle.
    pub tables: Vec<Table>,
    /// More than 1000 endpoints: per-endpoint comments were left out.
    pub large_cluster: bool,
}

impl FamilyRuleset {
    /// A table by name.
    pub fn table(&self, name: TableName) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// A chain by table and name.
    pub fn chain(&self, table: TableName, name: &str) -> Option<&Chain> {
        self.table(table).and_then(|t| t.chain(name))
    }

    /// Rules in kproxy's own chains over all tables.
    pub fn rule_count(&self) -> usize {
        self.tables.iter().map(Table::rule_count).sum()
    }
}

/// The complete iptables ruleset of a node: one [`FamilyRuleset`] per
/// enabled family, IPv4 first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Ruleset {
    /// Per-family rulesets.
    pub families: Vec<FamilyRuleset>,
}

impl Ruleset {
    /// The ruleset of one family.
    pub fn family(&self, family: IpFamily) -> Option<&FamilyRuleset> {
        self.families.iter().find(|f| f.family == family)
    }
}
