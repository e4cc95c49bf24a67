//! Conntrack over ctnetlink (`NFNL_SUBSYS_CTNETLINK`): a filtered dump of
//! one protocol's flows, deletes, and (for tests and benchmarks) creates,
//! as `conntrack -L`, `-D` and `-I` do, without the tool.
//!
//! - [`dump`]: `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP` for one family; the
//!   kernel filters on the protocol (`CTA_FILTER`, Linux 5.8 and later;
//!   older kernels reject the filter and the protocol is filtered here
//!   instead); each flow is decoded into a [`Flow`] and handed to a
//!   callback, nothing is kept;
//! - [`delete`]: one `IPCTNL_MSG_CT_DELETE` per flow, by its original
//!   tuple, zone and id (so a new flow that reuses the tuple is not
//!   touched), many per `send`, with one acknowledgement per send;
//! - [`create`]: `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE`, likewise batched.
//!
//! Numbers are from `include/uapi/linux/netfilter/nfnetlink_conntrack.h`.
//!
//! Why here rather than on `netlink-packet-netfilter` (0.4, whose
//! `conntrack` module types the same messages): it has no `CTA_FILTER`,
//! `CTA_ZONE` or `CTA_ID` and no nfnetlink_acct at all, it builds a tree
//! of vectors per flow where the cleanup needs five fields, and it would
//! add `derive_more`, `zerocopy`, `bitflags` and `libc` for what is a few
//! attribute constants on top of the socket, framing and attribute
//! lookup this crate already has (`netlink-sys`, `netlink-packet-core`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};

use crate::msg::{NFGENMSG_LEN, find, find_be32};
use crate::nfnl::Writer;
use crate::socket::RawReply;
use crate::{Error, Family, NfSocket};

/// `NFNL_SUBSYS_CTNETLINK`.
pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `IPCTNL_MSG_CT_NEW`.
const IPCTNL_MSG_CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`.
const IPCTNL_MSG_CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`.
const IPCTNL_MSG_CT_DELETE: u8 = 2;

/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;

/// `enum ctattr_type`.
mod cta {
    pub const TUPLE_ORIG: u16 = 1;
    pub const TUPLE_REPLY: u16 = 2;
    pub const TIMEOUT: u16 = 7;
    pub const ID: u16 = 12;
    pub const ZONE: u16 = 18;
    pub const FILTER: u16 = 25;
    /// `enum ctattr_tuple`.
    pub const TUPLE_IP: u16 = 1;
    pub const TUPLE_PROTO: u16 = 2;
    /// `enum ctattr_ip`.
    pub const IP_V4_SRC: u16 = 1;
    pub const IP_V4_DST: u16 = 2;
    pub const IP_V6_SRC: u16 = 3;
    pub const IP_V6_DST: u16 = 4;
    /// `enum ctattr_l4proto`.
    pub const PROTO_NUM: u16 = 1;
    pub const PROTO_SRC_PORT: u16 = 2;
    pub const PROTO_DST_PORT: u16 = 3;
    /// `enum ctattr_filter`.
    pub const FILTER_ORIG_FLAGS: u16 = 1;
    pub const FILTER_REPLY_FLAGS: u16 = 2;
    /// `CTA_FILTER_F_CTA_PROTO_NUM` (net/netfilter/nf_conntrack_netlink.c).
    pub const FILTER_F_PROTO_NUM: u32 = 1 << 3;
}

/// How many requests go into one `send` (each gets its own error reply
/// when it fails, which must fit the socket's receive buffer).
const BATCH: usize = 128;

/// One direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// One conntrack entry, as much of it as kproxy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The layer-4 protocol (`IPPROTO_*`).
    pub proto: u8,
    /// The original direction (client to service).
    pub orig: Tuple,
    /// The reply direction (the DNAT target back to the client).
    pub reply: Tuple,
    /// The conntrack zone (0 by default).
    pub zone: u16,
    /// The entry's id (`CTA_ID`), when the kernel gave one.
    pub id: Option<u32>,
}

/// What [`delete`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Entries deleted.
    pub deleted: u64,
    /// Entries that were gone already (expired, or replaced by a new flow
    /// with the same tuple: `ENOENT`).
    pub gone: u64,
    /// Deletes the kernel refused for another reason.
    pub failed: u64,
}

