//! The iptables-restore writer: IR → the exact text `iptables-restore
//! --noflush` consumes, in kube-proxy's spelling (`-m comment --comment
//! "..." -m tcp -p tcp -d IP --dport N -j CHAIN`, marks as `0x00004000`).
//!
//! Under `--noflush`, a chain line `:CHAIN - [0:0]` flushes that chain, so
//! "rewrite a chain" is its chain line plus all its rules; chains not
//! named in the input keep their rules. [`RestorePlan`] chooses which
//! chains a sync rewrites, which jumps it inserts and which chains it
//! deletes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use kproxy_graph::{IpFamily, Render, ServicePortName};

use crate::diff::ChainEdit;
use crate::ir::{
    AddrTypeDir, BuiltinRule, Chain, FamilyRuleset, Match, Recent, Rule, Ruleset, Table, TableName,
    Target,
};
use crate::names::probability;

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
        Match::Nfacct(name) => {
            let _ = write!(out, " -m nfacct --nfacct-name {}", quote(name));
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
    /// Chains not to write although selected above, per table: the kernel
    /// already holds them exactly (see [`crate::plan::plan_full`] and
    /// [`crate::plan::plan_partial`]).
    pub skip: BTreeMap<TableName, BTreeSet<String>>,
    /// Chains changed in place instead of rewritten, per table: the
    /// `-D`/`-I` script from what the kernel holds to the IR's rules
    /// (see [`crate::diff`]).
    pub edits: BTreeMap<TableName, BTreeMap<String, Vec<ChainEdit>>>,
    /// Chains the kernel does not hold yet, per table: nothing can jump
    /// to them, so [`render_batches`] may fill them over several restores.
    pub fresh: BTreeMap<TableName, BTreeSet<String>>,
}

impl RestorePlan {
    /// A full sync from scratch: every chain, every jump, nothing to delete.
    pub fn full() -> Self {
        RestorePlan::default()
    }

    /// The chains of `table` this plan rewrites (chain line plus rules).
    fn rewritten<'a>(&self, table: &'a Table) -> Vec<&'a Chain> {
        let skip = self.skip.get(&table.name);
        let edits = self.edits.get(&table.name);
        table
            .chains
            .iter()
            .filter(|c| match (&self.dirty, &c.owner) {
                (None, _) | (_, None) => true,
                (Some(d), Some(o)) => d.contains(o),
            })
            .filter(|c| !skip.is_some_and(|s| s.contains(&c.name)))
            .filter(|c| !edits.is_some_and(|e| e.contains_key(&c.name)))
            .collect()
    }

    /// How many chains of `table` this plan rewrites.
    pub fn rewritten_count(&self, table: &Table) -> usize {
        self.rewritten(table).len()
    }

    fn inserts<'a>(&'a self, table: &'a Table) -> Vec<&'a BuiltinRule> {
        match &self.insert {
            None => table.builtin_rules.iter().collect(),
            Some(m) => m.get(&table.name).into_iter().flatten().collect(),
        }
    }
}

/// Append `table`'s edit scripts (`-D`/`-I`/`-A` lines); returns the
/// number of lines written.
fn write_edits(out: &mut String, table: &Table, plan: &RestorePlan) -> usize {
    let mut written = 0;
    for (name, edits) in plan.edits.get(&table.name).into_iter().flatten() {
        let Some(chain) = table.chain(name) else {
            continue;
        };
        let ins = edits
            .iter()
            .filter(|e| matches!(e, ChainEdit::Insert { .. }))
            .count();
        // The kernel's length before the script: wanted - inserted + deleted.
        let mut len = chain.rules.len() + (edits.len() - ins) - ins;
        for e in edits {
            match *e {
                ChainEdit::Delete { at } => {
                    let _ = writeln!(out, "-D {name} {at}");
                    len -= 1;
                }
                ChainEdit::Insert { at, rule } => {
                    let r = &chain.rules[rule];
                    if at == len + 1 {
                        write_rule(out, "-A", name, r);
                    } else {
                        write_rule(out, "-I", &format!("{name} {at}"), r);
                    }
                    len += 1;
                }
            }
            written += 1;
        }
    }
    written
}

