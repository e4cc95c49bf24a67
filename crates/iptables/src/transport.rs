//! [`IptablesTransport`]: the only code that runs the iptables tools (through
//! kproxy-exec's runner). Every sync is one `*-restore --noflush
//! --counters` call per family with the input on stdin: the kernel either
//! takes the whole family's change or none of it. Also `iptables-save`
//! reads and cleanup.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kproxy_exec::Output;
use kproxy_exec::Runner;
use kproxy_graph::{ApplyError, IpFamily, Transport};

use crate::drift::{self, ChainState};
use crate::flavour::{Flavour, xtables_runner};
use crate::generate::top_level_chains;
use crate::ir::TableName;
use crate::names::is_service_chain;
use crate::parse::{Saved, parse_save_lenient};

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
    pub(crate) fn backend(&self) -> &'static str {
        self.flavour.kind().as_str()
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<Output, ApplyError> {
        xtables_runner(&self.runner)
            .output(program, args, stdin.map(str::as_bytes))
            .map_err(|e| self.spawn_error(program, e))
    }

    fn spawn_error(&self, program: &str, e: kproxy_exec::Error) -> ApplyError {
        match e {
            kproxy_exec::Error::Spawn { source, .. } => ApplyError::Spawn {
                backend: self.backend(),
                program: program.to_string(),
                source,
            },
            other => ApplyError::Other {
                backend: self.backend(),
                message: other.to_string(),
            },
        }
    }

    fn restore(&self, family: IpFamily, text: &str, extra: &[&str]) -> Result<(), ApplyError> {
        let program = self.flavour.restore_binary(family);
        let mut args: Vec<&str> = self.flavour.lock_args().to_vec();
        args.extend(["--noflush", "--counters"]);
        args.extend(extra);
        let out = self.run(&program, &args, Some(text))?;
        if out.success() {
            Ok(())
        } else {
            Err(ApplyError::Rejected {
                backend: self.backend(),
                program,
                status: out.status.to_string(),
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
        if out.success() {
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
        let out = xtables_runner(&self.runner)
            .lines(&program, &["-t", table.as_str()], |l| {
                joiner.push(l, &mut count)
            })
            .map_err(|e| self.spawn_error(&program, e))?;
        joiner.finish(&mut count);
        if !out.success() {
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
}

impl IptablesTransport {
    /// `iptables-save` of every family, each under its `#` header line.
    pub fn dump(&mut self) -> Result<String, ApplyError> {
        let mut out = String::new();
        for f in IpFamily::ALL {
            out.push_str(&crate::render::family_header(f));
            out.push('\n');
            out.push_str(&self.save(f)?);
        }
        Ok(out)
    }

    /// Remove kproxy's (and kube-proxy's) chains and their jumps from
    /// every family's tables, leaving everything else; run every step and
    /// return every error.
    pub fn cleanup(&mut self) -> Result<(), Vec<ApplyError>> {
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
