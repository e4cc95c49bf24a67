//! Everything that runs a process: the iptables [`Flavour`]s, the
//! [`Runner`] (on the host or inside a network namespace),
//! [`detect_flavour`], the [`IptablesTransport`], and [`IptablesBackend`],
//! the [`Backend`] both backend crates wrap.
//!
//! Every sync is one `*-restore --noflush --counters` call per family
//! with the input on stdin: the kernel either takes the whole family's
//! change or none of it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kproxy_graph::{
    ApplyError, Backend, BackendKind, ChangeSet, FamilyChanges, GenError, IpFamily, Render,
    ServiceGraph, ServicePortName, SyncStats, Transport,
};
use kproxy_netlink::{self as netlink, NfSocket};

use crate::diff::{ChainEdit, edit_script};
use crate::drift::{self, ChainState};
use crate::generate::{GenOptions, generate, generate_reusing, top_level_chains};
use crate::ir::{BuiltinRule, FamilyRuleset, Rule, Ruleset, TableName};
use crate::naming::is_service_chain;
use crate::parse::{Saved, parse_save_lenient};
use crate::render::{BatchLimits, RestorePlan, is_noop, render_batches, render_restore};

/// Which iptables implementation programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavour {
    /// The legacy xtables kernel interface (`iptables-legacy*`): every
    /// restore replaces whole tables, serialised by the xtables lock.
    Legacy,
    /// iptables rules translated to nf_tables (`iptables-nft*`): each
    /// restore is one nf_tables transaction; no xtables lock.
    Nft,
}

impl Flavour {
    /// The backend this flavour implements.
    pub fn kind(self) -> BackendKind {
        match self {
            Flavour::Legacy => BackendKind::IptablesLegacy,
            Flavour::Nft => BackendKind::IptablesNft,
        }
    }

    fn tool(self, family: IpFamily, suffix: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let f = match self {
            Flavour::Legacy => "legacy",
            Flavour::Nft => "nft",
        };
        format!("{base}-{f}{suffix}")
    }

    /// `iptables-legacy-restore`, `ip6tables-nft-restore`, ...
    pub fn restore_binary(self, family: IpFamily) -> String {
        self.tool(family, "-restore")
    }

    /// `iptables-legacy-save`, ...
    pub fn save_binary(self, family: IpFamily) -> String {
        self.tool(family, "-save")
    }

    /// `iptables-legacy`, ...
    pub fn iptables_binary(self, family: IpFamily) -> String {
        self.tool(family, "")
    }

    /// Lock arguments: the legacy flavour serialises on the xtables lock,
    /// so wait for it up to 5 s as kube-proxy does (`-w 5`; kube-proxy's
    /// `-W 100000` poll interval is ignored by current iptables, 1.8.9
    /// only prints a deprecation warning for it); nf_tables
    /// transactions need no lock.
    pub fn lock_args(self) -> &'static [&'static str] {
        match self {
            Flavour::Legacy => &["-w", "5"],
            Flavour::Nft => &[],
        }
    }
}

/// Runs programs on the host or, for tests, inside a network namespace
/// (`ip netns exec NAME ...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Runner {
    netns: Option<String>,
    env: Vec<(String, String)>,
}