fn decode_tuple(attrs: &[u8]) -> Option<(u8, Tuple)> {
    let ip = find(attrs, cta::TUPLE_IP)?;
    let (src, dst) = if let (Some(s), Some(d)) = (
        find(ip, cta::IP_V4_SRC).and_then(|v| <[u8; 4]>::try_from(v).ok()),
        find(ip, cta::IP_V4_DST).and_then(|v| <[u8; 4]>::try_from(v).ok()),
    ) {
        (IpAddr::V4(Ipv4Addr::from(s)), IpAddr::V4(Ipv4Addr::from(d)))
    } else {
        let s = <[u8; 16]>::try_from(find(ip, cta::IP_V6_SRC)?).ok()?;
        let d = <[u8; 16]>::try_from(find(ip, cta::IP_V6_DST)?).ok()?;
        (IpAddr::V6(Ipv6Addr::from(s)), IpAddr::V6(Ipv6Addr::from(d)))
    };
    let proto = find(attrs, cta::TUPLE_PROTO)?;
    let num = *find(proto, cta::PROTO_NUM)?.first()?;
    let port = |k| {
        find(proto, k)
            .and_then(|v| <[u8; 2]>::try_from(v).ok())
            .map(u16::from_be_bytes)
            .unwrap_or(0)
    };
    Some((
        num,
        Tuple {
            src,
            dst,
            sport: port(cta::PROTO_SRC_PORT),
            dport: port(cta::PROTO_DST_PORT),
        },
    ))
}

/// Decode one `IPCTNL_MSG_CT_NEW` message's attributes (after `nfgenmsg`).
pub fn decode(attrs: &[u8]) -> Option<Flow> {
    let (proto, orig) = decode_tuple(find(attrs, cta::TUPLE_ORIG)?)?;
    let (_, reply) = decode_tuple(find(attrs, cta::TUPLE_REPLY)?)?;
    let zone = find(attrs, cta::ZONE)
        .and_then(|v| <[u8; 2]>::try_from(v).ok())
        .map(u16::from_be_bytes)
        .unwrap_or(0);
    Some(Flow {
        proto,
        orig,
        reply,
        zone,
        id: find_be32(attrs, cta::ID),
    })
}

fn write_tuple(w: &mut Writer, kind: u16, proto: u8, t: &Tuple) {
    let outer = w.nest(kind);
    let ip = w.nest(cta::TUPLE_IP);
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            w.attr(cta::IP_V4_SRC, &s.octets());
            w.attr(cta::IP_V4_DST, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            w.attr(cta::IP_V6_SRC, &v6(s).octets());
            w.attr(cta::IP_V6_DST, &v6(d).octets());
        }
    }
    w.nest_end(ip);
    let p = w.nest(cta::TUPLE_PROTO);
    w.attr(cta::PROTO_NUM, &[proto]);
    w.attr(cta::PROTO_SRC_PORT, &t.sport.to_be_bytes());
    w.attr(cta::PROTO_DST_PORT, &t.dport.to_be_bytes());
    w.nest_end(p);
    w.nest_end(outer);
}

/// The dump request: every `proto` flow of `family`, filtered in the
/// kernel when `filtered`.
fn dump_request(seq: u32, family: Family, proto: u8, filtered: bool) -> Writer {
    let mut w = Writer::new();
    w.begin(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family.nfproto(),
    );
    if filtered {
        let orig = w.nest(cta::TUPLE_ORIG);
        let p = w.nest(cta::TUPLE_PROTO);
        w.attr(cta::PROTO_NUM, &[proto]);
        w.nest_end(p);
        w.nest_end(orig);
        let f = w.nest(cta::FILTER);
        w.attr(
            cta::FILTER_ORIG_FLAGS,
            &cta::FILTER_F_PROTO_NUM.to_ne_bytes(),
        );
        w.attr(cta::FILTER_REPLY_FLAGS, &0u32.to_ne_bytes());
        w.nest_end(f);
    }
    w.end();
    w
}

const EINVAL: i32 = 22;
const EOPNOTSUPP: i32 = 95;
const ENOENT: i32 = 2;