/// The restore text of one family for `plan`, and how many rules it
/// writes (edits count one each).
pub fn render_restore(fr: &FamilyRuleset, plan: &RestorePlan) -> (String, usize) {
    let selected: Vec<Vec<&Chain>> = fr.tables.iter().map(|t| plan.rewritten(t)).collect();
    let rules: usize = selected.iter().flatten().map(|c| c.rules.len() + 1).sum();
    let mut out = String::with_capacity(rules * 120 + 256);
    let mut written = 0usize;
    for (table, chains) in fr.tables.iter().zip(selected) {
        let _ = writeln!(out, "*{}", table.name);
        let deletes = plan.delete.get(&table.name);
        for c in &chains {
            let _ = writeln!(out, ":{} - [0:0]", c.name);
        }
        for d in deletes.into_iter().flatten() {
            let _ = writeln!(out, ":{d} - [0:0]");
        }
        for b in plan.inserts(table) {
            write_rule(&mut out, "-I", &b.chain, &b.rule);
            written += 1;
        }
        for c in &chains {
            for r in &c.rules {
                write_rule(&mut out, "-A", &c.name, r);
                written += 1;
            }
        }
        written += write_edits(&mut out, table, plan);
        for d in deletes.into_iter().flatten() {
            let _ = writeln!(out, "-X {d}");
        }
        out.push_str("COMMIT\n");
    }
    (out, written)
}

/// Whether restore input changes nothing (only table and COMMIT lines):
/// such a sync need not run the tool at all.
pub fn is_noop(text: &str) -> bool {
    text.lines()
        .all(|l| l.is_empty() || l.starts_with('*') || l == "COMMIT" || l.starts_with('#'))
}

/// How deep `name` sits in a jump graph: 0 for a chain that jumps to no
/// chain of the graph, else one more than its deepest target. `targets`
/// gives the graph's chains a chain jumps to (none for a chain outside
/// it). Used for the IR's tables and for the chains the kernel holds.
pub(crate) fn jump_depth<'a, F>(
    name: &'a str,
    targets: &F,
    memo: &mut HashMap<&'a str, usize>,
) -> usize
where
    F: Fn(&'a str) -> Vec<&'a str>,
{
    if let Some(&d) = memo.get(name) {
        return d;
    }
    // Guards a (never generated) cycle from recursing forever.
    memo.insert(name, 0);
    let d = targets(name)
        .into_iter()
        .filter(|t| *t != name)
        .map(|t| jump_depth(t, targets, memo) + 1)
        .max()
        .unwrap_or(0);
    memo.insert(name, d);
    d
}

/// Limits of one restore in [`render_batches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Distinct chain names (chains written plus jump targets) per
    /// restore: iptables-nft's cost grows with the square of this.
    pub names: usize,
    /// Rules per restore.
    pub rules: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            names: 1500,
            rules: 30_000,
        }
    }
}