/// What a finished process left.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Exit status succeeded.
    pub success: bool,
    /// The status, for messages.
    pub status: String,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Runner {
    /// Run on the host.
    pub fn host() -> Self {
        Runner::default()
    }

    /// Run every command inside the named network namespace.
    ///
    /// The legacy tools serialise on the host-wide `/run/xtables.lock`,
    /// although a namespace's tables are its own; a namespace gets its own
    /// lock file (`XTABLES_LOCKFILE`) so that a long restore elsewhere on
    /// the machine cannot make its commands time out.
    pub fn in_netns(name: &str) -> Self {
        let lock = std::env::temp_dir().join(format!("kproxy-xtables-{name}.lock"));
        Runner {
            netns: Some(name.to_string()),
            env: vec![(
                "XTABLES_LOCKFILE".to_string(),
                lock.to_string_lossy().into_owned(),
            )],
        }
    }

    /// The network namespace commands run in (`None`: this process's).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Run `program args...` and hand each line of its standard output to
    /// `line` as it arrives, without keeping the output (a table's
    /// `iptables-save` can be tens of MB). Returns the status and the
    /// standard error.
    pub fn run_lines(
        &self,
        program: &str,
        args: &[&str],
        mut line: impl FnMut(&str),
    ) -> std::io::Result<RunOutput> {
        use std::io::{BufRead as _, Read as _};
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        // Standard error from a thread: a child that fills that pipe while
        // standard output is being read would otherwise block.
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        });
        if let Some(out) = child.stdout.take() {
            let mut r = std::io::BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                if r.read_until(b'\n', &mut buf)? == 0 {
                    break;
                }
                line(String::from_utf8_lossy(&buf).trim_end_matches('\n'));
            }
        }
        let status = child.wait()?;
        let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
        Ok(RunOutput {
            success: status.success(),
            status: status.to_string(),
            stdout: String::new(),
            stderr,
        })
    }

    /// Run `program args...`, feeding `stdin`. Errors only when the
    /// program cannot be started (for `ip netns exec`, a missing program
    /// shows as a failed run instead).
    pub fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> std::io::Result<RunOutput> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        // Write stdin from a thread: a large restore input would otherwise
        // deadlock against a child that fills its stdout/stderr pipes.
        let writer = match (stdin, child.stdin.take()) {
            (Some(text), Some(mut pipe)) => {
                let text = text.to_string();
                Some(std::thread::spawn(move || pipe.write_all(text.as_bytes())))
            }
            _ => None,
        };
        let out = child.wait_with_output()?;
        if let Some(w) = writer {
            // A child that exits early closes the pipe; its status says why.
            let _ = w.join();
        }
        Ok(RunOutput {
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

fn has_hint(save: &str) -> bool {
    save.lines()
        .any(|l| l.starts_with(":KUBE-IPTABLES-HINT") || l.starts_with(":KUBE-KUBELET-CANARY"))
}

fn rule_lines(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with('-')).count()
}

/// Which flavour the host uses, decided as kubernetes-sigs/iptables-wrappers
/// does (its `iptables-wrapper-installer.sh`).
pub fn detect_flavour() -> Flavour {
    detect_flavour_with(&Runner::host())
}

/// [`detect_flavour`] through `runner` (tests run it in a namespace):
/// 1. kubelet's hint chains (`KUBE-IPTABLES-HINT`, `KUBE-KUBELET-CANARY`)
///    in nft's mangle table → nft;
/// 2. the same in legacy's tables (read without `-t mangle`, so the table
///    is not created) → legacy;
/// 3. else the flavour with more rules; nft on a tie.
pub fn detect_flavour_with(runner: &Runner) -> Flavour {
    let out = |program: &str, args: &[&str]| -> String {
        runner
            .run(program, args, None)
            .ok()
            .filter(|o| o.success)
            .map(|o| o.stdout)
            .unwrap_or_default()
    };
    let nft_mangle = out("xtables-nft-multi", &["iptables-save", "-t", "mangle"])
        + &out("xtables-nft-multi", &["ip6tables-save", "-t", "mangle"]);
    if has_hint(&nft_mangle) {
        return Flavour::Nft;
    }
    let legacy = out("xtables-legacy-multi", &["iptables-save"])
        + &out("xtables-legacy-multi", &["ip6tables-save"]);
    if has_hint(&legacy) {
        return Flavour::Legacy;
    }
    let nft = out("xtables-nft-multi", &["iptables-save"])
        + &out("xtables-nft-multi", &["ip6tables-save"]);
    if rule_lines(&legacy) > rule_lines(&nft) {
        Flavour::Legacy
    } else {
        Flavour::Nft
    }
}

/// One restore call's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPayload {
    /// Which family's tool reads it.
    pub family: IpFamily,
    /// The restore text.
    pub text: String,
}

/// The transport: the only code that runs the iptables tools.
#[derive(Debug, Clone)]
pub struct IptablesTransport {
    /// The flavour.
    pub flavour: Flavour,
    /// Where commands run.
    pub runner: Runner,
}

impl IptablesTransport {
    fn backend(&self) -> &'static str {
        self.flavour.kind().as_str()
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<RunOutput, ApplyError> {
        self.runner
            .run(program, args, stdin)
            .map_err(|source| ApplyError::Spawn {
                backend: self.backend(),
                program: program.to_string(),
                source,
            })
    }

