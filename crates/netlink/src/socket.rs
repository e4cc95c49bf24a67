//! [`NfSocket`]: one `NETLINK_NETFILTER` socket, one request at a time.

use netlink_packet_core::{NLM_F_DUMP_INTR, NetlinkBuffer};
use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use crate::Error;
use crate::msg::{NFGENMSG_LEN, NFNL_SUBSYS_NFTABLES, Request};

/// `NLMSG_ERROR`: an error or, with code 0, an acknowledgement.
const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
const NLMSG_DONE: u16 = 3;
/// `MSG_TRUNC` for `recv(2)`: return the datagram's real length.
const MSG_TRUNC: i32 = 0x20;
/// The receive buffer. The kernel fills a dump datagram up to the size of
/// the reader's buffer (32 KiB at first); one nf_tables object is far
/// smaller.
const RECV_BUF: usize = 128 * 1024;

/// One reply message of an nf_tables request.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The nf_tables message type (`NFT_MSG_NEW*`).
    pub msg: u8,
    /// `nfgenmsg.nfgen_family`.
    pub family: u8,
    /// The attributes after the `nfgenmsg` header.
    pub attrs: &'a [u8],
}

/// A netfilter netlink socket.
#[derive(Debug)]
pub struct NfSocket {
    pub(crate) socket: Socket,
    pub(crate) seq: u32,
    pub(crate) buf: Vec<u8>,
    /// The namespace it was opened in (`None`: this process's).
    netns: Option<String>,
}

