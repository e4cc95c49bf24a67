//! The iptables-restore writer: IR → the exact text `iptables-restore
//! --noflush` consumes, in kube-proxy's spelling (`-m comment --comment
//! "..." -m tcp -p tcp -d IP --dport N -j CHAIN`, marks as `0x00004000`).
//!
//! Under `--noflush`, a chain line `:CHAIN - [0:0]` flushes that chain, so
//! "rewrite a chain" is its chain line plus all its rules; chains not
//! named in the input keep their rules. [`RestorePlan`] chooses which
//! chains a sync rewrites, which jumps it inserts and which chains it
//! deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kproxy_graph::{IpFamily, Render, ServicePortName};

use crate::ir::{
    AddrTypeDir, BuiltinRule, FamilyRuleset, Match, Recent, Rule, Ruleset, TableName, Target,
};
use crate::naming::probability;

/// Characters a comment may contain without quotes (kube-proxy writes a
/// bare `ns/svc:port` unquoted).
fn bare_ok(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | ':' | ',' | '+')
}

/// Quote a word for iptables-restore when it needs it: inside double
/// quotes, `"` and `\` are escaped with `\` (iptables' `add_param_to_argv`).
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(bare_ok) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A mark as kube-proxy formats it (Go's `%#08x`: `0x00004000`).
pub fn mark_hex(v: u32) -> String {
    format!("0x{v:08x}")
}

fn neg(out: &mut String, negated: bool) {
    if negated {
        out.push_str(" !");
    }
}

/// Append one match.
pub fn write_match(out: &mut String, m: &Match) {
    match m {
        Match::Comment(t) => {
            let _ = write!(out, " -m comment --comment {}", quote(t));
        }
        Match::Protocol(p) => {
            let _ = write!(out, " -m {p} -p {p}");
        }
        Match::Source { negated, addr } => {
            neg(out, *negated);
            let _ = write!(out, " -s {addr}");
        }
        Match::Destination { negated, addr } => {
            neg(out, *negated);
            let _ = write!(out, " -d {addr}");
        }
        Match::InInterface { negated, name } => {
            neg(out, *negated);
            let _ = write!(out, " -i {}", quote(name));
        }
        Match::DestPort(p) => {
            let _ = write!(out, " --dport {p}");
        }
        Match::AddrType { dir, kind } => {
            let d = match dir {
                AddrTypeDir::Src => "--src-type",
                AddrTypeDir::Dst => "--dst-type",
            };
            let _ = write!(out, " -m addrtype {d} {}", quote(kind));
        }
        Match::Conntrack { negated, states } => {
            out.push_str(" -m conntrack");
            neg(out, *negated);
            let _ = write!(out, " --ctstate {}", quote(states));
        }
        Match::Mark {
            negated,
            value,
            mask,
        } => {
            out.push_str(" -m mark");
            neg(out, *negated);
            let _ = write!(out, " --mark {}/{}", mark_hex(*value), mark_hex(*mask));
        }
        Match::Statistic { one_in } => {
            let _ = write!(
                out,
                " -m statistic --mode random --probability {}",
                probability(*one_in)
            );
        }
        Match::Recent(Recent::Set { name }) => {
            let _ = write!(out, " -m recent --name {} --set", quote(name));
        }
        Match::Recent(Recent::Check { name, seconds }) => {
            let _ = write!(
                out,
                " -m recent --name {} --rcheck --seconds {seconds} --reap",
                quote(name)
            );
        }
    }
}

/// Append a target.
pub fn write_target(out: &mut String, t: &Target) {
    match t {
        Target::Jump(c) => {
            let _ = write!(out, " -j {c}");
        }
        Target::Accept => out.push_str(" -j ACCEPT"),
        Target::Drop => out.push_str(" -j DROP"),
        Target::Return => out.push_str(" -j RETURN"),
        Target::Reject => out.push_str(" -j REJECT"),
        Target::Dnat(sa) => {
            let _ = write!(out, " -j DNAT --to-destination {sa}");
        }
        Target::Masquerade { random_fully } => {
            out.push_str(" -j MASQUERADE");
            if *random_fully {
                out.push_str(" --random-fully");
            }
        }
        Target::MarkOr(v) => {
            let _ = write!(out, " -j MARK --or-mark {}", mark_hex(*v));
        }
        Target::MarkXor(v) => {
            let _ = write!(out, " -j MARK --xor-mark {}", mark_hex(*v));
        }
        Target::MarkSetX { value, mask } => {
            let _ = write!(
                out,
                " -j MARK --set-xmark {}/{}",
                mark_hex(*value),
                mark_hex(*mask)
            );
        }
    }
}

/// One rule line: `OP CHAIN args...` (no newline).
pub fn rule_line(op: &str, chain: &str, rule: &Rule) -> String {
    let mut out = String::with_capacity(160);
    write_rule(&mut out, op, chain, rule);
    out
}

/// Append one rule line `OP CHAIN args...\n` to `out` (no per-rule
/// allocation: restore inputs run to tens of megabytes).
pub fn write_rule(out: &mut String, op: &str, chain: &str, rule: &Rule) {
    out.push_str(op);
    out.push(' ');
    out.push_str(chain);
    for m in &rule.matches {
        write_match(out, m);
    }
    if let Some(t) = &rule.target {
        write_target(out, t);
    }
    out.push('\n');
}

/// What one restore call writes for one family.
#[derive(Debug, Clone, Default)]
pub struct RestorePlan {
    /// Rewrite only top-level chains and the chains of these service
    /// ports; `None` rewrites every chain (a full sync).
    pub dirty: Option<BTreeSet<ServicePortName>>,
    /// Jumps from built-in chains to insert (`-I`), per table; `None`
    /// inserts every one (a full sync on a node without them).
    pub insert: Option<BTreeMap<TableName, Vec<BuiltinRule>>>,
    /// Chains to flush and delete (`-X`) in the same transaction, per table.
    pub delete: BTreeMap<TableName, Vec<String>>,
    /// Chains not to write although selected above, per table: a full
    /// sync leaves out chains the kernel already holds exactly (see
    /// [`crate::exec::plan_full`]).
    pub skip: BTreeMap<TableName, BTreeSet<String>>,
}

impl RestorePlan {
    /// A full sync from scratch: every chain, every jump, nothing to delete.
    pub fn full() -> Self {
        RestorePlan::default()
    }
}

/// The restore text of one family for `plan`, and how many rules it
/// writes.
pub fn render_restore(fr: &FamilyRuleset, plan: &RestorePlan) -> (String, usize) {
    let mut out = String::with_capacity(fr.rule_count() * 120 + 256);
    let mut written = 0usize;
    for table in &fr.tables {
        let _ = writeln!(out, "*{}", table.name);
        let skip = plan.skip.get(&table.name);
        let chains: Vec<_> = table
            .chains
            .iter()
            .filter(|c| match (&plan.dirty, &c.owner) {
                (None, _) | (_, None) => true,
                (Some(d), Some(o)) => d.contains(o),
            })
            .filter(|c| !skip.is_some_and(|s| s.contains(&c.name)))
            .collect();
        let deletes = plan.delete.get(&table.name);
        for c in &chains {
            let _ = writeln!(out, ":{} - [0:0]", c.name);
        }
        for d in deletes.into_iter().flatten() {
            let _ = writeln!(out, ":{d} - [0:0]");
        }
        let inserts: Vec<&BuiltinRule> = match &plan.insert {
            None => table.builtin_rules.iter().collect(),
            Some(m) => m.get(&table.name).into_iter().flatten().collect(),
        };
        for b in inserts {
            write_rule(&mut out, "-I", &b.chain, &b.rule);
            written += 1;
        }
        for c in &chains {
            for r in &c.rules {
                write_rule(&mut out, "-A", &c.name, r);
                written += 1;
            }
        }
        for d in deletes.into_iter().flatten() {
            let _ = writeln!(out, "-X {d}");
        }
        out.push_str("COMMIT\n");
    }
    (out, written)
}

/// The header line that separates families in combined output.
pub fn family_header(family: IpFamily) -> String {
    match family {
        IpFamily::V4 => "# IPv4: iptables-restore --noflush --counters".into(),
        IpFamily::V6 => "# IPv6: ip6tables-restore --noflush --counters".into(),
    }
}

impl FamilyRuleset {
    /// The restore input of a full sync onto a node without kproxy's rules.
    pub fn render_full(&self) -> String {
        render_restore(self, &RestorePlan::full()).0
    }
}

impl Render for Ruleset {
    /// Every family's full-sync restore input, each under a `#` header
    /// line (a comment to iptables-restore). Feed each family's part to
    /// its own tool: [`FamilyRuleset::render_full`].
    fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            out.push_str(&family_header(f.family));
            out.push('\n');
            out.push_str(&f.render_full());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_follows_iptables_restore() {
        assert_eq!(quote("ns1/svc1:p80"), "ns1/svc1:p80");
        assert_eq!(
            quote("ns1/svc1:p80 cluster IP"),
            "\"ns1/svc1:p80 cluster IP\""
        );
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn marks_use_go_formatting() {
        assert_eq!(mark_hex(0x4000), "0x00004000");
        assert_eq!(mark_hex(1 << 31), "0x80000000");
    }
}
