//! Helpers for the daemon's kernel tests: the real `kproxy` binary run
//! inside a `NetNs`, HTTP GETs from inside that namespace, and polling.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports, reason = "each test binary uses part of the helpers")]
pub use kproxy_testkit::{NetNs, TempDir, in_netns};

/// A test namespace of the daemon's tests (`kp-dmn-*`).
pub fn test_ns() -> NetNs {
    NetNs::new("dmn")
}

/// The binary under test.
pub const KPROXY: &str = env!("CARGO_BIN_EXE_kproxy");

/// The backends, as `--backend` spells them.
pub const BACKENDS: [&str; 3] = ["iptables-legacy", "iptables-nft", "nftables"];

/// The repository's testdata/ (from this crate's own location, so the
/// path is right whichever checkout built the test).
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// A fixture's text from testdata/fixtures.
pub fn fixture(name: &str) -> String {
    let p = testdata().join(format!("fixtures/{name}.yaml"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// testdata/configs/default.yaml.
pub fn default_config() -> PathBuf {
    testdata().join("configs/default.yaml")
}

/// `kproxy run --once` of `backend` on the file `source` with
/// testdata/configs/default.yaml, inside `ns`: (success, stdout, stderr).
pub fn run_once(ns: &NetNs, backend: &str, source: &str) -> (bool, String, String) {
    run_once_with(ns, backend, source, default_config(), &[], &[])
}

/// `kproxy run --backend BACKEND --source SOURCE --config CONFIG --once
/// EXTRA...` inside `ns` with `env`: (success, stdout, stderr).
pub fn run_once_with(
    ns: &NetNs,
    backend: &str,
    source: impl AsRef<Path>,
    config: impl AsRef<Path>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let source = source.as_ref().display().to_string();
    let config = config.as_ref().display().to_string();
    let mut args = vec![
        "run",
        "--backend",
        backend,
        "--source",
        &source,
        "--config",
        &config,
        "--once",
    ];
    args.extend_from_slice(extra);
    kproxy_in(ns, &args, env)
}

/// Run `kproxy ARGS` inside `ns` to completion: (success, stdout, stderr).
pub fn kproxy_in(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = ns.command("env");
    c.arg(format!("XTABLES_LOCKFILE={}", ns.xtables_lock()));
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    let out = c.arg(KPROXY).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The path of the installed program `prog` (which must be installed).
#[allow(
    clippy::disallowed_methods,
    reason = "a test looks up a program on the host"
)]
pub fn which(prog: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .unwrap();
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!p.is_empty(), "{prog} is not installed (run `make deps`)");
    p
}

/// Write into `dir` a wrapper `prog` that runs the shell lines `first`,
/// then the installed `prog` with its arguments.
pub fn write_wrapper(dir: &TempDir, prog: &str, first: &str) {
    let real = which(prog);
    dir.write_program(prog, &format!("#!/bin/sh\n{first}exec {real} \"$@\"\n"));
}

/// What the kernel holds of a backend's rules inside `ns`.
pub fn kernel_rules(ns: &NetNs, backend: &str) -> String {
    let argv: Vec<&str> = match backend {
        "nftables" => vec!["nft", "list", "ruleset"],
        "iptables-legacy" => vec!["iptables-legacy-save"],
        "iptables-nft" => vec!["iptables-nft-save"],
        other => panic!("unknown backend {other}"),
    };
    let out = ns.command(argv[0]).args(&argv[1..]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `f` every 100 ms until it is true or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A long-running `kproxy run` inside a namespace; SIGTERM on drop.
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    _logdir: TempDir,
}

impl Daemon {
    /// Start `kproxy run ARGS` in `ns` with extra environment.
    pub fn start(ns: &NetNs, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_wrapped(ns, &[], args, env)
    }

    /// [`Daemon::start`] through a command that execs its arguments
    /// (`prlimit --nofile=256:`).
    pub fn start_wrapped(
        ns: &NetNs,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let logdir = TempDir::new("log");
        let log = logdir.path().join("kproxy.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut c = ns.command("env");
        c.arg("KPROXY_LOG=debug");
        c.arg(format!("XTABLES_LOCKFILE={}", ns.xtables_lock()));
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        let child = c
            .args(wrapper)
            .arg(KPROXY)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon {
            child,
            log,
            _logdir: logdir,
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        // `ip netns exec` execs the program, so the child is kproxy; `env`
        // too execs it.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// A plain HTTP/1.0 GET to `127.0.0.1:port` inside `ns`, from a thread that
/// joins the namespace: (status, headers, body). `None` when nothing
/// listens yet.
pub fn http_get(ns: &NetNs, port: u16, path: &str) -> Option<(u16, String, String)> {
    http_get_at(ns, "127.0.0.1", port, path)
}

/// [`http_get`] to `ip:port`.
pub fn http_get_at(ns: &NetNs, ip: &str, port: u16, path: &str) -> Option<(u16, String, String)> {
    let ip: std::net::IpAddr = ip.parse().unwrap();
    let nspath = format!("/run/netns/{}", ns.name());
    let path = path.to_string();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&nspath).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut s = TcpStream::connect((ip, port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, head.to_string(), body.to_string()))
    })
    .join()
    .unwrap()
}

/// Whether the daemon's metric `sample` reaches `at_least` within `within`.
pub fn metric_reaches(ns: &NetNs, sample: &str, at_least: f64, within: Duration) -> bool {
    wait_for(within, || {
        http_get(ns, 10249, "/metrics")
            .and_then(|(_, _, m)| metric(&m, sample))
            .is_some_and(|v| v >= at_least)
    })
}

/// The value of `sample` (0 when absent) in the metrics of the daemon in
/// `ns`, and the whole scrape.
pub fn scraped(ns: &NetNs, sample: &str) -> (f64, String) {
    let (_, _, m) = http_get(ns, 10249, "/metrics").unwrap();
    (metric(&m, sample).unwrap_or(0.0), m)
}

/// The value of a metric sample line (`name{labels} value`).
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A binder for `kproxy_apiserver_emulator::Emulator::start_with` that
/// creates the listening socket inside network namespace `ns`, so kproxy
/// reaches the emulator on that namespace's loopback.
pub fn bind_in(
    ns: &str,
) -> impl Fn(std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync + 'static
{
    use nix::sched::{CloneFlags, setns};
    let path = format!("/var/run/netns/{ns}");
    move |addr| {
        let path = path.clone();
        // setns affects only the calling thread: a throwaway thread makes
        // the socket, which stays in the namespace it was made in.
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)?;
            setns(&file, CloneFlags::CLONE_NEWNET)?;
            kproxy_apiserver_emulator::reusable_listener(addr)
        })
        .join()
        .map_err(|_| std::io::Error::other("bind thread panicked"))?
    }
}

/// The flags of a file-source daemon in a test: `--source`, `--config`, a
/// 1 s sync period (drift checks every second), a 100 ms minimum, and the
/// healthz and metrics listeners on their default loopback ports.
pub fn daemon_args<'a>(backend: &'a str, source: &'a str, config: &'a str) -> Vec<&'a str> {
    vec![
        "--backend",
        backend,
        "--source",
        source,
        "--config",
        config,
        "--sync-period",
        "1s",
        "--min-sync-period",
        "100ms",
        "--healthz-bind-address",
        "127.0.0.1:10256",
        "--metrics-bind-address",
        "127.0.0.1:10249",
    ]
}