/// Hand every `proto` flow of `family` to `each`.
pub fn dump(
    sock: &mut NfSocket,
    family: Family,
    proto: u8,
    mut each: impl FnMut(&Flow),
) -> Result<(), Error> {
    let mut filtered = true;
    loop {
        let seq = sock.next_seq();
        let req = dump_request(seq, family, proto, filtered);
        let mut errno = 0;
        let mut bad = 0usize;
        sock.exchange_raw("ctnetlink CT_GET", req.bytes(), (seq, seq), |r| match r {
            RawReply::Data { kind, payload, .. }
                if kind == (NFNL_SUBSYS_CTNETLINK << 8) | u16::from(IPCTNL_MSG_CT_NEW) =>
            {
                match payload.get(NFGENMSG_LEN..).and_then(decode) {
                    Some(f) if f.proto == proto => each(&f),
                    Some(_) => {}
                    None => bad += 1,
                }
            }
            RawReply::Data { .. } => {}
            RawReply::Ack { errno: e, .. } => errno = e,
        })?;
        match errno {
            0 if bad == 0 => return Ok(()),
            0 => {
                return Err(Error::Decode {
                    request: "ctnetlink CT_GET",
                    reason: format!("{bad} entries without an original and reply tuple"),
                });
            }
            // A kernel without CTA_FILTER: filter here.
            EINVAL | EOPNOTSUPP if filtered => filtered = false,
            e => {
                return Err(Error::Kernel {
                    request: "ctnetlink CT_GET",
                    source: std::io::Error::from_raw_os_error(e),
                });
            }
        }
    }
}

/// Send `w`'s messages, sequence numbers `first..=last`, and count the
/// errors by errno.
fn send_batch(
    sock: &mut NfSocket,
    request: &'static str,
    w: &Writer,
    first: u32,
    last: u32,
    out: &mut Deleted,
    mut on_error: impl FnMut(i32),
) -> Result<(), Error> {
    let mut errors = 0u64;
    sock.exchange_raw(request, w.bytes(), (first, last), |r| {
        if let RawReply::Ack { errno, .. } = r
            && errno != 0
        {
            errors += 1;
            match errno {
                ENOENT => out.gone += 1,
                e => {
                    out.failed += 1;
                    on_error(e);
                }
            }
        }
    })?;
    out.deleted += w.count() as u64 - errors;
    Ok(())
}

/// Delete `flows` (of `family`), 128 per `send`. A flow that is gone
/// already counts as [`Deleted::gone`]; `on_error` sees the errno of any
/// other refusal.
pub fn delete<'a>(
    sock: &mut NfSocket,
    family: Family,
    flows: impl IntoIterator<Item = &'a Flow>,
    mut on_error: impl FnMut(i32),
) -> Result<Deleted, Error> {
    let mut out = Deleted::default();
    let mut w = Writer::new();
    let mut first = 0;
    let mut flows = flows.into_iter().peekable();
    while let Some(f) = flows.next() {
        let last = sock.next_seq();
        if w.is_empty() {
            first = last;
        }
        let end = w.count() + 1 == BATCH || flows.peek().is_none();
        let flags = if end {
            NLM_F_REQUEST | NLM_F_ACK
        } else {
            NLM_F_REQUEST
        };
        w.begin(
            NFNL_SUBSYS_CTNETLINK,
            IPCTNL_MSG_CT_DELETE,
            flags,
            last,
            family.nfproto(),
        );
        write_tuple(&mut w, cta::TUPLE_ORIG, f.proto, &f.orig);
        if f.zone != 0 {
            w.attr(cta::ZONE, &f.zone.to_be_bytes());
        }
        if let Some(id) = f.id {
            w.attr(cta::ID, &id.to_be_bytes());
        }
        w.end();
        if end {
            send_batch(
                sock,
                "ctnetlink CT_DELETE",
                &w,
                first,
                last,
                &mut out,
                &mut on_error,
            )?;
            w.clear();
        }
    }
    Ok(out)
}

