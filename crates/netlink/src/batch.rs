//! The write side: an nf_tables transaction as one nfnetlink batch
//! (`NFNL_MSG_BATCH_BEGIN`, the messages, `NFNL_MSG_BATCH_END`), encoded
//! into a list of chunks of bounded size, and [`NfSocket::send_batch`](crate::NfSocket::send_batch),
//! which hands every chunk to the kernel in one `sendmsg` (one iovec per
//! chunk) so no buffer holds the whole batch.
//!
//! The kernel applies a batch atomically: every message is checked, and
//! the whole batch is committed or none of it. Errors come back as
//! `NLMSG_ERROR` messages carrying the failing message's sequence number
//! (and, with extended acknowledgements, a reason), which
//! [`BatchError`] reports so the caller can name the object at fault.

use std::io::IoSlice;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST};

use crate::msg::{NFGENMSG_LEN, NFNL_SUBSYS_NFTABLES, NLMSG_HDRLEN};

/// `NFNL_MSG_BATCH_BEGIN`.
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
/// `NFNL_MSG_BATCH_END`.
const NFNL_MSG_BATCH_END: u16 = 17;
/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 0x8000;
/// `NLM_F_APPEND`.
pub const NLM_F_APPEND: u16 = 0x800;
/// `NLM_F_EXCL`.
pub const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`, re-exported for message builders.
pub const CREATE: u16 = NLM_F_CREATE;
/// The size a chunk grows to before the next message starts a new one.
/// A few hundred iovecs carry a batch of 100 MiB (`IOV_MAX` is 1024).
pub const CHUNK: usize = 256 * 1024;

/// The nf_tables message types the write side sends
/// (`enum nf_tables_msg_types`).
pub mod msg_type {
    /// `NFT_MSG_NEWTABLE`.
    pub const NEWTABLE: u8 = 0;
    /// `NFT_MSG_DELTABLE`.
    pub const DELTABLE: u8 = 2;
    /// `NFT_MSG_NEWCHAIN`.
    pub const NEWCHAIN: u8 = 3;
    /// `NFT_MSG_DELCHAIN`.
    pub const DELCHAIN: u8 = 5;
    /// `NFT_MSG_NEWRULE`.
    pub const NEWRULE: u8 = 6;
    /// `NFT_MSG_DELRULE`.
    pub const DELRULE: u8 = 8;
    /// `NFT_MSG_NEWSET`.
    pub const NEWSET: u8 = 9;
    /// `NFT_MSG_DELSET`.
    pub const DELSET: u8 = 11;
    /// `NFT_MSG_NEWSETELEM`.
    pub const NEWSETELEM: u8 = 12;
    /// `NFT_MSG_DELSETELEM`.
    pub const DELSETELEM: u8 = 14;
}

/// A netlink attribute writer: attributes (and nests of attributes)
/// appended to a byte buffer, 4-byte aligned.
pub trait AttrWriter {
    /// The buffer written to.
    fn buf(&mut self) -> &mut Vec<u8>;

    /// An attribute with a raw value.
    fn put(&mut self, kind: u16, value: &[u8]) {
        let b = self.buf();
        let len = 4 + value.len();
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(value);
        pad(b);
    }

    /// A NUL-terminated string attribute.
    fn put_str(&mut self, kind: u16, value: &str) {
        let b = self.buf();
        let len = 4 + value.len() + 1;
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(value.as_bytes());
        b.push(0);
        pad(b);
    }

    /// A big-endian u32 attribute.
    fn put_be32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    /// A big-endian u64 attribute.
    fn put_be64(&mut self, kind: u16, value: u64) {
        self.put(kind, &value.to_be_bytes());
    }

    /// Start a nested attribute; close it with [`AttrWriter::end_nest`].
    fn nest(&mut self, kind: u16) -> Nest {
        let b = self.buf();
        let at = b.len();
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        Nest(at)
    }

    /// Close a nested attribute.
    fn end_nest(&mut self, nest: Nest) {
        let b = self.buf();
        let len = (b.len() - nest.0) as u16;
        b[nest.0..nest.0 + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

fn pad(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// An open nested attribute (its offset in the buffer).
#[derive(Debug)]
#[must_use]
pub struct Nest(usize);

impl AttrWriter for Vec<u8> {
    fn buf(&mut self) -> &mut Vec<u8> {
        self
    }
}

/// One nfnetlink batch being built: chunks of whole messages.
#[derive(Debug)]
pub struct Batch {
    chunks: Vec<Vec<u8>>,
    cur: Vec<u8>,
    msg_start: usize,
    seq0: u32,
    next_seq: u32,
    chunk: usize,
    bytes: usize,
}

impl AttrWriter for Batch {
    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.cur
    }
}

impl Batch {
    /// A batch whose messages are numbered from `seq0` (the batch begin
    /// message takes `seq0`, the first command `seq0 + 1`).
    pub fn new(seq0: u32) -> Self {
        Batch::with_chunk(seq0, CHUNK)
    }

    /// A batch with chunks of about `chunk` bytes.
    pub fn with_chunk(seq0: u32, chunk: usize) -> Self {
        let mut b = Batch {
            chunks: Vec::new(),
            cur: Vec::with_capacity(chunk.min(CHUNK) + 4096),
            msg_start: 0,
            seq0,
            next_seq: seq0,
            chunk: chunk.max(4096),
            bytes: 0,
        };
        b.control(NFNL_MSG_BATCH_BEGIN);
        b
    }

    fn control(&mut self, kind: u16) {
        self.header(kind, NLM_F_REQUEST, 0);
        // nfgenmsg.res_id is the subsystem, big-endian.
        let n = self.cur.len();
        self.cur[n - 2..].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        self.end();
    }

    fn header(&mut self, kind: u16, flags: u16, family: u8) -> u32 {
        if self.cur.len() >= self.chunk {
            let full = std::mem::replace(&mut self.cur, Vec::with_capacity(self.chunk + 4096));
            self.chunks.push(full);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.msg_start = self.cur.len();
        let b = &mut self.cur;
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&[family, 0, 0, 0]);
        seq
    }

    /// Start an nf_tables message (`msg` from [`msg_type`]) with extra
    /// netlink `flags` (`NLM_F_REQUEST` is always set); returns its
    /// sequence number. Attributes follow; [`Batch::end`] closes it.
    pub fn begin(&mut self, msg: u8, flags: u16, family: u8) -> u32 {
        self.header(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg),
            NLM_F_REQUEST | flags,
            family,
        )
    }

    /// Close the current message.
    pub fn end(&mut self) {
        let len = (self.cur.len() - self.msg_start) as u32;
        self.bytes += len as usize;
        self.cur[self.msg_start..self.msg_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// The sequence number of the batch begin message.
    pub fn first_seq(&self) -> u32 {
        self.seq0
    }

    /// The sequence number the next message will get.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Command messages so far (begin and end excluded).
    pub fn messages(&self) -> u32 {
        self.next_seq.wrapping_sub(self.seq0).saturating_sub(1)
    }

    /// Close the batch (`NFNL_MSG_BATCH_END`) and return its chunks.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.control(NFNL_MSG_BATCH_END);
        if !self.cur.is_empty() {
            self.chunks.push(std::mem::take(&mut self.cur));
        }
        self.chunks
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Nothing but the batch begin message.
    pub fn is_empty(&self) -> bool {
        self.messages() == 0
    }
}

/// The kernel refused a batch: nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// The sequence number of the message the kernel refused.
    pub seq: u32,
    /// The errno.
    pub errno: i32,
    /// The extended acknowledgement's message, when the kernel gave one.
    pub message: Option<String>,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_ACK_TLVS`: the error message carries extended-ack attributes.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// `NLM_F_CAPPED`: the echoed request is cut to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLMSGERR_ATTR_MSG`.
