//! [`NetlinkTransport`]: a [`Transaction`] sent to the kernel as one
//! atomic nf_tables netlink batch, without the `nft` program.
//!
//! Each operation becomes one or more messages ([`crate::compile`] turns
//! the rule, set and element text into expressions and bytes); the batch
//! is written in chunks and handed to the kernel in one `sendmsg`
//! ([`kproxy_netlink::NfSocket::send_batch`]). The kernel applies all of
//! it or nothing; when it refuses a message, the error's sequence number
//! is mapped back to the operation, and the message names that statement
//! in `nft` syntax, with the kernel's reason.

use std::collections::HashMap;

use kproxy_graph::{ApplyError, Transport};
use kproxy_netlink::NfSocket;
use kproxy_netlink::batch::{Batch, SendError};
use kproxy_netlink::obj::{ChainHook, ELEMS_MAX_BYTES, ElemSpec, Removal, SetRef};

use crate::compile::{self, BatchCtx, CompileError, SetRegistry, nfproto};
use crate::ir::{ChainType, Family, HookPoint, Op, Transaction, render_op};

const BACKEND: &str = "nftables";
/// What error messages call this transport.
const PROGRAM: &str = "nf_tables netlink batch";

/// Sends transactions over netlink, in this network namespace or a named
/// one. Remembers the sets it declared (their key and value types) so that
/// later transactions can add elements and rules that use them.
#[derive(Debug, Default, Clone)]
pub struct NetlinkTransport {
    netns: Option<String>,
    sets: SetRegistry,
    seq: u32,
    /// Bytes of the last batch sent.
    last_bytes: usize,
    /// The socket of the last batch, kept for the next one.
    sock: KeptSocket,
    /// A batch being sent on a thread of its own ([`NetlinkTransport::send_pipelined`]).
    in_flight: InFlight,
}

/// The result of a pipelined batch: the socket back, and the outcome.
type Sent = (Option<NfSocket>, Result<(), ApplyError>);

/// A pipelined batch on its way to the kernel, and the sets the
/// registry holds once it is in.
#[derive(Debug, Default)]
struct InFlight(Option<(std::thread::JoinHandle<Sent>, SetRegistry)>);

impl Clone for InFlight {
    fn clone(&self) -> Self {
        InFlight(None)
    }
}

/// A socket kept between batches: opening one in a named namespace costs
/// a thread and a `setns`, more than a small incremental batch. A clone
/// of the transport opens its own.
#[derive(Debug, Default)]
struct KeptSocket(Option<NfSocket>);

impl Clone for KeptSocket {
    fn clone(&self) -> Self {
        KeptSocket(None)
    }
}

/// A transaction compiled into a batch: its chunks and, per message, the
/// operation it came from.
#[derive(Debug)]
pub struct Compiled {
    /// The batch's chunks, ready to send.
    pub chunks: Vec<Vec<u8>>,
    /// Sequence number of the first command message.
    pub first_seq: u32,
    /// The index in the transaction of each command message's operation.
    pub op_of_msg: Vec<u32>,
    sets: SetRegistry,
}

impl NetlinkTransport {
    /// In this process's network namespace.
    pub fn host() -> Self {
        NetlinkTransport::default()
    }

    /// In the network namespace `ip netns` calls `name`.
    pub fn in_netns(name: &str) -> Self {
        NetlinkTransport {
            netns: Some(name.to_string()),
            ..NetlinkTransport::default()
        }
    }

    /// The network namespace (`None`: this process's).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Bytes of the last batch sent.
    pub fn last_batch_bytes(&self) -> usize {
        self.last_bytes
    }

    /// Forget what was declared (after the tables were removed by other
    /// means).
    pub fn forget(&mut self) {
        let _ = self.wait();
        self.sets.clear();
        self.sock.0 = None;
    }

    fn socket(&self) -> Result<NfSocket, ApplyError> {
        let s = NfSocket::open_in(self.netns.as_deref());
        s.map_err(|e| ApplyError::Other {
            backend: BACKEND,
            message: format!("opening the nf_tables netlink socket: {e}"),
        })
    }

    /// The kept socket, or a new one.
    fn take_socket(&mut self) -> Result<NfSocket, ApplyError> {
        match self.sock.0.take() {
            Some(s) => Ok(s),
            None => self.socket(),
        }
    }