/// `plan` as several restores for iptables-nft, each naming a bounded
/// number of chains: chains are written bottom-up (every chain after the
/// chains it jumps to), each chain whole in one restore, except that a
/// chain the kernel does not hold yet ([`RestorePlan::fresh`]) may be
/// filled over several (nothing jumps to it until a later restore). The
/// last restore carries the edits, the jumps from built-in chains and the
/// deletions, so every rule that goes live meets complete chains.
///
/// Why: iptables-nft 1.8.9 under `--noflush` spends time quadratic in the
/// number of distinct chains one restore names (see [`crate::diff`]); a
/// first sync of 10,000 services (~120,000 chains) in one restore does
/// not finish in ten minutes. The price is atomicity across batches:
/// a failure part-way leaves some chains new and some old (each chain is
/// consistent, stale ones are not yet deleted) and the next sync is full.
pub fn render_batches(
    fr: &FamilyRuleset,
    plan: &RestorePlan,
    limits: BatchLimits,
) -> Vec<(String, usize)> {
    let mut batches: Vec<(String, usize)> = Vec::new();
    for table in &fr.tables {
        let by_name: HashMap<&str, &Chain> =
            table.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        let targets = |name: &str| -> Vec<&str> {
            by_name.get(name).map_or_else(Vec::new, |c| {
                c.rules
                    .iter()
                    .filter_map(Rule::jump_target)
                    .filter_map(|t| by_name.get_key_value(t).map(|(k, _)| *k))
                    .collect()
            })
        };
        let mut memo = HashMap::new();
        let mut chains: Vec<(usize, &Chain)> = plan
            .rewritten(table)
            .into_iter()
            .map(|c| (jump_depth(&c.name, &targets, &mut memo), c))
            .collect();
        // Bottom-up, and within a depth in the IR's order, which is random
        // in the chains' hashed names. Not sorted by name: iptables-nft
        // would then find each name at the front of its sorted list, but
        // the kernel keeps chains in creation order and iptables-nft-save
        // (and `iptables -L`) sort them with a first-element-pivot
        // quicksort, which on sorted input recursed 120,000 deep and
        // crashed (SIGSEGV) at 10,000 services.
        chains.sort_by_key(|(d, _)| *d);
        let fresh = plan.fresh.get(&table.name);
        let mut cur = String::new();
        let mut written = 0usize;
        let mut names: HashSet<&str> = HashSet::new();
        let mut rules = 0usize;
        let mut flush = |cur: &mut String,
                         written: &mut usize,
                         names: &mut HashSet<&str>,
                         rules: &mut usize| {
            if !cur.is_empty() {
                let text = format!("*{}\n{cur}COMMIT\n", table.name);
                batches.push((text, *written));
            }
            cur.clear();
            *written = 0;
            names.clear();
            *rules = 0;
        };
        for (_, c) in chains {
            let splittable = fresh.is_some_and(|f| f.contains(&c.name));
            if !splittable
                && !cur.is_empty()
                && (names.len() >= limits.names || rules + c.rules.len() > limits.rules)
            {
                flush(&mut cur, &mut written, &mut names, &mut rules);
            }
            let _ = writeln!(cur, ":{} - [0:0]", c.name);
            names.insert(&c.name);
            for r in &c.rules {
                if splittable && (names.len() >= limits.names || rules >= limits.rules) {
                    flush(&mut cur, &mut written, &mut names, &mut rules);
                    names.insert(&c.name);
                }
                if let Some(t) = r.jump_target() {
                    names.insert(t);
                }
                write_rule(&mut cur, "-A", &c.name, r);
                written += 1;
                rules += 1;
            }
        }
        flush(&mut cur, &mut written, &mut names, &mut rules);
    }
    // The last restore: jumps from built-in chains, edits, deletions.
    let mut out = String::new();
    let mut written = 0usize;
    for table in &fr.tables {
        let mut body = String::new();
        let deletes = plan.delete.get(&table.name);
        for d in deletes.into_iter().flatten() {
            let _ = writeln!(body, ":{d} - [0:0]");
        }
        for b in plan.inserts(table) {
            write_rule(&mut body, "-I", &b.chain, &b.rule);
            written += 1;
        }
        written += write_edits(&mut body, table, plan);
        for d in deletes.into_iter().flatten() {
            let _ = writeln!(body, "-X {d}");
        }
        if !body.is_empty() {
            let _ = write!(out, "*{}\n{body}COMMIT\n", table.name);
        }
    }
    if !out.is_empty() {
        batches.push((out, written));
    }
    batches
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
        for (text, quoted) in [
            ("ns1/svc1:p80", "ns1/svc1:p80"),
            ("ns1/svc1:p80 cluster IP", "\"ns1/svc1:p80 cluster IP\""),
            ("", "\"\""),
            ("a\"b\\c", "\"a\\\"b\\\\c\""),
        ] {
            assert_eq!(quote(text), quoted, "{text:?}");
        }
    }

    #[test]
    fn marks_use_go_formatting() {
        assert_eq!(mark_hex(0x4000), "0x00004000");
        assert_eq!(mark_hex(1 << 31), "0x80000000");
    }
}
