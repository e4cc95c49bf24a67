//! [`Writer`]: nfnetlink messages of any subsystem (ctnetlink,
//! nfnetlink_acct) appended one after another into one buffer, so that
//! many requests go to the kernel in one `send`.
//!
//! The framing is `nlmsghdr`, `nfgenmsg` and netlink attributes (nested
//! ones carry `NLA_F_NESTED`), as `include/uapi/linux/netfilter/nfnetlink.h`
//! describes. Header fields are set through `netlink-packet-core`'s
//! `NetlinkBuffer`; attributes are written here, since nesting is built in
//! place rather than from owned attribute trees.

use netlink_packet_core::NetlinkBuffer;

use crate::msg::{NFGENMSG_LEN, NLMSG_HDRLEN};

/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_HDRLEN`.
const NLA_HDRLEN: usize = 4;

/// A buffer of nfnetlink messages.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
    /// Where the message being written starts.
    msg_start: usize,
    /// Messages written.
    count: usize,
}

impl Writer {
    /// An empty buffer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// Start a message: `subsys << 8 | msg`, `flags` (`NLM_F_*`),
    /// sequence number `seq` and `nfgenmsg.nfgen_family` `family`. End it
    /// with [`Writer::end`].
    pub fn begin(&mut self, subsys: u16, msg: u8, flags: u16, seq: u32, family: u8) {
        self.msg_start = self.buf.len();
        self.buf
            .resize(self.msg_start + NLMSG_HDRLEN + NFGENMSG_LEN, 0);
        let mut nl = NetlinkBuffer::new(&mut self.buf[self.msg_start..]);
        nl.set_message_type((subsys << 8) | u16::from(msg));
        nl.set_flags(flags);
        nl.set_sequence_number(seq);
        nl.set_port_number(0);
        let g = self.msg_start + NLMSG_HDRLEN;
        // nfgenmsg: family, NFNETLINK_V0, res_id 0.
        self.buf[g] = family;
    }

    /// End the message started last: set its length.
    pub fn end(&mut self) {
        let len = self.buf.len() - self.msg_start;
        NetlinkBuffer::new(&mut self.buf[self.msg_start..]).set_length(len as u32);
        self.count += 1;
    }

    /// An attribute with `value`.
    pub fn attr(&mut self, kind: u16, value: &[u8]) {
        let len = NLA_HDRLEN + value.len();
        self.header(kind, len);
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, kind: u16, value: &str) {
        let len = NLA_HDRLEN + value.len() + 1;
        self.header(kind, len);
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Start a nested attribute; close it with [`Writer::nest_end`] and the
    /// returned position.
    pub fn nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.header(kind | NLA_F_NESTED, 0);
        at
    }

    /// Close the nested attribute started at `at`.
    pub fn nest_end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn header(&mut self, kind: u16, len: usize) {
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = self.buf.len().next_multiple_of(4);
        self.buf.resize(padded, 0);
    }

    /// The messages written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// How many messages have been ended.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Empty the buffer, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.msg_start = 0;
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{find, find_str};

    #[test]
    fn writes_nested_attributes() {
        let mut w = Writer::new();
        w.begin(1, 2, 0x5, 9, 2);
        w.attr_str(1, "ab");
        let n = w.nest(3);
        w.attr(1, &[7]);
        w.attr(2, &[1, 2, 3, 4]);
        w.nest_end(n);
        w.end();
        let b = w.bytes();
        // nlmsghdr
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), 0x102);
        assert_eq!(u16::from_ne_bytes(b[6..8].try_into().unwrap()), 0x5);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 9);
        assert_eq!(&b[16..20], &[2, 0, 0, 0]);
        let attrs = &b[20..];
        assert_eq!(find_str(attrs, 1), Some("ab"));
        let nested = find(attrs, 3).unwrap();
        assert_eq!(find(nested, 1), Some(&[7u8][..]));
        assert_eq!(find(nested, 2), Some(&[1u8, 2, 3, 4][..]));
        // "ab\0" padded to 4 (8) + nest header 4 + (4+1 padded to 8) + 8.
        assert_eq!(attrs.len(), 8 + 4 + 8 + 8);
        assert_eq!(w.count(), 1);
    }
}
