//! The data plane: the cost of a new connection's first packet through
//! the programmed rules.
//!
//! Topology (all namespaces the bench's own): a *node* namespace holding
//! the rules, with the target endpoint address on `lo` and a TCP listener
//! on it, and a *client* namespace joined by a veth pair. The client opens
//! TCP connections to the target's ClusterIP one after another: each SYN
//! is a new conntrack entry, so it walks the NAT rules (linearly in
//! iptables, through one verdict-map lookup in nftables) and is DNATed to
//! the listener. Sockets close with RST (linger 0), so no TIME_WAIT state
//! limits the rate, and the node's conntrack table is flushed between
//! repeats so no connection reuses an old NAT binding.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::results::quantile;
use crate::synth::{NODE_IP, TARGET_ENDPOINT, TARGET_PORT, TARGET_VIP};
use crate::sys::{self, Ns};

/// A node namespace with a client namespace attached and the listener
/// running; dropping it stops the listener and deletes both namespaces.
pub struct Topology {
    /// Where the rules go.
    pub node: Ns,
    /// Where connections come from.
    pub client: Ns,
    listener: Child,
}

impl Topology {
    /// Build the namespaces, the veth pair, the addresses and the listener.
    pub fn new() -> anyhow::Result<Topology> {
        let node = Ns::new()?;
        let client = Ns::new()?;
        node.exec(&[
            "ip",
            "link",
            "add",
            "bchn0",
            "type",
            "veth",
            "peer",
            "name",
            "bchc0",
            "netns",
            client.name(),
        ])?;
        let node_cidr = format!("{NODE_IP}/24");
        node.exec(&["ip", "addr", "add", &node_cidr, "dev", "bchn0"])?;
        node.exec(&["ip", "link", "set", "bchn0", "up"])?;
        let ep = format!("{TARGET_ENDPOINT}/32");
        node.exec(&["ip", "addr", "add", &ep, "dev", "lo"])?;
        client.exec(&["ip", "addr", "add", "192.168.77.2/24", "dev", "bchc0"])?;
        client.exec(&["ip", "link", "set", "bchc0", "up"])?;
        client.exec(&["ip", "route", "add", "default", "via", &NODE_IP.to_string()])?;
        // The listener's backlog is capped by somaxconn (per namespace).
        node.exec(&["sysctl", "-qw", "net.core.somaxconn=65535"])?;
        // More ephemeral ports, so a repeat never reuses a source port.
        client.exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000"])?;
        let me = std::env::current_exe().context("locating kproxy-bench")?;
        let me = me.to_string_lossy().into_owned();
        let addr = format!("{TARGET_ENDPOINT}:{TARGET_PORT}");
        let listener = node
            .command(&[&me, "serve", "--addr", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the listener")?;
        let topo = Topology {
            node,
            client,
            listener,
        };
        // Wait until the listener answers on its own address.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let probe = topo
                .node
                .command(&[&me, "connect", "--to", &addr, "--count", "1"])
                .output();
            if matches!(&probe, Ok(o) if o.status.success()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the data-plane listener did not come up on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(topo)
    }

    /// One repeat: flush conntrack, then connect to the ClusterIP for
    /// `seconds` (at most `max` connections).
    pub fn measure(&self, seconds: f64, max: usize) -> anyhow::Result<ConnectStats> {
        // Best effort: without conntrack(8) old entries expire on their own;
        // the measurement stays valid as long as ports are not reused, which
        // the wide port range and the `max` cap see to.
        let _ = self.node.exec(&["conntrack", "-F"]);
        let me = std::env::current_exe().context("locating kproxy-bench")?;
        let me = me.to_string_lossy().into_owned();
        let to = format!("{TARGET_VIP}:{TARGET_PORT}");
        let secs = seconds.to_string();
        let max = max.to_string();
        let out = crate::sys::run_timed(
            self.client.command(&[
                &me,
                "connect",
                "--to",
                &to,
                "--seconds",
                &secs,
                "--count",
                &max,
            ]),
            None,
            Duration::from_secs_f64(seconds + 60.0),
        )?;
        ConnectStats::parse(&out.stdout())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = self.listener.kill();
        let _ = self.listener.wait();
    }
}

/// What one client run measured.
#[derive(Debug, Clone, Copy)]
pub struct ConnectStats {
    /// Connections made.
    pub connections: usize,
    /// Connections per second.
    pub rate: f64,
    /// Median connect() latency, seconds.
    pub p50: f64,
    /// 99th percentile connect() latency, seconds.
    pub p99: f64,
}

impl ConnectStats {
    fn parse(text: &str) -> anyhow::Result<ConnectStats> {
        let line = sys::report_line(text, "connect")?;
        Ok(ConnectStats {
            connections: sys::report_value(line, "n")?,
            rate: sys::report_value(line, "rate")?,
            p50: sys::report_value(line, "p50")?,
            p99: sys::report_value(line, "p99")?,
        })
    }
}

/// `kproxy-bench serve --addr A`: accept and immediately close
/// connections until killed.
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    // A backlog larger than any repeat's connection count: on 2 busy CPUs
    // the accept loop can fall behind, and a full accept queue drops SYNs
    // (a 1 s retransmit that would swamp the figure).
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).context("socket")?;
    s.set_reuse_address(true).context("SO_REUSEADDR")?;
    s.bind(&SockAddr::from(addr))
        .with_context(|| format!("binding {addr}"))?;
    s.listen(65535)
        .with_context(|| format!("listening on {addr}"))?;
    let l: TcpListener = s.into();
    loop {
        match l.accept() {
            // Closed normally: a reset here could reach the client before
            // its connect() has returned, failing the measurement. The
            // client resets its side, so no TIME_WAIT builds up either way.
            Ok((s, _)) => drop(s),
            Err(e) => bail!("accept on {addr}: {e}"),
        }
    }
}

/// `kproxy-bench connect --to A [--seconds S] [--count N]`: connect
/// repeatedly; print `connect n=.. rate=.. p50=.. p99=..`. Fails if no
/// connection succeeded or any failed.
pub fn connect(to: SocketAddr, seconds: f64, count: usize) -> anyhow::Result<()> {
    let target = SockAddr::from(to);
    let mut lat = Vec::with_capacity(count.min(1 << 20));
    let mut close_time = 0.0;
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    while lat.len() < count && (lat.is_empty() || start.elapsed() < budget) {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).context("socket")?;
        s.set_linger(Some(Duration::ZERO)).context("SO_LINGER")?;
        let t = Instant::now();
        s.connect_timeout(&target, Duration::from_secs(2))
            .with_context(|| format!("connect to {to} (after {} connections)", lat.len()))?;
        lat.push(t.elapsed().as_secs_f64());
        let tc = Instant::now();
        drop(s);
        close_time += tc.elapsed().as_secs_f64();
    }
    let total = start.elapsed().as_secs_f64();
    let p50 = quantile(&lat, 0.5).context("no connection made")?;
    let p99 = quantile(&lat, 0.99).context("no connection made")?;
    println!(
        "connect n={} rate={:.1} p50={p50:.9} p99={p99:.9} connect_total={:.6} close_total={close_time:.6} total={total:.6}",
        lat.len(),
        lat.len() as f64 / total,
        lat.iter().sum::<f64>()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_client_report() {
        let s = ConnectStats::parse("connect n=10 rate=1000.5 p50=0.000010000 p99=0.000020000\n")
            .expect("parse");
        assert_eq!(s.connections, 10);
        assert!((s.p50 - 1e-5).abs() < 1e-12);
        assert!(ConnectStats::parse("garbage").is_err());
    }
}