    /// Compile `tx` into a batch (nothing is sent).
    pub fn compile(&mut self, tx: &Transaction) -> Result<Compiled, ApplyError> {
        self.seq = self.seq.wrapping_add(1 << 20);
        let seq0 = self.seq;
        // A batch still on its way counts as applied: this one builds on
        // its sets, and is sent only if it succeeds.
        let mut sets = match &self.in_flight.0 {
            Some((_, after)) => after.clone(),
            None => self.sets.clone(),
        };
        let mut b = Batch::new(seq0);
        let mut op_of_msg = Vec::with_capacity(tx.ops.len());
        let mut ctx = BatchCtx {
            next_id: 1,
            ..BatchCtx::default()
        };
        for (i, (f, t, op)) in tx.ops.iter().enumerate() {
            let before = b.messages();
            encode(&mut b, &mut sets, &mut ctx, *f, t, op).map_err(|e| ApplyError::Rejected {
                backend: BACKEND,
                program: PROGRAM.into(),
                status: "not sent".into(),
                stderr: format!(
                    "operation {}: Error: {e}; statement: {}",
                    i + 1,
                    excerpt(*f, t, op)
                ),
            })?;
            for _ in before..b.messages() {
                op_of_msg.push(i as u32);
            }
        }
        let first_seq = seq0.wrapping_add(1);
        Ok(Compiled {
            chunks: b.finish(),
            first_seq,
            op_of_msg,
            sets,
        })
    }

    /// Apply `tx` as one atomic batch.
    pub fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        if tx.is_empty() {
            return Ok(());
        }
        let compiled = self.compile(tx)?;
        self.send(tx, compiled)
    }

    /// Send a compiled batch; on success remember its sets.
    pub fn send(&mut self, tx: &Transaction, c: Compiled) -> Result<(), ApplyError> {
        self.wait()?;
        let sock = self.take_socket()?;
        self.last_bytes = c.chunks.iter().map(Vec::len).sum();
        let (sock, r) = send_compiled(sock, tx, &c);
        self.sock.0 = sock;
        r.map(|()| self.sets = c.sets)
    }

    /// Compile `tx` here and send it on a thread of its own, so that the
    /// caller builds the next transaction while the kernel applies this
    /// one. The previous pipelined batch is waited for first: its failure
    /// is returned (and `tx` is not sent), as is a failure to compile
    /// `tx`. Call [`NetlinkTransport::wait`] after the last one. Returns
    /// the batch's bytes. At most two batches are held at once: the one
    /// being sent and the one just compiled.
    pub fn send_pipelined(&mut self, tx: Transaction) -> Result<usize, ApplyError> {
        if tx.is_empty() {
            return Ok(0);
        }
        let compiled = self.compile(&tx);
        self.wait()?;
        let c = compiled?;
        let sock = self.take_socket()?;
        let bytes = c.chunks.iter().map(Vec::len).sum();
        self.last_bytes = bytes;
        let after = c.sets.clone();
        let h = std::thread::Builder::new()
            .name("nft-batch".into())
            .spawn(move || send_compiled(sock, &tx, &c))
            .map_err(|e| ApplyError::Other {
                backend: BACKEND,
                message: format!("starting the batch sender thread: {e}"),
            })?;
        self.in_flight.0 = Some((h, after));
        Ok(bytes)
    }

    /// Wait for the pipelined batch in flight, if any; on success its
    /// sets are remembered.
    pub fn wait(&mut self) -> Result<(), ApplyError> {
        let Some((h, after)) = self.in_flight.0.take() else {
            return Ok(());
        };
        let (sock, r) = h.join().unwrap_or_else(|_| {
            (
                None,
                Err(ApplyError::Other {
                    backend: BACKEND,
                    message: "the batch sender thread panicked".into(),
                }),
            )
        });
        self.sock.0 = sock;
        r.map(|()| self.sets = after)
    }
}

/// Send a compiled batch on `sock`; the socket comes back unless an I/O
/// error may have left unread replies in it.
fn send_compiled(mut sock: NfSocket, tx: &Transaction, c: &Compiled) -> Sent {
    let r = sock.send_batch(&c.chunks);
    let keep = !matches!(r, Err(SendError::Io(_)));
    let r = match r {
        Ok(()) => Ok(()),
        Err(SendError::Io(e)) => Err(ApplyError::Other {
            backend: BACKEND,
            message: format!("sending the nf_tables batch: {e}"),
        }),
        Err(SendError::Rejected(e)) => {
            let idx = e.seq.wrapping_sub(c.first_seq) as usize;
            let stderr = match c.op_of_msg.get(idx).map(|i| *i as usize) {
                Some(i) => match tx.ops.get(i) {
                    Some((f, t, op)) => format!(
                        "operation {}: Error: {e}; statement: {}",
                        i + 1,
                        excerpt(*f, t, op)
                    ),
                    None => format!("message {}: Error: {e}", e.seq),
                },
                None => format!("the batch as a whole: Error: {e}"),
            };
            Err(ApplyError::Rejected {
                backend: BACKEND,
                program: PROGRAM.into(),
                status: format!("errno {}", e.errno),
                stderr,
            })
        }
    };
    (keep.then_some(sock), r)
}

