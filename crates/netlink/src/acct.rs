//! Extended accounting counters over nfnetlink_acct (`NFNL_SUBSYS_ACCT`),
//! the named packet and byte counters `-m nfacct --nfacct-name NAME`
//! matches count into, as the `nfacct` tool creates and reads them.
//!
//! - [`ensure`]: create a counter unless it exists (`NFNL_MSG_ACCT_NEW`
//!   with `NLM_F_CREATE | NLM_F_EXCL`; `EEXIST` is success);
//! - [`get`]: read one counter (`NFNL_MSG_ACCT_GET`).
//!
//! Numbers are from `include/uapi/linux/netfilter/nfnetlink_acct.h`.

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};

use crate::msg::{NFGENMSG_LEN, find, find_str};
use crate::nfnl::Writer;
use crate::socket::RawReply;
use crate::{Error, NfSocket};

/// `NFNL_SUBSYS_ACCT`.
pub const NFNL_SUBSYS_ACCT: u16 = 7;
/// `NFNL_MSG_ACCT_NEW`.
const NFNL_MSG_ACCT_NEW: u8 = 0;
/// `NFNL_MSG_ACCT_GET`.
const NFNL_MSG_ACCT_GET: u8 = 1;
/// `NFACCT_NAME`.
const NFACCT_NAME: u16 = 1;
/// `NFACCT_PKTS` (big-endian u64).
const NFACCT_PKTS: u16 = 2;
/// `NFACCT_BYTES` (big-endian u64).
const NFACCT_BYTES: u16 = 3;
/// `NFACCT_NAME_MAX`, the terminating NUL included.
pub const NAME_MAX: usize = 32;
/// `AF_UNSPEC`: counters belong to no family.
const AF_UNSPEC: u8 = 0;

const EEXIST: i32 = 17;

/// One counter's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets counted.
    pub packets: u64,
    /// Bytes counted.
    pub bytes: u64,
}

fn request(sock: &mut NfSocket, msg: u8, flags: u16, name: &str) -> (Writer, u32) {
    let seq = sock.next_seq();
    let mut w = Writer::new();
    w.begin(
        NFNL_SUBSYS_ACCT,
        msg,
        NLM_F_REQUEST | NLM_F_ACK | flags,
        seq,
        AF_UNSPEC,
    );
    w.attr_str(NFACCT_NAME, name);
    w.end();
    (w, seq)
}

fn kernel(request: &'static str, errno: i32) -> Error {
    Error::Kernel {
        request,
        source: std::io::Error::from_raw_os_error(errno),
    }
}

/// Create counter `name` with zero counts unless it exists. Fails with the
/// kernel's errno when the kernel has no nfnetlink_acct (`EINVAL` or
/// `EOPNOTSUPP`, see [`Error::errno`]).
pub fn ensure(sock: &mut NfSocket, name: &str) -> Result<(), Error> {
    let (w, seq) = request(sock, NFNL_MSG_ACCT_NEW, NLM_F_CREATE | NLM_F_EXCL, name);
    let mut errno = 0;
    sock.exchange_raw("nfacct NEW", w.bytes(), (seq, seq), |r| {
        if let RawReply::Ack { errno: e, .. } = r {
            errno = e;
        }
    })?;
    match errno {
        0 | EEXIST => Ok(()),
        e => Err(kernel("nfacct NEW", e)),
    }
}

/// Read counter `name`; `ENOENT` ([`Error::is_not_found`]) when it does
/// not exist.
pub fn get(sock: &mut NfSocket, name: &str) -> Result<Counter, Error> {
    let (w, seq) = request(sock, NFNL_MSG_ACCT_GET, 0, name);
    let mut errno = 0;
    let mut got = None;
    sock.exchange_raw("nfacct GET", w.bytes(), (seq, seq), |r| match r {
        RawReply::Data { kind, payload, .. }
            if kind == (NFNL_SUBSYS_ACCT << 8) | u16::from(NFNL_MSG_ACCT_NEW) =>
        {
            let attrs = payload.get(NFGENMSG_LEN..).unwrap_or_default();
            let be64 = |k| {
                find(attrs, k)
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map(u64::from_be_bytes)
            };
            if find_str(attrs, NFACCT_NAME) == Some(name) {
                got = Some((be64(NFACCT_PKTS), be64(NFACCT_BYTES)));
            }
        }
        RawReply::Data { .. } => {}
        RawReply::Ack { errno: e, .. } => errno = e,
    })?;
    if errno != 0 {
        return Err(kernel("nfacct GET", errno));
    }
    match got {
        Some((Some(packets), Some(bytes))) => Ok(Counter { packets, bytes }),
        _ => Err(Error::Decode {
            request: "nfacct GET",
            reason: format!("no packet and byte counts for {name}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::NLMSG_HDRLEN;

    #[test]
    fn encodes_a_create() {
        let mut w = Writer::new();
        w.begin(
            NFNL_SUBSYS_ACCT,
            NFNL_MSG_ACCT_NEW,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            4,
            AF_UNSPEC,
        );
        w.attr_str(NFACCT_NAME, "ct_state_invalid_dropped_pkts");
        w.end();
        let b = w.bytes();
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 7 << 8);
        assert_eq!(u16::from_ne_bytes([b[6], b[7]]), 0x1 | 0x4 | 0x400 | 0x200);
        let attrs = &b[NLMSG_HDRLEN + NFGENMSG_LEN..];
        assert_eq!(
            find_str(attrs, NFACCT_NAME),
            Some("ct_state_invalid_dropped_pkts")
        );
    }
}
