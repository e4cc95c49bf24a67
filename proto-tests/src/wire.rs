//! The two ends of a probe: [`serve_echo`] (in every endpoint and in the
//! sink) and [`probe`] (in the source namespace).
//!
//! An echo server answers each TCP/SCTP connection and each UDP datagram with
//! one line, `kproxy-echo label=<L> reached=<ip:port> from=<ip:port>`: the
//! address it was reached on (after DNAT, so: which endpoint served) and the
//! source it saw (so: was the client masqueraded). A probe turns each attempt
//! into an [`Attempt`].

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// IANA protocol number of SCTP (std and socket2 have no constant for it).
const IPPROTO_SCTP: i32 = 132;

/// A transport protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (one-to-one style sockets).
    Sctp,
}

impl Proto {
    /// The lowercase name (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            other => Err(format!(
                "unknown protocol {other:?} (want tcp, udp or sctp)"
            )),
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `<ip>:<port>/<proto>` (IPv6 in brackets: `[fd00::1]:80/tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// Address and port.
    pub addr: SocketAddr,
    /// Protocol.
    pub proto: Proto,
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("{s:?}: want <ip>:<port>/<tcp|udp|sctp>"))?;
        let addr: SocketAddr = a
            .parse()
            .map_err(|e| format!("{s:?}: bad address {a:?} ({e}); IPv6 goes in brackets"))?;
        Ok(Target {
            addr,
            proto: p.parse().map_err(|e| format!("{s:?}: {e}"))?,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.proto)
    }
}

/// What one probe attempt got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Attempt {
    /// An echo server answered.
    Answer {
        /// The answering server's label (`sink` for the sink).
        label: String,
        /// The address:port the server was reached on.
        reached: SocketAddr,
        /// The source address:port the server saw.
        from: SocketAddr,
        /// The probe's own address:port.
        local: Option<SocketAddr>,
    },
    /// An HTTP server answered (`--http` probes: health-check node ports).
    Http {
        /// The status code.
        status: u16,
        /// The first line of the body (health checks answer JSON).
        body: String,
    },
    /// Connection refused (TCP RST or ICMP port unreachable): a REJECT.
    Refused,
    /// ICMP host/network/admin unreachable: also a REJECT, with another code.
    Unreachable {
        /// The error the socket reported.
        error: String,
    },
    /// No answer within the timeout: a DROP.
    Timeout,
    /// Anything else (a bug in the harness or an unusable address).
    Error {
        /// The error.
        error: String,
    },
}

impl Attempt {
    fn from_io(e: &std::io::Error) -> Attempt {
        match e.kind() {
            ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => Attempt::Refused,
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Attempt::Timeout,
            ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => Attempt::Unreachable {
                error: e.to_string(),
            },
            _ => Attempt::Error {
                error: e.to_string(),
            },
        }
    }
}

/// Parse an echo line.
pub fn parse_echo(line: &str, local: Option<SocketAddr>) -> Attempt {
    let mut label = None;
    let mut reached = None;
    let mut from = None;
    let mut words = line.split_whitespace();
    if words.next() != Some("kproxy-echo") {
        return Attempt::Error {
            error: format!("not an echo answer: {line:?}"),
        };
    }
    for w in words {
        match w.split_once('=') {
            Some(("label", v)) => label = Some(v.to_string()),
            Some(("reached", v)) => reached = v.parse().ok(),
            Some(("from", v)) => from = v.parse().ok(),
            _ => {}
        }
    }
    match (label, reached, from) {
        (Some(label), Some(reached), Some(from)) => Attempt::Answer {
            label,
            reached,
            from,
            local,
        },
        _ => Attempt::Error {
            error: format!("malformed echo answer: {line:?}"),
        },
    }
}

fn echo_line(label: &str, reached: SocketAddr, from: SocketAddr) -> String {
    format!("kproxy-echo label={label} reached={reached} from={from}\n")
}

fn domain(a: &SocketAddr) -> Domain {
    if a.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// Whether this kernel lets us open SCTP sockets.
pub fn sctp_supported() -> bool {
    Socket::new(
        Domain::IPV4,
        Type::STREAM,
        Some(Protocol::from(IPPROTO_SCTP)),
    )
    .is_ok()
}

fn stream_socket(a: &SocketAddr, proto: Proto) -> std::io::Result<Socket> {
    let p = match proto {
        Proto::Sctp => Protocol::from(IPPROTO_SCTP),
        _ => Protocol::TCP,
    };
    Socket::new(domain(a), Type::STREAM, Some(p))
}

/// Run echo servers on every `listen` target until stdin closes (the
/// harness holds stdin open; when it dies, the servers go too). Prints
/// `ready` once every socket is bound. SCTP targets are skipped when the
/// kernel has no SCTP (the harness reports that once per run).
pub fn serve_echo(label: &str, listen: &[Target]) -> std::io::Result<()> {
    let mut threads = Vec::new();
    for t in listen {
        let label = label.to_string();
        match t.proto {
            Proto::Udp => {
                let sock = UdpSocket::bind(t.addr)?;
                threads.push(std::thread::spawn(move || udp_echo(&label, sock)));
            }
            Proto::Tcp => {
                let l = TcpListener::bind(t.addr)?;
                threads.push(std::thread::spawn(move || {
                    for c in l.incoming().flatten() {
                        let label = label.clone();
                        std::thread::spawn(move || tcp_echo(&label, c));
                    }
                }));
            }
            Proto::Sctp => {
                let s = match stream_socket(&t.addr, Proto::Sctp) {
                    Ok(s) => s,
                    // No SCTP in this kernel: the harness says so once per run.
                    Err(_) => continue,
                };
                s.set_reuse_address(true)?;
                s.bind(&SockAddr::from(t.addr))?;
                s.listen(64)?;
                threads.push(std::thread::spawn(move || {
                    while let Ok((mut c, peer)) = s.accept() {
                        let me = c.local_addr().ok().and_then(|a| a.as_socket());
                        if let (Some(me), Some(peer)) = (me, peer.as_socket()) {
                            let _ = c.write_all(echo_line(&label, me, peer).as_bytes());
                            let _ = c.flush();
                            // Wait for the client to close first: closing right
                            // after the write can abort the association before
                            // the data is read.
                            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut buf = [0u8; 16];
                            let _ = c.read(&mut buf);
                        }
                    }
                }));
            }
        }
    }
    println!("ready");
    std::io::stdout().flush()?;
    // Exit when the harness goes away (stdin closes).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// One TCP connection: the echo line at once, then the same line again
/// for every line the client sends (a long-lived connection's keepalive,
/// [`Held`]), until the client closes or stays silent for
/// [`HELD_IDLE_LIMIT`]. A probe reads the first line and closes.
fn tcp_echo(label: &str, mut c: std::net::TcpStream) {
    let (Ok(me), Ok(peer)) = (c.local_addr(), c.peer_addr()) else {
        return;
    };
    let line = echo_line(label, me, peer);
    if c.write_all(line.as_bytes()).is_err() {
        return;
    }
    let _ = c.set_read_timeout(Some(HELD_IDLE_LIMIT));
    let mut buf = [0u8; 512];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                for _ in buf[..n].iter().filter(|b| **b == b'\n') {
                    if c.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// How long an echo server keeps a silent TCP connection open.
pub const HELD_IDLE_LIMIT: Duration = Duration::from_secs(300);

fn udp_echo(label: &str, sock: UdpSocket) {
    let Ok(me) = sock.local_addr() else { return };
    let mut buf = [0u8; 1500];
    while let Ok((_, peer)) = sock.recv_from(&mut buf) {
        let _ = sock.send_to(echo_line(label, me, peer).as_bytes(), peer);
    }
}

/// Run the sink's echo server: TCP and UDP on `port` on every address (the
/// sink redirects everything it receives to that port).
pub fn serve_sink(port: u16) -> std::io::Result<()> {
    // One dual-stack socket per protocol serves IPv4 and IPv6.
    let any = IpAddr::from([0u16; 8]);
    let listen = [
        Target {
            addr: SocketAddr::new(any, port),
            proto: Proto::Tcp,
        },
        Target {
            addr: SocketAddr::new(any, port),
            proto: Proto::Udp,
        },
    ];
    serve_echo("sink", &listen)
}

/// One attempt (one fresh connection or socket, hence one fresh source
/// port) to `to`, optionally from `bind`, with `timeout` for the whole
/// exchange.
pub fn probe(to: &Target, bind: Option<IpAddr>, port: u16, timeout: Duration) -> Attempt {
    match to.proto {
        Proto::Udp => probe_udp(to, bind, port, timeout),
        p => probe_stream(to, p, bind, port, timeout),
    }
}

/// One HTTP/1.0 `GET /` to `to` (TCP), for health-check node ports.
pub fn probe_http(to: &Target, bind: Option<IpAddr>, timeout: Duration) -> Attempt {
    let s = match stream_socket(&to.addr, Proto::Tcp) {
        Ok(s) => s,
        Err(e) => return Attempt::from_io(&e),
    };
    if let Some(b) = bind
        && let Err(e) = s.bind(&SockAddr::from(SocketAddr::new(b, 0)))
    {
        return Attempt::Error {
            error: format!("bind {b}: {e}"),
        };
    }
    if let Err(e) = s.connect_timeout(&SockAddr::from(to.addr), timeout) {
        return Attempt::from_io(&e);
    }
    let _ = s.set_read_timeout(Some(timeout));
    let mut s = s;
    if let Err(e) = s.write_all(b"GET / HTTP/1.0\r\nHost: proto-test\r\n\r\n") {
        return Attempt::from_io(&e);
    }
    let mut got = Vec::new();
    if let Err(e) = s.read_to_end(&mut got)
        && got.is_empty()
    {
        return Attempt::from_io(&e);
    }
    let text = String::from_utf8_lossy(&got);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.lines().next().unwrap_or("").to_string())
        .unwrap_or_default();
    match status {
        Some(status) => Attempt::Http { status, body },
        None => Attempt::Error {
            error: format!(
                "not an HTTP answer: {:?}",
                text.lines().next().unwrap_or("")
            ),
        },
    }
}

fn unspecified(like: &SocketAddr) -> IpAddr {
    if like.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    }
}

fn probe_stream(
    to: &Target,
    proto: Proto,
    bind: Option<IpAddr>,
    port: u16,
    timeout: Duration,
) -> Attempt {
    let s = match stream_socket(&to.addr, proto) {
        Ok(s) => s,
        Err(e) => return Attempt::from_io(&e),
    };
    if port != 0 {
        // A fixed source port is reused by every attempt.
        let _ = s.set_reuse_address(true);
    }
    if (bind.is_some() || port != 0)
        && let Err(e) = s.bind(&SockAddr::from(SocketAddr::new(
            bind.unwrap_or_else(|| unspecified(&to.addr)),
            port,
        )))
    {
        let b = bind.unwrap_or_else(|| unspecified(&to.addr));
        return Attempt::Error {
            error: format!("bind {b}: {e}"),
        };
    }
    // Linux does not fail a TCP connect on an ICMPv6 port unreachable
    // during SYN_SENT the way it does for ICMPv4 (the connect just times
    // out), so for IPv6 a raw ICMPv6 socket watches for the error itself.
    let icmp6 = if to.addr.is_ipv6() {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .and_then(|r| r.set_nonblocking(true).map(|()| r))
            .ok()
    } else {
        None
    };
    if let Err(e) = s.connect_timeout(&SockAddr::from(to.addr), timeout) {
        if let Some(r) = &icmp6
            && matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
            && let Some(code) = icmp6_unreachable_for(r, &to.addr)
        {
            return Attempt::Unreachable {
                error: format!("ICMPv6 destination unreachable, code {code}"),
            };
        }
        return Attempt::from_io(&e);
    }
    let local = s.local_addr().ok().and_then(|a| a.as_socket());
    if let Err(e) = s.set_read_timeout(Some(timeout)) {
        return Attempt::from_io(&e);
    }
    let mut s = s;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.contains(&b'\n') {
                    break;
                }
            }
            Err(e) => return Attempt::from_io(&e),
        }
    }
    parse_echo(String::from_utf8_lossy(&got).trim(), local)
}

/// The code of an ICMPv6 destination-unreachable queued on raw socket `r`
/// whose quoted packet was addressed to `to`.
fn icmp6_unreachable_for(r: &Socket, to: &SocketAddr) -> Option<u8> {
    let IpAddr::V6(dst) = to.ip() else {
        return None;
    };
    let mut buf = [0u8; 1500];
    let mut r = r;
    while let Ok(n) = r.read(&mut buf) {
        // ICMPv6 header (8 bytes), then the quoted IPv6 header (40 bytes,
        // destination at 24..40), then the transport header (port at 2..4).
        let m = &buf[..n];
        if n >= 8 + 40 + 4 && m[0] == 1 {
            let q = &m[8..];
            let qdst: [u8; 16] = q[24..40].try_into().ok()?;
            let qport = u16::from_be_bytes([q[42], q[43]]);
            if qdst == dst.octets() && qport == to.port() {
                return Some(m[1]);
            }
        }
    }
    None
}

fn probe_udp(to: &Target, bind: Option<IpAddr>, port: u16, timeout: Duration) -> Attempt {
    let any = unspecified(&to.addr);
    let sock = match UdpSocket::bind(SocketAddr::new(bind.unwrap_or(any), port)) {
        Ok(s) => s,
        Err(e) => {
            return Attempt::Error {
                error: format!("bind: {e}"),
            };
        }
    };
    if let Err(e) = sock.connect(to.addr) {
        return Attempt::from_io(&e);
    }
    let local = sock.local_addr().ok();
    if let Err(e) = sock.set_read_timeout(Some(timeout)) {
        return Attempt::from_io(&e);
    }
    if let Err(e) = sock.send(b"kproxy-probe\n") {
        return Attempt::from_io(&e);
    }
    let mut buf = [0u8; 1500];
    match sock.recv(&mut buf) {
        Ok(n) => parse_echo(String::from_utf8_lossy(&buf[..n]).trim(), local),
        Err(e) => Attempt::from_io(&e),
    }
}

/// A long-lived connection: one TCP connection, or one UDP socket (one
/// conntrack flow), that exchanges a line with its echo server at every
/// [`Held::ping`]. Every answer must come from the endpoint the first one
/// came from.
#[derive(Debug)]
pub struct Held {
    conn: HeldConn,
    /// The first answer: which endpoint, which source it saw.
    pub first: Attempt,
    timeout: Duration,
}

#[derive(Debug)]
enum HeldConn {
    Tcp(std::net::TcpStream),
    Udp(UdpSocket),
}

impl Held {
    /// Connect to `to` (TCP or UDP) from `bind` and get the first answer.
    /// `Err` is that attempt's outcome.
    pub fn open(to: &Target, bind: Option<IpAddr>, timeout: Duration) -> Result<Held, Attempt> {
        let any = unspecified(&to.addr);
        let local = SocketAddr::new(bind.unwrap_or(any), 0);
        let conn = match to.proto {
            Proto::Udp => {
                let s = UdpSocket::bind(local).map_err(|e| Attempt::from_io(&e))?;
                s.connect(to.addr).map_err(|e| Attempt::from_io(&e))?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| Attempt::from_io(&e))?;
                HeldConn::Udp(s)
            }
            _ => {
                let s = stream_socket(&to.addr, Proto::Tcp).map_err(|e| Attempt::from_io(&e))?;
                if bind.is_some() {
                    s.bind(&SockAddr::from(local)).map_err(|e| Attempt::Error {
                        error: format!("bind {local}: {e}"),
                    })?;
                }
                s.connect_timeout(&SockAddr::from(to.addr), timeout)
                    .map_err(|e| Attempt::from_io(&e))?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| Attempt::from_io(&e))?;
                HeldConn::Tcp(s.into())
            }
        };
        let mut h = Held {
            conn,
            first: Attempt::Timeout,
            timeout,
        };
        // A UDP flow starts with its first datagram; a TCP server speaks first.
        h.first = match &h.conn {
            HeldConn::Udp(_) => h.ping(),
            HeldConn::Tcp(_) => h.read_line(),
        };
        match h.first {
            Attempt::Answer { .. } => Ok(h),
            ref other => Err(other.clone()),
        }
    }

    /// Send one line, read one answer (within the timeout given to
    /// [`Held::open`]).
    pub fn ping(&mut self) -> Attempt {
        match &mut self.conn {
            HeldConn::Udp(s) => {
                if let Err(e) = s.send(b"kproxy-probe\n") {
                    return Attempt::from_io(&e);
                }
                let local = s.local_addr().ok();
                let mut buf = [0u8; 1500];
                match s.recv(&mut buf) {
                    Ok(n) => parse_echo(String::from_utf8_lossy(&buf[..n]).trim(), local),
                    Err(e) => Attempt::from_io(&e),
                }
            }
            HeldConn::Tcp(s) => {
                if let Err(e) = s.write_all(b"ping\n") {
                    return Attempt::from_io(&e);
                }
                self.read_line()
            }
        }
    }

    fn read_line(&mut self) -> Attempt {
        let HeldConn::Tcp(s) = &mut self.conn else {
            return Attempt::Error {
                error: "read_line on UDP".into(),
            };
        };
        let local = s.local_addr().ok();
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        let start = std::time::Instant::now();
        while !got.ends_with(b"\n") {
            match s.read(&mut byte) {
                Ok(0) => {
                    return Attempt::Error {
                        error: "connection closed by the peer".into(),
                    };
                }
                Ok(_) => got.push(byte[0]),
                Err(e) => return Attempt::from_io(&e),
            }
            if start.elapsed() > self.timeout {
                return Attempt::Timeout;
            }
        }
        parse_echo(String::from_utf8_lossy(&got).trim(), local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: Target = "10.0.0.1:80/tcp".parse().unwrap();
        assert_eq!(t.proto, Proto::Tcp);
        let t: Target = "[fd00::1]:53/UDP".parse().unwrap();
        assert_eq!(t.addr.port(), 53);
        assert!("10.0.0.1:80".parse::<Target>().is_err());
        assert!("10.0.0.1/tcp".parse::<Target>().is_err());
        assert!("10.0.0.1:80/icmp".parse::<Target>().is_err());
    }

    #[test]
    fn echo_lines_round_trip() {
        let line = echo_line(
            "pod-a",
            "10.0.0.1:80".parse().unwrap(),
            "[fd00::2]:4000".parse().unwrap(),
        );
        match parse_echo(line.trim(), None) {
            Attempt::Answer {
                label,
                reached,
                from,
                ..
            } => {
                assert_eq!(label, "pod-a");
                assert_eq!(reached.to_string(), "10.0.0.1:80");
                assert_eq!(from.to_string(), "[fd00::2]:4000");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_echo("hello", None), Attempt::Error { .. }));
    }

    #[test]
    fn held_connections_exchange_lines_and_see_the_peer_go() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let tcp: Target = format!("127.0.0.1:{port}/tcp").parse().unwrap();
        let udp: Target = format!("127.0.0.1:{port}/udp").parse().unwrap();
        let listen = [tcp, udp];
        std::thread::spawn(move || {
            let _ = serve_echo("held", &listen);
        });
        std::thread::sleep(Duration::from_millis(200));
        for t in [tcp, udp] {
            let mut h = Held::open(&t, None, Duration::from_secs(1)).unwrap();
            for _ in 0..3 {
                match h.ping() {
                    Attempt::Answer { label, reached, .. } => {
                        assert_eq!(label, "held");
                        assert_eq!(reached, t.addr);
                    }
                    other => panic!("{t}: {other:?}"),
                }
            }
        }
        // A server that closes the connection: the next exchange fails.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut c, peer)) = l.accept() {
                let _ = c.write_all(echo_line("once", addr, peer).as_bytes());
            }
        });
        let t = Target {
            addr,
            proto: Proto::Tcp,
        };
        let mut h = Held::open(&t, None, Duration::from_secs(1)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!matches!(h.ping(), Attempt::Answer { .. }));
    }

    #[test]
    fn loopback_tcp_and_udp_answer_and_refuse() {
        // A free port on loopback: bind, read the port, keep it for the echo.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let tcp: Target = format!("127.0.0.1:{port}/tcp").parse().unwrap();
        let udp: Target = format!("127.0.0.1:{port}/udp").parse().unwrap();
        let listen = [tcp, udp];
        std::thread::spawn(move || {
            // No stdin in the test harness: the thread simply lives on.
            let _ = serve_echo("t", &listen);
        });
        std::thread::sleep(Duration::from_millis(200));
        for t in [tcp, udp] {
            match probe(&t, None, 0, Duration::from_secs(1)) {
                Attempt::Answer { label, reached, .. } => {
                    assert_eq!(label, "t");
                    assert_eq!(reached, t.addr);
                }
                other => panic!("{t}: {other:?}"),
            }
        }
        // Nobody on port+1 (most likely): refused, not a timeout.
        let closed: Target = format!("127.0.0.1:{}/tcp", port.wrapping_add(1))
            .parse()
            .unwrap();
        assert_eq!(
            probe(&closed, None, 0, Duration::from_secs(1)),
            Attempt::Refused
        );
    }
}
