//! Network namespaces and the [`Topology`] a scenario runs in.
//!
//! ```text
//!  ext ns (external clients) --veth-- NODE ns --veth-- one ns per local pod
//!                                      |  \---veth-- remote ns (remote endpoints)
//!                                      \---veth-- sink ns (default route: answers anything)
//! ```
//! The node's side of every pod/remote/sink veth carries 169.254.1.1/32 and
//! fd00:ffff::1/128 (and fe80::1, the pods' IPv6 gateway): masquerading
//! towards an endpoint picks that address, so a masqueraded client is
//! visible even when the client is the node itself. Node IPs sit on the
//! external link. Every name starts with `pt-<pid>-`, so leftovers of a
//! dead run are recognised and removed ([`cleanup_stale`]).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::HarnessError;
use crate::wire::{Proto, Target};

/// The sink's echo port (everything it receives is redirected there).
pub const SINK_PORT: u16 = 7777;
/// The node's address on its pod-facing links (IPv4).
pub const LINK_V4: &str = "169.254.1.1";
/// The node's address on its pod-facing links (IPv6).
pub const LINK_V6: &str = "fd00:ffff::1";
const SINK_V4: &str = "169.254.2.2";
const SINK_V6: &str = "fd00:ffff::2";

/// Namespaces this process created and has not deleted yet: removed by the
/// signal handler on Ctrl-C ([`install_signal_cleanup`]).
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Run a command; error with its output when it fails.
pub fn run(argv: &[&str]) -> Result<String, HarnessError> {
    run_input(argv, None)
}

/// Run a command with optional stdin.
pub fn run_input(argv: &[&str], input: Option<&str>) -> Result<String, HarnessError> {
    use std::io::Write as _;
    let (prog, args) = argv.split_first().ok_or_else(|| HarnessError::Command {
        command: String::new(),
        message: "empty command".into(),
    })?;
    let mut c = Command::new(prog);
    c.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fail = |message: String| HarnessError::Command {
        command: argv.join(" "),
        message,
    };
    let mut child = c.spawn().map_err(|e| {
        fail(format!(
            "cannot start: {e} (proto-tests need root and iproute2, nftables, iptables; `make deps`)"
        ))
    })?;
    if let (Some(text), Some(mut sin)) = (input, child.stdin.take()) {
        sin.write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing stdin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Ns {
    name: String,
}

impl Ns {
    /// Create `pt-<pid>-<job>-<role>` with loopback up.
    pub fn new(job: usize, role: &str) -> Result<Ns, HarnessError> {
        let name = format!("pt-{}-{job}-{role}", std::process::id());
        // Created and registered under the lock: the signal handler takes it
        // and keeps it until the process exits, so no namespace can appear
        // after its clean-up.
        let mut live = LIVE
            .lock()
            .map_err(|_| HarnessError::Preflight("namespace registry poisoned".into()))?;
        run(&["ip", "netns", "add", &name])?;
        live.push(name.clone());
        drop(live);
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String, HarnessError> {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// `ip netns exec <ns> ARGV`.
    pub fn exec(&self, argv: &[&str]) -> Result<String, HarnessError> {
        self.exec_input(argv, None)
    }

    /// `ip netns exec <ns> ARGV` with stdin.
    pub fn exec_input(&self, argv: &[&str], input: Option<&str>) -> Result<String, HarnessError> {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(argv);
        run_input(&v, input)
    }

    /// A command that runs in the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

/// PROTO_KEEP=1: leave the namespaces (and their rules) for inspection; the
/// next run removes them.
fn keep() -> bool {
    std::env::var_os("PROTO_KEEP").is_some_and(|v| v == "1")
}

impl Drop for Ns {
    fn drop(&mut self) {
        if !keep() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Ok(mut l) = LIVE.lock() {
            l.retain(|n| n != &self.name);
        }
    }
}

/// Delete the namespaces of runs whose process is gone (`pt-<pid>-...`
/// where /proc/<pid> no longer exists), ending the processes still inside
/// them first (our own echo servers). Returns the names removed.
pub fn cleanup_stale() -> Result<Vec<String>, HarnessError> {
    let list = run(&["ip", "netns", "list"])?;
    let mut removed = Vec::new();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("pt-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if process_alive(pid) {
            continue;
        }
        if let Ok(pids) = run(&["ip", "netns", "pids", name]) {
            for p in pids.split_whitespace() {
                let _ = run(&["kill", "-TERM", p]);
            }
        }
        let _ = run(&["ip", "netns", "delete", name]);
        removed.push(name.to_string());
    }
    Ok(removed)
}

/// Whether `pid` runs (a zombie, killed but not yet reaped, does not).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Format: `pid (comm) state ...`; comm may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// On SIGINT/SIGTERM/SIGHUP: delete every namespace this process made, then
/// exit 130. The echo servers exit on their own when our end of their
/// stdin closes with us.
pub fn install_signal_cleanup() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Held until exit: no namespace is made after this point.
                let live = LIVE.lock();
                let names = live.as_ref().map(|l| l.to_vec()).unwrap_or_default();
                eprintln!(
                    "kproxy-proto: signal {sig}: removing {} namespaces",
                    names.len()
                );
                for n in names {
                    let _ = Command::new("ip").args(["netns", "delete", &n]).status();
                }
                std::process::exit(130);
            }
        });
    });
}