const NLMSGERR_ATTR_MSG: u16 = 1;

impl crate::NfSocket {
    /// Send a finished batch in one `sendmsg` (one iovec per chunk; the
    /// socket's send buffer is raised to fit it, as nft does) and collect
    /// the kernel's verdict. The kernel processes a batch while `sendmsg`
    /// runs, so its errors are waiting on the socket when it returns; an
    /// acknowledged request sent afterwards marks their end.
    pub fn send_batch(&mut self, chunks: &[Vec<u8>]) -> Result<(), SendError> {
        use nix::sys::socket::{MsgFlags, NetlinkAddr, sendmsg, setsockopt, sockopt};
        let total: usize = chunks.iter().map(Vec::len).sum();
        let fd = &self.socket;
        if total > 200 * 1024 {
            // SO_SNDBUFFORCE (root), else SO_SNDBUF within rmem_max.
            let want = total.saturating_add(64 * 1024);
            if setsockopt(fd, sockopt::SndBufForce, &want).is_err() {
                let _ = setsockopt(fd, sockopt::SndBuf, &want);
            }
        }
        let iov: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
        let mut sent = 0usize;
        // One sendmsg carries the batch; IOV_MAX bounds iovecs per call.
        for part in iov.chunks(1024) {
            let want: usize = part.iter().map(|s| s.len()).sum();
            let n = sendmsg::<NetlinkAddr>(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                part,
                &[],
                MsgFlags::empty(),
                None,
            )
            .map_err(|e| SendError::Io(std::io::Error::from(e)))?;
            if n != want {
                return Err(SendError::Io(std::io::Error::other(format!(
                    "short netlink send: {n} of {want} bytes"
                ))));
            }
            sent += n;
        }
        debug_assert_eq!(sent, total);
        self.collect_batch_errors()
    }