/// The netlink transport: each transaction compiled and sent as one
/// batch; the same payload as [`crate::Nft`]'s, without text.
impl Transport for NetlinkTransport {
    type Payload = Transaction;

    fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        NetlinkTransport::apply(self, tx)
    }
}

/// The statement's `nft` text, bounded.
fn excerpt(f: Family, t: &str, op: &Op) -> String {
    let mut s = String::new();
    render_op(&mut s, f, t, op);
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" ...");
    }
    s
}

fn hook_of(h: &crate::ir::Hook) -> ChainHook {
    ChainHook {
        chain_type: match h.chain_type {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
        },
        hooknum: match h.hook {
            HookPoint::Prerouting => 0,
            HookPoint::Input => 1,
            HookPoint::Forward => 2,
            HookPoint::Output => 3,
            HookPoint::Postrouting => 4,
        },
        priority: h.priority.value(),
    }
}

fn encode(
    b: &mut Batch,
    sets: &mut SetRegistry,
    ctx: &mut BatchCtx,
    f: Family,
    t: &str,
    op: &Op,
) -> Result<(), CompileError> {
    let fam = nfproto(f);
    match op {
        Op::AddTable { comment } => {
            let mut u = Vec::new();
            if let Some(c) = comment {
                kproxy_netlink::obj::udata_str(&mut u, 0, c);
            }
            b.add_table(fam, t, &u);
        }
        Op::DeleteTable => {
            b.delete_table(fam, t);
            sets.retain(|(sf, st, _), _| !(*sf == f && st == t));
        }
        Op::AddChain { name, hook } => {
            b.add_chain(fam, t, name, hook.as_ref().map(hook_of).as_ref());
        }
        Op::FlushChain(name) => {
            b.remove(Removal::FlushChain, fam, t, name);
        }
        Op::DeleteChain(name) => {
            b.remove(Removal::DeleteChain, fam, t, name);
        }
        Op::AddRule { chain, rule } => {
            let c = compile::rule(f, t, &rule.expr, sets, ctx)?;
            for a in &c.anon {
                b.add_set(fam, t, &a.spec);
                elems_msgs(b, true, fam, t, SetRef::Id(a.spec.id), &a.elems);
            }
            let mut u = Vec::new();
            if let Some(cm) = &rule.comment {
                kproxy_netlink::obj::udata_str(&mut u, 0, cm);
            }
            b.add_rule(fam, t, chain, &c.exprs, &u);
        }
        Op::AddSet(s) => {
            let id = ctx.next_id;
            ctx.next_id += 1;
            let (spec, info) = compile::set_spec(f, s, id)?;
            b.add_set(fam, t, &spec);
            sets.insert((f, t.to_string(), s.name.clone()), info);
        }
        Op::FlushSet { name, .. } => {
            b.remove(Removal::FlushSet, fam, t, name);
        }
        Op::DeleteSet { name, .. } => {
            b.remove(Removal::DeleteSet, fam, t, name);
            sets.remove(&(f, t.to_string(), name.clone()));
        }
        Op::AddElements { set, elements } => {
            let info = set_info(sets, f, t, set)?;
            let e = compile::elements(
                set,
                info,
                elements.iter().map(|(k, e)| (k.as_str(), Some(e))),
            )?;
            elems_msgs(b, true, fam, t, SetRef::Name(set), &e);
        }
        Op::DeleteElements { set, keys } => {
            let info = set_info(sets, f, t, set)?;
            let e = compile::elements(set, info, keys.iter().map(|k| (k.as_str(), None)))?;
            elems_msgs(b, false, fam, t, SetRef::Name(set), &e);
        }
    }
    Ok(())
}

fn set_info<'a>(
    sets: &'a HashMap<(Family, String, String), compile::SetInfo>,
    f: Family,
    t: &str,
    set: &str,
) -> Result<&'a compile::SetInfo, CompileError> {
    sets.get(&(f, t.to_string(), set.to_string()))
        .ok_or_else(|| CompileError {
            what: format!("set {set}"),
            reason: format!(
                "not declared in table {} {t} by this transport (add the set first)",
                f.as_str()
            ),
        })
}

/// Elements as messages of at most [`ELEMS_MAX_BYTES`] each.
fn elems_msgs(b: &mut Batch, add: bool, fam: u8, t: &str, set: SetRef<'_>, elems: &[ElemSpec]) {
    let mut start = 0;
    let mut bytes = 0;
    for (i, e) in elems.iter().enumerate() {
        let l = e.wire_len();
        if bytes + l > ELEMS_MAX_BYTES && i > start {
            b.set_elems(add, fam, t, set, &elems[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += l;
    }
    if start < elems.len() || elems.is_empty() {
        b.set_elems(add, fam, t, set, &elems[start..]);
    }
}