/// Check the tools every run needs; the error says what is missing.
pub fn preflight() -> Result<(), HarnessError> {
    let uid = run(&["id", "-u"])?;
    if uid.trim() != "0" {
        return Err(HarnessError::Preflight(
            "root is needed (network namespaces and netfilter rules inside them); run as root, e.g. `sudo make proto-test`"
                .into(),
        ));
    }
    let mut missing = Vec::new();
    for tool in [
        "ip",
        "nft",
        "iptables-legacy-restore",
        "iptables-nft-restore",
    ] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            missing.push(tool);
        }
    }
    if !missing.is_empty() {
        return Err(HarnessError::Preflight(format!(
            "missing tools: {} (`make deps` installs them)",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Who owns a source or endpoint address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The node namespace.
    Node,
    /// The external-client namespace.
    External,
    /// `pods[i]`.
    Pod(usize),
    /// The remote-node namespace.
    Remote,
}

/// What a topology holds.
#[derive(Debug, Clone, Default)]
pub struct TopologySpec {
    /// Node IPs (primary first per family) on the external link.
    pub node_ips: Vec<IpAddr>,
    /// Other local addresses of the node (not Kubernetes node IPs).
    pub extra_node_ips: Vec<IpAddr>,
    /// Local pods: one namespace each, with the ports it serves.
    pub local_pods: Vec<(IpAddr, Vec<(u16, Proto)>)>,
    /// Remote endpoints (one namespace for all) with their ports.
    pub remote: Vec<(IpAddr, Vec<(u16, Proto)>)>,
    /// Endpoints on the node's own addresses (host network).
    pub node_endpoints: Vec<(IpAddr, Vec<(u16, Proto)>)>,
    /// External client addresses.
    pub external: Vec<IpAddr>,
    /// Ports the node's own listener answers on, on every address
    /// ([`crate::runner::NODE_LOCAL`]).
    pub node_listen: Vec<(u16, Proto)>,
}

/// A built topology: namespaces and echo servers, all removed on drop
/// (servers first).
#[derive(Debug)]
pub struct Topology {
    servers: Vec<Child>,
    /// The node namespace (kproxy runs here).
    pub node: Ns,
    /// The external-client namespace.
    pub ext: Ns,
    /// The sink.
    pub sink: Ns,
    /// The remote-node namespace.
    pub remote: Option<Ns>,
    /// Local pods, in [`TopologySpec::local_pods`] order.
    pub pods: Vec<(IpAddr, Ns)>,
    owners: BTreeMap<IpAddr, Place>,
    /// Scratch directory (objects, configuration), removed on drop.
    pub dir: PathBuf,
}

static JOBS: AtomicUsize = AtomicUsize::new(0);

/// A number for namespace names, unique in this process.
pub fn next_job() -> usize {
    JOBS.fetch_add(1, Ordering::SeqCst)
}

fn plen(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "32" } else { "128" }
}

fn cidr(ip: &IpAddr) -> String {
    format!("{ip}/{}", plen(ip))
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "-4" } else { "-6" }
}

impl Topology {
    /// Build the namespaces, links, routes and echo servers. `proto_bin` is
    /// the `kproxy-proto` binary (echo servers, sysctls).
    pub fn build(spec: &TopologySpec, proto_bin: &Path) -> Result<Topology, HarnessError> {
        let job = next_job();
        let dir = std::env::temp_dir().join(format!("kproxy-proto-{}-{job}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError::Command {
            command: format!("mkdir {}", dir.display()),
            message: e.to_string(),
        })?;
        // Namespaces first, each owned as soon as it exists, so a failure
        // below drops (deletes) what was made.
        let node = Ns::new(job, "node")?;
        let ext = Ns::new(job, "ext")?;
        let sink = Ns::new(job, "sink")?;
        let remote = if spec.remote.is_empty() {
            None
        } else {
            Some(Ns::new(job, "remote")?)
        };
        let mut pods = Vec::new();
        for (i, (ip, _)) in spec.local_pods.iter().enumerate() {
            pods.push((*ip, Ns::new(job, &format!("pod{i}"))?));
        }
        let mut t = Topology {
            servers: Vec::new(),
            node,
            ext,
            sink,
            remote,
            pods,
            owners: BTreeMap::new(),
            dir,
        };
        t.wire(spec, proto_bin)?;
        Ok(t)
    }

    fn sysctl(&self, ns: &Ns, proto_bin: &Path, kv: &[&str]) -> Result<(), HarnessError> {
        let bin = proto_bin.to_string_lossy();
        let mut v = vec![bin.as_ref(), "sysctl"];
        v.extend_from_slice(kv);
        ns.exec(&v).map(|_| ())
    }

    fn wire(&mut self, spec: &TopologySpec, proto_bin: &Path) -> Result<(), HarnessError> {
        let common = [
            "net.ipv4.icmp_ratelimit=0",
            "net.ipv6.icmp.ratelimit=0",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ];
        for ns in self.all_ns() {
            self.sysctl(ns, proto_bin, &common)?;
        }
        self.sysctl(
            &self.node,
            proto_bin,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        let node = &self.node;
        let v4 = spec.node_ips.iter().find(|i| i.is_ipv4()).copied();
        let v6 = spec.node_ips.iter().find(|i| i.is_ipv6()).copied();

        // External link: node IPs on the node side, clients on the other.
        node.ip(&[
            "link",
            "add",
            "ext",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.ext.name(),
        ])?;
        for ip in spec.node_ips.iter().chain(&spec.extra_node_ips) {
            node.ip(&["addr", "add", &cidr(ip), "dev", "ext", "nodad"])?;
            self.owners.insert(*ip, Place::Node);
        }
        node.ip(&["link", "set", "ext", "up"])?;
        self.ext.ip(&["link", "set", "eth0", "up"])?;
        for ip in &spec.external {
            self.ext
                .ip(&["addr", "add", &cidr(ip), "dev", "eth0", "nodad"])?;
            node.ip(&["route", "add", &cidr(ip), "dev", "ext"])?;
            self.owners.insert(*ip, Place::External);
        }
        if let Some(gw) = v4 {
            self.ext.ip(&[
                "-4",
                "route",
                "add",
                "default",
                "via",
                &gw.to_string(),
                "dev",
                "eth0",
                "onlink",
            ])?;
        }
        if let Some(gw) = v6 {
            self.ext.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gw.to_string(),
                "dev",
                "eth0",
                "onlink",
            ])?;
        }

        // Sink: the node's default route; redirects everything to its echo port.
        self.link_to(&self.sink, "sink")?;
        self.sink
            .ip(&["addr", "add", &format!("{SINK_V4}/32"), "dev", "eth0"])?;
        self.sink.ip(&[
            "addr",
            "add",
            &format!("{SINK_V6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        node.ip(&["route", "add", &format!("{SINK_V6}/128"), "dev", "sink"])?;
        let mut r4 = vec![
            "-4", "route", "add", "default", "via", SINK_V4, "dev", "sink", "onlink",
        ];
        let s4 = v4.map(|i| i.to_string()).unwrap_or_default();
        if v4.is_some() {
            r4.extend_from_slice(&["src", &s4]);
        }
        node.ip(&r4)?;
        let mut r6 = vec![
            "-6", "route", "add", "default", "via", SINK_V6, "dev", "sink",
        ];
        let s6 = v6.map(|i| i.to_string()).unwrap_or_default();
        if v6.is_some() {
            r6.extend_from_slice(&["src", &s6]);
        }
        node.ip(&r6)?;
        self.sink.exec_input(
            &["nft", "-f", "-"],
            Some(&format!(
                "table inet kproxy-proto-sink {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n    meta l4proto {{ tcp, udp }} redirect to :{SINK_PORT}\n  }}\n}}\n"
            )),
        )?;
        let sink_server = self.spawn_echo(
            &self.sink,
            proto_bin,
            &["sink", "--port", &SINK_PORT.to_string()],
        )?;
        self.servers.push(sink_server);

        // Local pods, one namespace each.
        for (i, (ip, ports)) in spec.local_pods.iter().enumerate() {
            let ns = &self.pods[i].1;
            let dev = format!("p{i}");
            self.link_to(ns, &dev)?;
            self.endpoint_addrs(ns, &dev, std::slice::from_ref(ip))?;
            self.owners.insert(*ip, Place::Pod(i));
            if !ports.is_empty() {
                let c = self.serve(ns, proto_bin, &format!("pod-{ip}"), &[(*ip, ports.clone())])?;
                self.servers.push(c);
            }
        }
        // Remote endpoints, one namespace for all of them.
        if let Some(rns) = &self.remote {
            self.link_to(rns, "rem")?;
            let ips: Vec<IpAddr> = spec.remote.iter().map(|(ip, _)| *ip).collect();
            self.endpoint_addrs(rns, "rem", &ips)?;
            let c = self.serve(rns, proto_bin, "remote", &spec.remote)?;
            self.servers.push(c);
            for ip in ips {
                self.owners.insert(ip, Place::Remote);
            }
        }
        if !spec.node_listen.is_empty() {
            let any = IpAddr::from([0u16; 8]);
            let eps = [(any, spec.node_listen.clone())];
            let c = self.serve(&self.node, proto_bin, crate::runner::NODE_LOCAL, &eps)?;
            self.servers.push(c);
        }
        if !spec.node_endpoints.is_empty() {
            let c = self.serve(&self.node, proto_bin, "node", &spec.node_endpoints)?;
            self.servers.push(c);
        }
        Ok(())
    }

    fn all_ns(&self) -> Vec<&Ns> {
        let mut v = vec![&self.node, &self.ext, &self.sink];
        v.extend(self.remote.iter());
        v.extend(self.pods.iter().map(|(_, n)| n));
        v
    }

    /// A veth from the node (`dev`) to `ns` (`eth0`), the node's link
    /// addresses on its side, default routes in `ns` back to the node.
    fn link_to(&self, ns: &Ns, dev: &str) -> Result<(), HarnessError> {
        let node = &self.node;
        node.ip(&[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        node.ip(&["addr", "add", &format!("{LINK_V4}/32"), "dev", dev])?;
        node.ip(&[
            "addr",
            "add",
            &format!("{LINK_V6}/128"),
            "dev",
            dev,
            "nodad",
        ])?;
        node.ip(&["addr", "add", "fe80::1/64", "dev", dev, "nodad"])?;
        node.ip(&["link", "set", dev, "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "-4", "route", "add", "default", "via", LINK_V4, "dev", "eth0", "onlink",
        ])?;
        ns.ip(&[
            "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ])?;
        Ok(())
    }

    fn endpoint_addrs(&self, ns: &Ns, dev: &str, ips: &[IpAddr]) -> Result<(), HarnessError> {
        for ip in ips {
            ns.ip(&["addr", "add", &cidr(ip), "dev", "eth0", "nodad"])?;
            self.node
                .ip(&[fam(ip), "route", "add", &cidr(ip), "dev", dev])?;
        }
        Ok(())
    }

    fn serve(
        &self,
        ns: &Ns,
        proto_bin: &Path,
        label: &str,
        eps: &[(IpAddr, Vec<(u16, Proto)>)],
    ) -> Result<Child, HarnessError> {
        let mut args: Vec<String> = vec!["echo".into(), "--label".into(), label.into()];
        for (ip, ports) in eps {
            for (port, proto) in ports {
                args.push("--listen".into());
                args.push(
                    Target {
                        addr: std::net::SocketAddr::new(*ip, *port),
                        proto: *proto,
                    }
                    .to_string(),
                );
            }
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn_echo(ns, proto_bin, &a)
    }

    /// Start a server and wait for its `ready` line.
    fn spawn_echo(&self, ns: &Ns, proto_bin: &Path, args: &[&str]) -> Result<Child, HarnessError> {
        let what = format!("{} in {}", args.join(" "), ns.name());
        let mut c = ns
            .command(proto_bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| HarnessError::Command {
                command: what.clone(),
                message: e.to_string(),
            })?;
        let mut line = String::new();
        if let Some(out) = c.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() != "ready" {
            let _ = c.kill();
            let _ = c.wait();
            return Err(HarnessError::Command {
                command: what,
                message: "echo server did not start (see stderr above)".into(),
            });
        }
        Ok(c)
    }

    /// The namespace and bind address a probe source runs from.
    pub fn source(&self, s: &crate::scenario::Source) -> Result<(&Ns, Option<IpAddr>), String> {
        use crate::scenario::Source;
        match s {
            Source::Node => Ok((&self.node, None)),
            Source::NodeAddr(ip) => Ok((&self.node, Some(*ip))),
            Source::External(ip) | Source::Pod(ip) => match self.owners.get(ip) {
                Some(Place::External) => Ok((&self.ext, Some(*ip))),
                Some(Place::Pod(i)) => Ok((&self.pods[*i].1, Some(*ip))),
                Some(Place::Remote) => self
                    .remote
                    .as_ref()
                    .map(|r| (r, Some(*ip)))
                    .ok_or_else(|| "no remote namespace".to_string()),
                Some(Place::Node) => Ok((&self.node, Some(*ip))),
                None => Err(format!("no namespace holds source address {ip}")),
            },
        }
    }

    /// The xtables lock file of this node. iptables locks /run/xtables.lock
    /// by default, one file for every namespace of the host; each test node
    /// gets its own so parallel scenarios (and anything else on the host
    /// using iptables) do not make restores wait or time out.
    pub fn xtables_lock(&self) -> PathBuf {
        self.dir.join("xtables.lock")
    }

    /// Every address the node namespace owns (node IPs and link addresses).
    pub fn is_node_addr(&self, ip: &IpAddr) -> bool {
        matches!(self.owners.get(ip), Some(Place::Node))
            || ip.to_string() == LINK_V4
            || ip.to_string() == LINK_V6
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        if keep() {
            eprintln!(
                "PROTO_KEEP=1: kept {} (e.g. `ip netns exec {} nft list ruleset`); the next run removes them",
                self.all_ns()
                    .iter()
                    .map(|n| n.name())
                    .collect::<Vec<_>>()
                    .join(" "),
                self.node.name()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        // The namespaces are dropped (deleted) after this, field by field.
    }
}