    /// Read the replies to a batch: errors (with sequence numbers) until
    /// the acknowledgement of a barrier request sent after it.
    fn collect_batch_errors(&mut self) -> Result<(), SendError> {
        // A GETGEN with NLM_F_ACK: its reply and ack follow every reply
        // the kernel queued for the batch.
        self.seq = self.seq.wrapping_add(1);
        let barrier = self.seq.wrapping_add(1_000_000_000);
        let mut req = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN);
        req.extend_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
        req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | 16u16).to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        req.extend_from_slice(&barrier.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(&[0, 0, 0, 0]);
        self.socket.send(&req, 0).map_err(SendError::Io)?;
        let mut first: Option<BatchError> = None;
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(SendError::Io)?;
            let mut data = &self.buf[..n.min(self.buf.len())];
            while data.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
                let kind = u16::from_ne_bytes([data[4], data[5]]);
                let flags = u16::from_ne_bytes([data[6], data[7]]);
                let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
                let len = len.clamp(NLMSG_HDRLEN, data.len());
                let payload = &data[NLMSG_HDRLEN..len];
                data = &data[len.next_multiple_of(4).min(data.len())..];
                if kind != NLMSG_ERROR {
                    continue;
                }
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                if seq == barrier {
                    return match first {
                        Some(e) => Err(SendError::Rejected(e)),
                        None if code != 0 => {
                            Err(SendError::Io(std::io::Error::from_raw_os_error(-code)))
                        }
                        None => Ok(()),
                    };
                }
                if code == 0 || first.is_some() {
                    continue;
                }
                first = Some(BatchError {
                    seq,
                    errno: -code,
                    message: ext_ack_message(payload, flags),
                });
            }
        }
    }
}

/// The `NLMSGERR_ATTR_MSG` of an error message (after the errno and the
/// echoed request header or whole request).
fn ext_ack_message(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let l = &payload[4..8];
        u32::from_ne_bytes([l[0], l[1], l[2], l[3]]) as usize
    };
    let tlvs = payload.get(4 + echoed.next_multiple_of(4)..)?;
    crate::msg::find_str(tlvs, NLMSGERR_ATTR_MSG).map(str::to_string)
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The socket failed (nothing or not all was sent).
    #[error("netlink socket: {0}")]
    Io(std::io::Error),
    /// The kernel refused a message; the batch was rolled back.
    #[error("{0}")]
    Rejected(BatchError),
}

/// The flags of an `add` (`NLM_F_CREATE`, no `NLM_F_EXCL`).
pub const ADD: u16 = CREATE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_straddle_chunks() {
        let mut b = Batch::with_chunk(100, 4096);
        for i in 0..1000 {
            b.begin(msg_type::NEWTABLE, ADD, 2);
            b.put_str(1, &format!("table-{i}"));
            b.end();
        }
        assert_eq!(b.messages(), 1000);
        let chunks = b.finish();
        assert!(chunks.len() > 1);
        let mut seqs = Vec::new();
        for c in &chunks {
            let mut d = &c[..];
            while !d.is_empty() {
                let len = u32::from_ne_bytes(d[..4].try_into().unwrap()) as usize;
                assert!(len >= 20 && len <= d.len(), "message inside its chunk");
                seqs.push(u32::from_ne_bytes(d[8..12].try_into().unwrap()));
                d = &d[len..];
            }
        }
        assert_eq!(seqs, (100..1102).collect::<Vec<_>>());
    }

    #[test]
    fn nests_carry_their_length() {
        let mut v = Vec::new();
        let n = v.nest(4);
        v.put_be32(1, 7);
        v.put_str(2, "ab");
        v.end_nest(n);
        assert_eq!(u16::from_ne_bytes([v[0], v[1]]) as usize, v.len());
        assert_eq!(u16::from_ne_bytes([v[2], v[3]]), 4 | 0x8000);
        assert_eq!(v.len(), 4 + 8 + 8);
    }
}