/// Create `flows` (of `family`) with a timeout of `timeout` seconds, as
/// `conntrack -I` does; an existing entry is an error. For tests and
/// benchmarks. Returns how many were created.
pub fn create(
    sock: &mut NfSocket,
    family: Family,
    flows: &[Flow],
    timeout: u32,
) -> Result<u64, Error> {
    let mut created = 0;
    for chunk in flows.chunks(BATCH) {
        let mut w = Writer::new();
        let mut first = 0;
        let mut last = 0;
        for (i, f) in chunk.iter().enumerate() {
            last = sock.next_seq();
            if i == 0 {
                first = last;
            }
            let ack = if i + 1 == chunk.len() { NLM_F_ACK } else { 0 };
            w.begin(
                NFNL_SUBSYS_CTNETLINK,
                IPCTNL_MSG_CT_NEW,
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | ack,
                last,
                family.nfproto(),
            );
            write_tuple(&mut w, cta::TUPLE_ORIG, f.proto, &f.orig);
            write_tuple(&mut w, cta::TUPLE_REPLY, f.proto, &f.reply);
            w.attr(cta::TIMEOUT, &timeout.to_be_bytes());
            if f.zone != 0 {
                w.attr(cta::ZONE, &f.zone.to_be_bytes());
            }
            w.end();
        }
        let mut err = 0;
        let mut out = Deleted::default();
        send_batch(sock, "ctnetlink CT_NEW", &w, first, last, &mut out, |e| {
            err = e
        })?;
        if out.failed + out.gone > 0 {
            return Err(Error::Kernel {
                request: "ctnetlink CT_NEW",
                source: std::io::Error::from_raw_os_error(if err == 0 { ENOENT } else { err }),
            });
        }
        created += out.deleted;
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::NLMSG_HDRLEN;

    fn flow(v6: bool) -> Flow {
        let ip = |s4: &str, s6: &str| -> IpAddr {
            if v6 {
                s6.parse().unwrap()
            } else {
                s4.parse().unwrap()
            }
        };
        Flow {
            proto: IPPROTO_UDP,
            orig: Tuple {
                src: ip("10.0.0.2", "fd00::2"),
                dst: ip("172.30.0.50", "fd00:30::50"),
                sport: 40000,
                dport: 53,
            },
            reply: Tuple {
                src: ip("10.180.0.1", "fd00:180::1"),
                dst: ip("10.0.0.2", "fd00::2"),
                sport: 5353,
                dport: 40000,
            },
            zone: 3,
            id: Some(77),
        }
    }

    /// What the kernel sends for a flow has the layout `create` writes
    /// (tuples, zone, id), so decoding the written message gives the flow
    /// back.
    #[test]
    fn encodes_and_decodes_flows() {
        for v6 in [false, true] {
            let f = flow(v6);
            let mut w = Writer::new();
            w.begin(NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW, 0, 1, 2);
            write_tuple(&mut w, cta::TUPLE_ORIG, f.proto, &f.orig);
            write_tuple(&mut w, cta::TUPLE_REPLY, f.proto, &f.reply);
            w.attr(cta::ZONE, &f.zone.to_be_bytes());
            w.attr(cta::ID, &77u32.to_be_bytes());
            w.end();
            let got = decode(&w.bytes()[NLMSG_HDRLEN + NFGENMSG_LEN..]).unwrap();
            assert_eq!(got, f, "v6 {v6}");
        }
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn dump_request_filters_on_the_protocol() {
        let w = dump_request(5, Family::Ip6, IPPROTO_UDP, true);
        let b = w.bytes();
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), (1 << 8) | 1);
        assert_eq!(b[NLMSG_HDRLEN], 10);
        let attrs = &b[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let orig = find(attrs, cta::TUPLE_ORIG).unwrap();
        let proto = find(orig, cta::TUPLE_PROTO).unwrap();
        assert_eq!(find(proto, cta::PROTO_NUM), Some(&[17u8][..]));
        let filter = find(attrs, cta::FILTER).unwrap();
        assert_eq!(
            find(filter, cta::FILTER_ORIG_FLAGS),
            Some(&8u32.to_ne_bytes()[..])
        );
        let plain = dump_request(5, Family::Ip, IPPROTO_UDP, false);
        assert_eq!(plain.len(), NLMSG_HDRLEN + NFGENMSG_LEN);
    }
}