impl NfSocket {
    /// A socket in this process's network namespace.
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        // Errors name their cause (extended ACK) and echo only the
        // failing message's header, not a whole element list.
        socket.set_ext_ack(true)?;
        socket.set_cap_ack(true)?;
        Ok(NfSocket {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
            netns: None,
        })
    }

    /// A socket in the network namespace `ip netns` calls `name`
    /// (`/run/netns/NAME`). A socket belongs to the namespace it was
    /// created in, so it is created on a short-lived thread that entered
    /// the namespace; this process's namespace is left alone.
    pub fn open_in_netns(name: &str) -> Result<Self, Error> {
        let path = format!("/run/netns/{name}");
        let netns = |reason: String| Error::Netns {
            name: name.to_string(),
            reason,
        };
        let file = std::fs::File::open(&path).map_err(|e| netns(format!("{path}: {e}")))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| netns(format!("setns: {e}")))?;
                let mut s = NfSocket::open()?;
                s.netns = Some(name.to_string());
                Ok(s)
            })
            .join()
            .unwrap_or_else(|_| Err(netns("the helper thread panicked".into())))
        })
    }

    /// A socket in network namespace `netns`, or (`None`) in this
    /// process's.
    pub fn open_in(netns: Option<&str>) -> Result<Self, Error> {
        match netns {
            Some(name) => NfSocket::open_in_netns(name),
            None => NfSocket::open(),
        }
    }

    /// The socket kept in `slot`, opened in `netns` first when the slot is
    /// empty: for a reader that keeps its socket between calls (and empties
    /// the slot after an error, so that the next call opens a new one).
    pub fn kept<'a>(
        slot: &'a mut Option<NfSocket>,
        netns: Option<&str>,
    ) -> Result<&'a mut Self, Error> {
        let s = match slot.take() {
            Some(s) => s,
            None => NfSocket::open_in(netns)?,
        };
        Ok(slot.insert(s))
    }

    /// A new socket in the same network namespace.
    pub fn reopen(&self) -> Result<Self, Error> {
        NfSocket::open_in(self.netns.as_deref())
    }

    /// Send the dump `req` on a socket of its own and hand the messages of
    /// the first reply datagram (about 32 KiB) to `each`; then close that
    /// socket, which ends the dump in the kernel. `true` when that was the
    /// whole dump. The probe of a large set: reading it whole costs the
    /// kernel more than linear time (a hash set's dump walks the set from
    /// its start for every datagram).
    pub fn request_first(&self, req: &Request, each: impl FnMut(Reply<'_>)) -> Result<bool, Error> {
        let mut probe = self.reopen()?;
        probe.exchange(req, each, true)
    }

    /// Send `req` and hand each nf_tables reply message to `each`, until
    /// the dump ends (or, for a get, the acknowledgement arrives). A dump
    /// the kernel marks as interrupted by a concurrent change is read to
    /// its end and then reported as [`Error::Interrupted`].
    pub fn request(&mut self, req: &Request, each: impl FnMut(Reply<'_>)) -> Result<(), Error> {
        self.exchange(req, each, false).map(|_| ())
    }

    /// [`NfSocket::request`], or with `first_only` only the first reply
    /// datagram (`Ok(false)` when more was to come).
    fn exchange(
        &mut self,
        req: &Request,
        mut each: impl FnMut(Reply<'_>),
        first_only: bool,
    ) -> Result<bool, Error> {
        let name = req.msg.name();
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.socket.send(&req.encode(seq), 0)?;
        let mut interrupted = false;
        loop {
            for m in self.recv(name)? {
                let Message {
                    kind,
                    flags,
                    seq: msg_seq,
                    payload,
                } = m?;
                if msg_seq != seq {
                    continue;
                }
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                match kind {
                    NLMSG_DONE => return finish(name, interrupted).map(|()| true),
                    NLMSG_ERROR => {
                        let code = error_code(name, payload)?;
                        if code == 0 {
                            return finish(name, interrupted).map(|()| true);
                        }
                        return Err(Error::Kernel {
                            request: name,
                            source: std::io::Error::from_raw_os_error(-code),
                        });
                    }
                    k if k >> 8 == NFNL_SUBSYS_NFTABLES && payload.len() >= NFGENMSG_LEN => {
                        each(Reply {
                            msg: (k & 0xff) as u8,
                            family: payload[0],
                            attrs: &payload[NFGENMSG_LEN..],
                        });
                    }
                    _ => {}
                }
            }
            if first_only {
                return Ok(false);
            }
        }
    }
}

/// One reply message of a [`NfSocket::exchange_raw`] exchange.
#[derive(Debug, Clone, Copy)]
pub enum RawReply<'a> {
    /// A data message: the full netlink type (`subsystem << 8 | message`),
    /// its sequence number and the payload after `nlmsghdr` (`nfgenmsg`
    /// included).
    Data {
        /// `nlmsg_type`.
        kind: u16,
        /// `nlmsg_seq`.
        seq: u32,
        /// The payload.
        payload: &'a [u8],
    },
    /// An error (`errno` > 0) or an acknowledgement (`errno` 0) of the
    /// request with sequence number `seq`.
    Ack {
        /// `nlmsg_seq` of the request.
        seq: u32,
        /// The positive errno, 0 for an acknowledgement.
        errno: i32,
    },
}

impl NfSocket {
    /// The next sequence number (for building requests by hand).
    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Send `bytes`, one or more complete netlink messages of any
    /// nfnetlink subsystem, and hand every reply with a sequence number in
    /// `first..=last` to `each`, until the message `last` ends (its
    /// `NLMSG_DONE` or its error/acknowledgement). `last` must ask for an
    /// acknowledgement or be a dump; earlier messages need not (the kernel
    /// handles the messages of one send in order, and reports an error
    /// whatever the flags). A dump interrupted by a concurrent change is
    /// read to its end and then reported as [`Error::Interrupted`].
    pub fn exchange_raw(
        &mut self,
        request: &'static str,
        bytes: &[u8],
        (first, last): (u32, u32),
        mut each: impl FnMut(RawReply<'_>),
    ) -> Result<(), Error> {
        self.socket.send(bytes, 0)?;
        let mut interrupted = false;
        let in_range = |s: u32| s.wrapping_sub(first) <= last.wrapping_sub(first);
        loop {
            for m in self.recv(request)? {
                let Message {
                    kind,
                    flags,
                    seq,
                    payload,
                } = m?;
                if !in_range(seq) {
                    continue;
                }
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                match kind {
                    NLMSG_DONE if seq == last => return finish(request, interrupted),
                    NLMSG_DONE => {}
                    NLMSG_ERROR => {
                        let code = error_code(request, payload)?;
                        each(RawReply::Ack { seq, errno: -code });
                        if seq == last {
                            return finish(request, interrupted);
                        }
                    }
                    _ => each(RawReply::Data { kind, seq, payload }),
                }
            }
        }
    }
}

impl NfSocket {
    /// Receive one datagram: its netlink messages, in order.
    fn recv(&mut self, request: &'static str) -> Result<Messages<'_>, Error> {
        let n = self.socket.recv(&mut &mut self.buf[..], MSG_TRUNC)?;
        if n > self.buf.len() {
            return Err(Error::Decode {
                request,
                reason: format!("a {n}-byte datagram exceeds the {RECV_BUF}-byte buffer"),
            });
        }
        Ok(Messages {
            data: &self.buf[..n],
            request,
        })
    }
}

/// One netlink message of a received datagram.
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The netlink messages of one datagram; a malformed header ends it with
/// an error.
struct Messages<'a> {
    data: &'a [u8],
    request: &'static str,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let data = self.data;
        if data.is_empty() {
            return None;
        }
        let nl = match NetlinkBuffer::new_checked(data) {
            Ok(nl) => nl,
            Err(e) => {
                self.data = &[];
                return Some(Err(Error::Decode {
                    request: self.request,
                    reason: e.to_string(),
                }));
            }
        };
        let len = (nl.length() as usize).min(data.len());
        let aligned = len.next_multiple_of(4).min(data.len());
        self.data = &data[aligned..];
        Some(Ok(Message {
            kind: nl.message_type(),
            flags: nl.flags(),
            seq: nl.sequence_number(),
            payload: nl.payload(),
        }))
    }
}

/// The (negative) errno of an `NLMSG_ERROR` message, 0 for an acknowledgement.
fn error_code(request: &'static str, payload: &[u8]) -> Result<i32, Error> {
    payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .ok_or_else(|| Error::Decode {
            request,
            reason: "short error message".into(),
        })
}

fn finish(request: &'static str, interrupted: bool) -> Result<(), Error> {
    if interrupted {
        Err(Error::Interrupted { request })
    } else {
        Ok(())
    }
}