    fn restore(&self, family: IpFamily, text: &str, extra: &[&str]) -> Result<(), ApplyError> {
        let program = self.flavour.restore_binary(family);
        let mut args: Vec<&str> = self.flavour.lock_args().to_vec();
        args.extend(["--noflush", "--counters"]);
        args.extend(extra);
        let out = self.run(&program, &args, Some(text))?;
        if out.success {
            Ok(())
        } else {
            Err(ApplyError::Rejected {
                backend: self.backend(),
                program,
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    /// Apply restore input (`--noflush --counters`) for one family.
    pub fn apply_text(&self, family: IpFamily, text: &str) -> Result<(), ApplyError> {
        self.restore(family, text, &[])
    }

    /// Check restore input without applying it (`--test`).
    pub fn test_restore(&self, family: IpFamily, text: &str) -> Result<(), ApplyError> {
        self.restore(family, text, &["--test"])
    }

    /// `iptables-save` of one family (every table the kernel has).
    pub fn save(&self, family: IpFamily) -> Result<String, ApplyError> {
        let program = self.flavour.save_binary(family);
        let out = self.run(&program, &[], None)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(ApplyError::Other {
                backend: self.backend(),
                message: format!("{program} failed ({}): {}", out.status, out.stderr.trim()),
            })
        }
    }

    /// Some chains of one table from one `iptables-save -t TABLE`, read as
    /// a stream: each chain's rule count and jump targets, `None` for a
    /// chain the table lacks. The legacy kernel interface hands out a
    /// table only whole, so reading it once for every chain is the
    /// cheapest way (one `iptables -S CHAIN` costs about as much).
    pub fn save_chains(
        &self,
        family: IpFamily,
        table: TableName,
        chains: &[&str],
    ) -> Result<BTreeMap<String, Option<ChainState>>, ApplyError> {
        let program = self.flavour.save_binary(family);
        let mut got: BTreeMap<String, Option<ChainState>> =
            chains.iter().map(|c| (c.to_string(), None)).collect();
        // Count logical lines: a foreign comment holding a newline (and a
        // forged `-A KUBE-SERVICES ...` after it) is one rule of its own
        // chain, not one of kproxy's.
        let mut count = |l: &str| {
            if let Some(decl) = l.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if let Some(slot) = got.get_mut(name) {
                    slot.get_or_insert_with(ChainState::default);
                }
            } else if let Some(rest) = l.strip_prefix("-A ") {
                let name = rest.split_whitespace().next().unwrap_or("");
                if let Some(Some(state)) = got.get_mut(name) {
                    drift::count_rule(state, rest);
                }
            }
        };
        let mut joiner = crate::parse::SaveLineJoiner::default();
        let out = self
            .runner
            .run_lines(&program, &["-t", table.as_str()], |l| {
                joiner.push(l, &mut count)
            })
            .map_err(|source| ApplyError::Spawn {
                backend: self.backend(),
                program: program.clone(),
                source,
            })?;
        joiner.finish(&mut count);
        if !out.success {
            return Err(ApplyError::Other {
                backend: self.backend(),
                message: format!(
                    "{program} -t {} failed ({}): {}",
                    table.as_str(),
                    out.status,
                    out.stderr.trim()
                ),
            });
        }
        Ok(got)
    }

    /// The restore input that removes kproxy's (and kube-proxy's) chains
    /// and their jumps from `saved`, leaving everything else alone;
    /// `None` when there is nothing to remove.
    pub fn cleanup_text(saved: &Saved) -> Option<String> {
        let mut out = String::new();
        for table in [TableName::Filter, TableName::Nat, TableName::Mangle] {
            let Some(t) = saved.table(table) else {
                continue;
            };
            let ours: BTreeSet<&str> = t
                .chains
                .iter()
                .map(|c| c.name.as_str())
                .filter(|n| top_level_chains(table).contains(n) || is_service_chain(n))
                .collect();
            if ours.is_empty() {
                continue;
            }
            let mut body = String::new();
            for c in &ours {
                body.push_str(&format!(":{c} - [0:0]\n"));
            }
            for c in t.chains.iter().filter(|c| !ours.contains(c.name.as_str())) {
                for r in &c.rules {
                    let target = match &r.rule {
                        Some(rule) => rule.jump_target().map(String::from),
                        None => raw_jump_target(&r.raw),
                    };
                    if target.is_some_and(|t| ours.contains(t.as_str())) {
                        body.push_str(&format!("-D {} {}\n", c.name, r.raw));
                    }
                }
            }
            for c in &ours {
                body.push_str(&format!("-X {c}\n"));
            }
            out.push_str(&format!("*{table}\n{body}COMMIT\n"));
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Chains one iptables-nft cleanup restore deletes at most (see
/// [`IptablesTransport::cleanup_batches`]).
pub const CLEANUP_BATCH_CHAINS: usize = 1500;

impl IptablesTransport {
    /// [`IptablesTransport::cleanup_text`] as several restores for
    /// iptables-nft, whose restore time is quadratic in the chains one
    /// restore names (see [`crate::diff`]): first the jumps from other
    /// chains are deleted, then kproxy's chains are flushed and deleted
    /// at most `max_chains` per restore, every chain before the chains
    /// it jumps to (so none is referenced when deleted).
    pub fn cleanup_batches(saved: &Saved, max_chains: usize) -> Vec<String> {
        let mut out = Vec::new();
        for table in [TableName::Filter, TableName::Nat, TableName::Mangle] {
            let Some(t) = saved.table(table) else {
                continue;
            };
            let is_ours = |n: &str| top_level_chains(table).contains(&n) || is_service_chain(n);
            let target_of = |r: &crate::parse::SavedRule| match &r.rule {
                Some(rule) => rule.jump_target().map(String::from),
                None => raw_jump_target(&r.raw),
            };
            let ours: HashMap<&str, Vec<String>> = t
                .chains
                .iter()
                .filter(|c| is_ours(&c.name))
                .map(|c| {
                    let targets = c.rules.iter().filter_map(target_of).collect();
                    (c.name.as_str(), targets)
                })
                .collect();
            if ours.is_empty() {
                continue;
            }
            let mut unlink = String::new();
            for c in t
                .chains
                .iter()
                .filter(|c| !ours.contains_key(c.name.as_str()))
            {
                for r in &c.rules {
                    if target_of(r).is_some_and(|x| ours.contains_key(x.as_str())) {
                        unlink.push_str(&format!("-D {} {}\n", c.name, r.raw));
                    }
                }
            }
            if !unlink.is_empty() {
                out.push(format!("*{table}\n{unlink}COMMIT\n"));
            }
            // Depth among kproxy's chains in the kernel (`ours`: each
            // chain's jump targets).
            let targets = |name: &str| -> Vec<&str> {
                ours.get(name).map_or_else(Vec::new, |ts| {
                    ts.iter()
                        .filter_map(|t| ours.get_key_value(t.as_str()).map(|(k, _)| *k))
                        .collect()
                })
            };
            let mut memo: HashMap<&str, usize> = HashMap::new();
            // Kernel order (creation order, not sorted by name), deepest
            // referrers first.
            let mut order: Vec<(usize, &str)> = t
                .chains
                .iter()
                .filter(|c| ours.contains_key(c.name.as_str()))
                .map(|c| {
                    (
                        crate::render::jump_depth(&c.name, &targets, &mut memo),
                        c.name.as_str(),
                    )
                })
                .collect();
            order.sort_by_key(|(d, _)| std::cmp::Reverse(*d));
            for chunk in order.chunks(max_chains.max(1)) {
                let mut body = String::new();
                for (_, c) in chunk {
                    body.push_str(&format!(":{c} - [0:0]\n"));
                }
                for (_, c) in chunk {
                    body.push_str(&format!("-X {c}\n"));
                }
                out.push(format!("*{table}\n{body}COMMIT\n"));
            }
        }
        out
    }
}

fn raw_jump_target(raw: &str) -> Option<String> {
    let words = crate::parse::tokenize(raw).ok()?;
    let i = words.iter().position(|w| w == "-j" || w == "--jump")?;
    words.get(i + 1).cloned()
}

impl Transport for IptablesTransport {
    type Payload = FamilyPayload;

    fn apply(&mut self, payload: &FamilyPayload) -> Result<(), ApplyError> {
        self.restore(payload.family, &payload.text, &[])
    }

    fn dump(&mut self) -> Result<String, ApplyError> {
        let mut out = String::new();
        for f in IpFamily::ALL {
            out.push_str(&crate::render::family_header(f));
            out.push('\n');
            out.push_str(&self.save(f)?);
        }
        Ok(out)
    }

    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
        let mut errors = Vec::new();
        for f in IpFamily::ALL {
            let saved = match self.save(f).and_then(|s| {
                parse_save_lenient(&s).map_err(|e| ApplyError::Other {
                    backend: self.backend(),
                    message: e.to_string(),
                })
            }) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let texts = match self.flavour {
                Flavour::Nft => Self::cleanup_batches(&saved, CLEANUP_BATCH_CHAINS),
                Flavour::Legacy => Self::cleanup_text(&saved).into_iter().collect(),
            };
            for text in texts {
                if let Err(e) = self.restore(f, &text, &[]) {
                    errors.push(e);
                    break;
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Most rule changes a chain is edited with in place (`-D`/`-I`) rather
/// than rewritten; past it (or past half the chain) a rewrite is cheaper.
pub const MAX_EDITS: usize = 2048;

/// How one chain gets from what the kernel holds to the IR.
enum ChainPlan {
    /// Already equal: not written.
    Same,
    /// Edited in place.
    Edit(Vec<ChainEdit>),
    /// Flushed and rewritten.
    Rewrite,
}

fn chain_plan<T: PartialEq>(have: &[T], want: &[T]) -> ChainPlan {
    if have == want {
        return ChainPlan::Same;
    }
    // Small chains (a service's own) are rewritten: a few lines either
    // way, and iptables-nft needs the chain's rules from the kernel for
    // numbered edits.
    if want.len() < 16 && have.len() < 16 {
        return ChainPlan::Rewrite;
    }
    let max = MAX_EDITS.min(want.len().max(have.len()) / 2);
    match edit_script(have, want, max) {
        Some(e) => ChainPlan::Edit(e),
        None => ChainPlan::Rewrite,
    }
}

/// The restore plan of a full sync against what the kernel holds: every
/// chain whose kernel copy differs rewritten or edited in place, missing
/// jumps inserted, stale service chains deleted.
///
/// Chains the kernel already holds rule for rule (compared canonically,
/// after parsing `iptables-save`) are left out: with iptables-nft every
/// rule written costs time, so a restart or periodic full sync over an
/// unchanged node writes next to nothing. A long chain that differs in a
/// few rules (a top-level chain) gets `-D`/`-I` edits; a rule kproxy
/// cannot parse never matches, so it is deleted or its chain rewritten.
pub fn plan_full(fr: &FamilyRuleset, kernel: &Saved) -> RestorePlan {
    let mut insert: BTreeMap<TableName, Vec<BuiltinRule>> = BTreeMap::new();
    let mut plan = RestorePlan {
        dirty: None,
        ..RestorePlan::default()
    };
    for table in &fr.tables {
        let kt = kernel.table(table.name);
        let kernel_chains: HashMap<&str, &crate::parse::SavedChain> = kt
            .map(|t| t.chains.iter().map(|c| (c.name.as_str(), c)).collect())
            .unwrap_or_default();
        let ours: HashSet<&str> = table.chains.iter().map(|c| c.name.as_str()).collect();
        let (mut same, mut edits, mut fresh) = (BTreeSet::new(), BTreeMap::new(), BTreeSet::new());
        for c in &table.chains {
            let Some(kc) = kernel_chains.get(c.name.as_str()) else {
                fresh.insert(c.name.clone());
                continue;
            };
            let have: Vec<Option<Rule>> = kc
                .rules
                .iter()
                .map(|r| r.rule.as_ref().map(Rule::canonical))
                .collect();
            let want: Vec<Option<Rule>> = c.rules.iter().map(|r| Some(r.canonical())).collect();
            // An unparsed kernel rule (None) must never match: compare
            // as "parsed and equal".
            let have: Vec<Key> = have.into_iter().map(Key).collect();
            let want: Vec<Key> = want.into_iter().map(Key).collect();
            match chain_plan(&have, &want) {
                ChainPlan::Same => {
                    same.insert(c.name.clone());
                }
                ChainPlan::Edit(e) => {
                    edits.insert(c.name.clone(), e);
                }
                ChainPlan::Rewrite => {}
            }
        }
        plan.skip.insert(table.name, same);
        plan.edits.insert(table.name, edits);
        plan.fresh.insert(table.name, fresh);
        let missing: Vec<BuiltinRule> = table
            .builtin_rules
            .iter()
            .filter(|b| {
                let want = b.rule.canonical();
                !kernel_chains.get(b.chain.as_str()).is_some_and(|c| {
                    c.rules
                        .iter()
                        .any(|r| r.rule.as_ref().is_some_and(|r| r.canonical() == want))
                })
            })
            .cloned()
            .collect();
        insert.insert(table.name, missing);
        if let Some(kt) = kt {
            let stale: Vec<String> = kt
                .chains
                .iter()
                .filter(|c| is_service_chain(&c.name) && !ours.contains(c.name.as_str()))
                .map(|c| c.name.clone())
                .collect();
            if !stale.is_empty() {
                plan.delete.insert(table.name, stale);
            }
        }
    }
    plan.insert = Some(insert);
    plan
}

/// A kernel rule as compared by [`plan_full`]: `None` (unparsed) equals
/// nothing, not even another unparsed rule.
struct Key(Option<Rule>);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        matches!((&self.0, &other.0), (Some(a), Some(b)) if a == b)
    }
}

/// The restore plan of a partial sync (kube-proxy's KEP-3453): the
/// chains of added and changed service ports and the top-level chains,
/// each only where it differs from what `prev` wrote (long chains edited
/// in place), and the deletion of chains `prev` had that `next` lacks.
///
/// Unlike kube-proxy, unchanged top-level chains are not rewritten: with
/// iptables-nft that rewrite alone (one rule per service, each naming its
/// own chain) grows quadratically, and with iptables-legacy any change
/// makes the restore replace the whole table, so a sync that changes
/// nothing must write nothing.
pub fn plan_partial(
    prev: &FamilyRuleset,
    next: &FamilyRuleset,
    changes: &FamilyChanges,
) -> RestorePlan {
    let mut plan = RestorePlan {
        dirty: Some(changes.dirty().cloned().collect()),
        insert: Some(BTreeMap::new()),
        ..RestorePlan::default()
    };
    for nt in &next.tables {
        let pt = prev.table(nt.name);
        let prev_chains: HashMap<&str, &crate::ir::Chain> = pt
            .map(|t| t.chains.iter().map(|c| (c.name.as_str(), c)).collect())
            .unwrap_or_default();
        let dirty = plan.dirty.as_ref();
        let (mut same, mut edits, mut fresh) = (BTreeSet::new(), BTreeMap::new(), BTreeSet::new());
        for c in &nt.chains {
            let selected = match &c.owner {
                None => true,
                Some(o) => dirty.is_some_and(|d| d.contains(o)),
            };
            if !selected {
                continue;
            }
            let Some(pc) = prev_chains.get(c.name.as_str()) else {
                fresh.insert(c.name.clone());
                continue;
            };
            match chain_plan(&pc.rules, &c.rules) {
                ChainPlan::Same => {
                    same.insert(c.name.clone());
                }
                ChainPlan::Edit(e) => {
                    edits.insert(c.name.clone(), e);
                }
                ChainPlan::Rewrite => {}
            }
        }
        plan.skip.insert(nt.name, same);
        plan.edits.insert(nt.name, edits);
        plan.fresh.insert(nt.name, fresh);
    }
    for pt in &prev.tables {
        let next_chains: HashSet<&str> = next
            .table(pt.name)
            .map(|t| t.chains.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default();
        let stale: Vec<String> = pt
            .chains
            .iter()
            .filter(|c| c.owner.is_some() && !next_chains.contains(c.name.as_str()))
            .map(|c| c.name.clone())
            .collect();
        if !stale.is_empty() {
            plan.delete.insert(pt.name, stale);
        }
    }
    plan
}

/// The [`Backend`] shared by both flavours: generator, transport and the
/// state between syncs.
#[derive(Debug)]
pub struct IptablesBackend {
    transport: IptablesTransport,
    options: GenOptions,
    last: Option<Ruleset>,
    batch_limits: BatchLimits,
    need_full: bool,
    last_full: Option<Instant>,
    full_sync_period: Duration,
    /// iptables-nft: the netlink socket the drift check reads through
    /// (opened on first use, dropped after an error).
    sock: Option<NfSocket>,
    /// The nfacct counters were created (or found missing support) before
    /// the first sync ([`GenOptions::nfacct`]).
    nfacct_checked: bool,
}

/// kube-proxy's `FullSyncPeriod`: a full sync at least this often repairs
/// anything partial syncs could have missed.
pub const FULL_SYNC_PERIOD: Duration = Duration::from_secs(3600);

impl IptablesBackend {
    /// A backend for `flavour` programming the host.
    pub fn new(flavour: Flavour) -> Self {
        Self::with_runner(flavour, Runner::host())
    }

    /// A backend whose every command runs in network namespace `name`.
    pub fn in_netns(flavour: Flavour, name: &str) -> Self {
        Self::with_runner(flavour, Runner::in_netns(name))
    }

    /// A backend with an explicit runner.
    pub fn with_runner(flavour: Flavour, runner: Runner) -> Self {
        IptablesBackend {
            transport: IptablesTransport { flavour, runner },
            options: GenOptions::default(),
            last: None,
            batch_limits: BatchLimits::default(),
            need_full: true,
            last_full: None,
            full_sync_period: FULL_SYNC_PERIOD,
            sock: None,
            nfacct_checked: false,
        }
    }

    /// Change how often a sync is full regardless of changes (default
    /// [`FULL_SYNC_PERIOD`]).
    pub fn set_full_sync_period(&mut self, period: Duration) {
        self.full_sync_period = period;
    }

    /// Change how iptables-nft syncs that write many chains are split
    /// into several restores (see [`render_batches`]).
    pub fn set_batch_limits(&mut self, limits: BatchLimits) {
        self.batch_limits = limits;
    }

    /// The flavour.
    pub fn flavour(&self) -> Flavour {
        self.transport.flavour
    }

    /// The transport (for dumps and syntax checks).
    pub fn transport(&self) -> &IptablesTransport {
        &self.transport
    }

    /// The IR last applied successfully.
    pub fn last_ruleset(&self) -> Option<&Ruleset> {
        self.last.as_ref()
    }

    /// The next sync will be full (startup, after a failure).
    pub fn needs_full_sync(&self) -> bool {
        self.need_full
            || self.last.is_none()
            || self
                .last_full
                .is_none_or(|t| t.elapsed() >= self.full_sync_period)
    }

    fn sync_inner(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        if self.options.nfacct && !self.nfacct_checked {
            self.nfacct_checked = true;
            self.options.nfacct = crate::nfacct::ensure_counters(self.transport.runner.netns());
        }
        let full = self.needs_full_sync() || changes.is_none_or(|c| c.needs_full_sync);
        // A partial sync moves the unchanged services' chains out of the
        // previous ruleset instead of generating them again.
        let (rs, reused) = match (full, self.last.as_mut(), changes) {
            (false, Some(prev), Some(c)) => {
                let dirty: BTreeMap<IpFamily, BTreeSet<ServicePortName>> = prev
                    .families
                    .iter()
                    .map(|f| {
                        let fc = c.family(f.family);
                        (f.family, fc.dirty().chain(&fc.removed).cloned().collect())
                    })
                    .collect();
                (generate_reusing(graph, &self.options, prev, &dirty), true)
            }
            _ => (generate(graph, &self.options), false),
        };
        // Pessimistic until every family is in: a failure half-way leaves
        // the next sync full.
        self.need_full = true;
        match self.apply_ruleset(graph, &rs, full, changes) {
            Ok(stats) => {
                self.last = Some(rs);
                self.need_full = false;
                if full {
                    self.last_full = Some(Instant::now());
                }
                Ok(stats)
            }
            Err(e) => {
                // The previous ruleset lent its chains to `rs`: it no
                // longer says what the kernel holds (the next sync is full
                // and reads the kernel instead).
                if reused {
                    self.last = None;
                }
                Err(e)
            }
        }
    }

    fn apply_ruleset(
        &mut self,
        graph: &ServiceGraph,
        rs: &Ruleset,
        full: bool,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        let mut stats = SyncStats {
            full,
            ..SyncStats::default()
        };
        for fr in &rs.families {
            let prev = self.last.as_ref().and_then(|l| l.family(fr.family));
            let plan = match (full, prev, changes) {
                (false, Some(prev), Some(c)) => plan_partial(prev, fr, &c.family(fr.family)),
                _ => {
                    let text = self.transport.save(fr.family)?;
                    let kernel = parse_save_lenient(&text).map_err(|e| ApplyError::Other {
                        backend: self.transport.backend(),
                        message: e.to_string(),
                    })?;
                    plan_full(fr, &kernel)
                }
            };
            let chains_written: usize = fr.tables.iter().map(|t| plan.rewritten_count(t)).sum();
            let restores = if self.transport.flavour == Flavour::Nft
                && chains_written > self.batch_limits.names
            {
                render_batches(fr, &plan, self.batch_limits)
            } else {
                vec![render_restore(fr, &plan)]
            };
            for (text, written) in restores {
                tracing::trace!(family = %fr.family, full, bytes = text.len(), "iptables-restore input");
                // Nothing to change: legacy would still read (and with a
                // chain line, replace) the whole table.
                if is_noop(&text) {
                    continue;
                }
                let bytes = text.len();
                for (table, n) in rules_per_table(&text) {
                    match stats
                        .rules_written_by_table
                        .iter_mut()
                        .find(|(f, t, _)| *f == fr.family && *t == table)
                    {
                        Some((_, _, sum)) => *sum += n,
                        None => stats.rules_written_by_table.push((fr.family, table, n)),
                    }
                }
                self.transport.apply(&FamilyPayload {
                    family: fr.family,
                    text,
                })?;
                stats.rules_written += written;
                stats.bytes_written += bytes;
            }
            stats.rules_total += fr.rule_count();
        }
        for fg in graph.families.values() {
            stats.services += fg.services.len();
            stats.endpoints += fg.total_endpoints();
        }
        Ok(stats)
    }
}

/// The rules (`-A`, `-I`, `-R` lines) of a restore input, per table.
fn rules_per_table(text: &str) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            out.push((t.trim().to_string(), 0));
        } else if (line.starts_with("-A ") || line.starts_with("-I ") || line.starts_with("-R "))
            && let Some((_, n)) = out.last_mut()
        {
            *n += 1;
        }
    }
    out
}

impl IptablesBackend {
    /// What differs between the kernel and the last sync ([`drift`]):
    /// `None` when nothing does; "nothing applied" before the first
    /// successful sync.
    fn drift(&mut self) -> Result<Option<String>, ApplyError> {
        let Some(last) = &self.last else {
            return Ok(Some("nothing applied".into()));
        };
        let wanted: Vec<(IpFamily, Vec<drift::TableExpect>)> = last
            .families
            .iter()
            .map(|fr| (fr.family, drift::expected(fr)))
            .collect();
        let mut diffs = Vec::new();
        for (family, tables) in &wanted {
            for want in tables {
                let got = if self.transport.flavour == Flavour::Legacy {
                    let chains: Vec<&str> = want.chains_to_read().collect();
                    self.transport.save_chains(*family, want.table, &chains)?
                } else {
                    let mut got = BTreeMap::new();
                    for chain in want.chains_to_read() {
                        let state = self.read_chain(*family, want.table, chain)?;
                        got.insert(chain.to_string(), state);
                    }
                    got
                };
                diffs.extend(drift::compare(*family, want, &got));
            }
        }
        Ok((!diffs.is_empty()).then(|| diffs.join("; ")))
    }

    /// One chain of iptables-nft as the kernel holds it: its tables are
    /// nf_tables tables, read over netlink (one message per rule of the
    /// chain).
    fn read_chain(
        &mut self,
        family: IpFamily,
        table: TableName,
        chain: &str,
    ) -> Result<Option<ChainState>, ApplyError> {
        let backend = self.transport.backend();
        let err = |e: netlink::Error| ApplyError::Other {
            backend,
            message: format!("reading {} {chain}: {e}", table.as_str()),
        };
        let sock = match self.sock.as_mut() {
            Some(s) => s,
            None => {
                let s = match self.transport.runner.netns() {
                    Some(ns) => NfSocket::open_in_netns(ns),
                    None => NfSocket::open(),
                }
                .map_err(err)?;
                self.sock.insert(s)
            }
        };
        let nf = match family {
            IpFamily::V4 => netlink::Family::Ip,
            IpFamily::V6 => netlink::Family::Ip6,
        };
        Ok(netlink::read_chain(sock, nf, table.as_str(), chain)
            .map_err(err)?
            .map(|c| ChainState {
                rules: c.rules,
                jumps: c.jumps,
            }))
    }
}

impl Backend for IptablesBackend {
    fn kind(&self) -> BackendKind {
        self.transport.flavour.kind()
    }

    fn render_full(&self, graph: &ServiceGraph) -> Result<String, GenError> {
        Ok(generate(graph, &self.options).render())
    }

    fn sync(
        &mut self,
        graph: &ServiceGraph,
        changes: Option<&ChangeSet>,
    ) -> Result<SyncStats, ApplyError> {
        self.sync_inner(graph, changes)
    }

    fn check(&mut self) -> Result<bool, ApplyError> {
        match self.drift() {
            Ok(None) => Ok(true),
            Ok(Some(what)) => {
                tracing::warn!(backend = %self.kind(), differences = %what,
                    "the kernel's kproxy rules differ from the last sync");
                self.need_full = true;
                Ok(false)
            }
            Err(e) => {
                self.sock = None;
                Err(e)
            }
        }
    }

    fn last_applied(&self) -> Option<String> {
        // Rendered on demand: at 50,000 services the text is ~170 MB and
        // most syncs never need it.
        self.last.as_ref().map(Render::render)
    }

    fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
        self.last = None;
        self.need_full = true;
        self.transport.cleanup()
    }
}
