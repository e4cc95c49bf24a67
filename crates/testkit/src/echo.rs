//! Echo servers that answer with the address they were reached on (which
//! identifies the endpoint behind a Service), and probes that read it.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::in_netns;

/// A running echo server; it stops when this is dropped.
#[must_use = "the server stops when this is dropped"]
#[derive(Debug)]
pub struct EchoServer(Arc<AtomicBool>);

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Run a server on a thread inside `ns`: `bind` once (the caller waits
/// for it), then `step` until the returned [`EchoServer`] is dropped.
fn serve<S: 'static>(
    ns: impl AsRef<str>,
    what: &'static str,
    bind: impl FnOnce() -> S + Send + 'static,
    mut step: impl FnMut(&S) + Send + 'static,
) -> EchoServer {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let server = bind();
        tx.send(()).expect("signal");
        while !flag.load(Ordering::SeqCst) {
            step(&server);
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{what} did not start"));
    EchoServer(stop)
}

/// A TCP server in `ns` on `addr` that writes the local address of each
/// connection (the address it was reached on, without the port) and
/// closes it.
pub fn echo_server(ns: impl AsRef<str>, addr: &str) -> EchoServer {
    let addr: SocketAddr = addr.parse().expect("server address");
    let bind = move || {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        l.set_nonblocking(true).expect("nonblocking");
        l
    };
    serve(ns, "echo server", bind, |l: &TcpListener| {
        match l.accept() {
            Ok((mut s, _)) => {
                let local = s
                    .local_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = s.set_nonblocking(false);
                let _ = s.write_all(local.as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    })
}

/// A UDP server in `ns` on `addr` (a specific address) that answers every
/// datagram with that address.
pub fn udp_echo_server(ns: impl AsRef<str>, addr: &str) -> EchoServer {
    let addr: SocketAddr = addr.parse().expect("server address");
    let bind = move || {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        s
    };
    serve(ns, "udp echo server", bind, move |s: &UdpSocket| {
        let mut buf = [0u8; 64];
        if let Ok((_, peer)) = s.recv_from(&mut buf) {
            let _ = s.send_to(addr.ip().to_string().as_bytes(), peer);
        }
    })
}

/// Connect from `ns` to `addr` once over TCP; the server's answer, or the
/// error.
pub fn probe(ns: impl AsRef<str>, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("probe address");
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(1500))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    })
    .join()
    .expect("probe thread")
}

/// Probe `n` times; the distinct answers (errors as `error: ...`).
pub fn probe_many(ns: &str, addr: &str, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .map(|_| probe(ns, addr).unwrap_or_else(|e| format!("error: {e}")))
        .collect()
}

/// One UDP request from `ns` (a fresh socket, so a fresh conntrack entry).
pub fn udp_probe(ns: impl AsRef<str>, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("probe address");
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .map_err(|e| e.to_string())?;
        s.send_to(b"hi", addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
    .join()
    .expect("probe thread")
}
