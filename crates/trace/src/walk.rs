//! The hook walk every tracer shares: the per-branch [`State`], the
//! [`HookRunner`] a backend's ruleset implements, and [`walk`], which takes
//! a new connection through the netfilter hooks in kernel order.

use std::net::{IpAddr, SocketAddr};

use crate::{Branch, Event, Hook, HookVisit, Node, Origin, Packet, Trace, TraceError, Verdict};

/// The per-branch state the hook walkers carry.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub dst: IpAddr,
    pub dport: u16,
    pub mark: u32,
    pub dnat: Option<SocketAddr>,
    pub masq: bool,
    pub prob: f64,
    pub visits: Vec<HookVisit>,
    pub stack: Vec<String>,
}

impl State {
    fn new(p: &Packet) -> Self {
        State {
            dst: p.dst,
            dport: p.dport,
            mark: 0,
            dnat: None,
            masq: false,
            prob: 1.0,
            visits: Vec::new(),
            stack: Vec::new(),
        }
    }

    /// Record an event in the current visit.
    pub fn event(&mut self, chain: &str, rule: &str, note: Option<String>) {
        let depth = self.stack.len().saturating_sub(1);
        if let Some(v) = self.visits.last_mut() {
            v.events.push(Event {
                chain: chain.to_string(),
                rule: rule.to_string(),
                depth,
                note,
            });
        }
    }

    /// Record the base chain's decision.
    pub fn decide(&mut self, result: String) {
        let stack = self.stack.clone();
        if let Some(v) = self.visits.last_mut() {
            v.stack = stack;
            v.result = result;
        }
    }

    pub fn apply_dnat(&mut self, to: SocketAddr) {
        self.dst = to.ip();
        self.dport = to.port();
        self.dnat = Some(to);
    }

    /// Split off a branch taken with probability `p` (of this state's);
    /// `self` keeps the rest.
    pub fn fork(&mut self, p: f64) -> State {
        let mut other = self.clone();
        other.prob = self.prob * p;
        self.prob *= 1.0 - p;
        other
    }
}

impl State {
    /// Enter the base chain `chain` of `hook`: a new visit, shown as
    /// `base`, whose call stack starts at `chain`.
    pub(crate) fn enter_base(&mut self, hook: Hook, base: String, chain: &str) {
        self.visits.push(HookVisit {
            hook,
            base,
            events: Vec::new(),
            stack: vec![chain.to_string()],
            result: String::new(),
        });
        self.stack = vec![chain.to_string()];
    }
}

/// The base chains of one hook, in order: `run` takes each state through
/// one chain; the states it accepts go on to the next chain, the others
/// end there with their verdict. The states that pass every chain are
/// accepted.
pub(crate) fn through_chains<C>(
    state: State,
    chains: impl IntoIterator<Item = C>,
    mut run: impl FnMut(&C, State) -> Hooked,
) -> Hooked {
    let mut finals = Vec::new();
    let mut states = vec![state];
    for chain in chains {
        let mut next = Vec::new();
        for st in states {
            for (s, v) in run(&chain, st)? {
                if v == Verdict::Accept {
                    next.push(s);
                } else {
                    finals.push((s, v));
                }
            }
        }
        states = next;
    }
    finals.extend(states.into_iter().map(|s| (s, Verdict::Accept)));
    Ok(finals)
}

/// The states a hook lets through or stops, with their verdict there.
pub(crate) type Hooked = Result<Vec<(State, Verdict)>, TraceError>;

/// A backend's hook implementation: run every base chain of `hook` on
/// `state` and return the resulting states with their verdict for that
/// hook (Accept lets the packet continue).
pub(crate) trait HookRunner {
    fn run_hook(&self, hook: Hook, packet: &Packet, node: &Node, state: State) -> Hooked;
}

/// How a chain ended.
pub(crate) enum Flow {
    /// Fell off the end or returned: back to the caller.
    Return,
    /// A verdict for this base chain (DNAT and MASQUERADE accept).
    Verdict(Verdict),
}

/// The states a chain lets out, with how it ended for each.
pub(crate) type Flows = Result<Vec<(State, Flow)>, TraceError>;

/// How deep jumps may nest before a trace calls the ruleset a loop.
const MAX_DEPTH: usize = 64;

/// Fail when `chain` is entered more than [`MAX_DEPTH`] jumps deep.
pub(crate) fn check_depth(chain: &str, depth: usize) -> Result<(), TraceError> {
    if depth > MAX_DEPTH {
        return Err(TraceError::Invalid(format!(
            "chain {chain}: more than {MAX_DEPTH} nested jumps (a loop?)"
        )));
    }
    Ok(())
}

/// Walk a new connection through the hooks in kernel order.
pub(crate) fn walk(
    backend: &str,
    runner: &dyn HookRunner,
    packet: &Packet,
    node: &Node,
) -> Result<Trace, TraceError> {
    let origin = node.origin(&packet.src);
    let mut done: Vec<Branch> = Vec::new();
    let first = match origin {
        Origin::Remote => Hook::Prerouting,
        Origin::Local => Hook::Output,
    };
    // (state, next hook)
    let mut pending: Vec<(State, Hook)> = vec![(State::new(packet), first)];
    let finish = |st: State, verdict: Verdict, done: &mut Vec<Branch>| {
        done.push(Branch {
            probability: st.prob,
            dnat: st.dnat,
            masquerade: st.masq,
            verdict,
            visits: st.visits,
        });
    };
    while let Some((st, hook)) = pending.pop() {
        let results = runner.run_hook(hook, packet, node, st)?;
        // Reverse so branches come out in evaluation order.
        for (st, verdict) in results.into_iter().rev() {
            if verdict != Verdict::Accept {
                finish(st, verdict, &mut done);
                continue;
            }
            let next = match (origin, hook) {
                (Origin::Remote, Hook::Prerouting) => Some(if node.is_local(&st.dst) {
                    Hook::Input
                } else {
                    Hook::Forward
                }),
                (Origin::Remote, Hook::Forward) => Some(Hook::Postrouting),
                (Origin::Local, Hook::Output) => Some(Hook::Postrouting),
                // Node traffic to a node address loops back in through
                // input (not prerouting).
                (Origin::Local, Hook::Postrouting) if node.is_local(&st.dst) => Some(Hook::Input),
                _ => None,
            };
            match next {
                Some(h) => pending.push((st, h)),
                None => finish(st, Verdict::Accept, &mut done),
            }
        }
    }
    // Evaluation order: the stack above pops the last pushed first; sort by
    // the order of decisions is not meaningful, so keep the pop order,
    // which follows rule order because results were pushed reversed.
    Ok(Trace {
        backend: backend.to_string(),
        packet: packet.clone(),
        origin,
        branches: done,
    })
}