/// A new scratch directory (named after `tag`) holding the nodeports
/// fixture as `cluster.yaml`: the directory and the file.
pub fn nodeports_source(tag: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    let file = dir.write("cluster.yaml", &fixture("nodeports"));
    (dir, file)
}

/// Write `config.yaml` in `dir`: a configuration for node `test-node` with
/// cluster CIDR 10.0.0.0/8 and the YAML lines `extra`.
pub fn write_config(dir: &TempDir, extra: &str) -> PathBuf {
    dir.write(
        "config.yaml",
        &format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhostnameOverride: test-node\nclusterCIDR: 10.0.0.0/8\n{extra}"
        ),
    )
}

/// Rewrite `cluster.yaml` in `dir` as the nodeports fixture with its
/// endpoint 10.180.0.1 moved to 10.180.0.9: the change the tests follow.
pub fn move_endpoint(dir: &TempDir) {
    dir.write(
        "cluster.yaml",
        &fixture("nodeports").replace("10.180.0.1", "10.180.0.9"),
    );
}

/// [`move_endpoint`], then wait until `backend`'s rules in `ns` hold the
/// new address; else fail with `why` and the daemon's log.
pub fn move_endpoint_and_wait(ns: &NetNs, dir: &TempDir, backend: &str, d: &Daemon, why: &str) {
    move_endpoint(dir);
    wait_for_rules(ns, backend, "10.180.0.9", d, why);
}

/// Wait up to 10 s until `backend`'s rules in `ns` hold `what`; else fail
/// with `why` and the daemon's log.
pub fn wait_for_rules(ns: &NetNs, backend: &str, what: &str, d: &Daemon, why: &str) {
    assert!(
        wait_for(Duration::from_secs(10), || kernel_rules(ns, backend)
            .contains(what)),
        "{why}:\n{}",
        d.log()
    );
}

/// Wait until the daemon has applied its first sync (`/rules` answers).
pub fn wait_synced(ns: &NetNs, d: &Daemon) {
    assert!(
        wait_for(Duration::from_secs(20), || http_get(ns, 10249, "/rules")
            .is_some_and(|r| r.0 == 200)),
        "the daemon never synced:\n{}",
        d.log()
    );
}
