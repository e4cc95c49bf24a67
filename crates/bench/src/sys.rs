//! Processes and network namespaces: everything the bench runs outside
//! its own process goes through here.
//!
//! - [`Ns`]: a network namespace named `bch-<pid>-<n>`, deleted on drop;
//! - [`run_timed`]: run a command with a timeout, killing it when the
//!   timeout passes, and return its output and wall time;
//! - [`exec_rss`]: the hidden `kproxy-bench exec-rss` subcommand, which
//!   runs a command and reports its wall time and peak RSS from
//!   `getrusage(RUSAGE_CHILDREN)`. It is a separate process so the figure
//!   belongs to that one command and not to everything the bench ran.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A command's result.
#[derive(Debug)]
pub struct Timed {
    /// What it printed and how it exited.
    pub output: Output,
}

impl Timed {
    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
}

/// Run `cmd` (with `stdin` piped in, if given), killing it after
/// `timeout`. A non-zero exit is an error that quotes stderr.
pub fn run_timed(
    mut cmd: Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<Timed> {
    let what = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let pid = child.id();
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut sin)) => {
            let data = data.to_vec();
            Some(std::thread::spawn(move || {
                let _ = sin.write_all(&data);
            }))
        }
        _ => None,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(timeout) {
        Ok(r) => r.with_context(|| format!("waiting for {what}"))?,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            bail!("timeout: {what} still running after {timeout:?}, killed");
        }
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let err: String = err.chars().take(2000).collect();
        bail!("{what} failed ({}): {err}", output.status);
    }
    Ok(Timed { output })
}

/// A network namespace owned by the bench (`bch-<pid>-<n>`), deleted on
/// drop with everything in it (rules, links, sockets' conntrack state).
#[derive(Debug)]
pub struct Ns {
    name: String,
}

impl Ns {
    /// Create a fresh namespace with `lo` up.
    pub fn new() -> anyhow::Result<Ns> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "bch-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut c = Command::new("ip");
        c.args(["netns", "add", &name]);
        run_timed(c, None, Duration::from_secs(30))
            .context("creating a network namespace (the bench needs root and iproute2)")?;
        let ns = Ns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME argv...` as a command.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Run a command in the namespace (60 s timeout); its stdout.
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<String> {
        self.exec_timeout(argv, Duration::from_secs(60))
    }

    /// Run a command in the namespace with a timeout; its stdout.
    pub fn exec_timeout(&self, argv: &[&str], timeout: Duration) -> anyhow::Result<String> {
        Ok(run_timed(self.command(argv), None, timeout)?.stdout())
    }

    /// Run a command in the namespace under `exec-rss`: the command's own
    /// wall time and peak RSS, without `ip netns exec`'s set-up.
    pub fn exec_rss(&self, argv: &[&str], timeout: Duration) -> anyhow::Result<RssReport> {
        let me = std::env::current_exe().context("locating kproxy-bench")?;
        let me = me.to_string_lossy().into_owned();
        let mut full = vec![me.as_str(), "exec-rss", "--"];
        full.extend_from_slice(argv);
        let t = run_timed(self.command(&full), None, timeout)?;
        RssReport::parse(&t.stdout())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Delete namespaces a killed bench left behind: `bch-<pid>-<n>` whose
/// process is gone. Only the bench's own naming scheme is touched.
pub fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("bch-") else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_err() || n.parse::<u32>().is_err() {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "delete", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What `exec-rss` measured.
#[derive(Debug, Clone, Copy)]
pub struct RssReport {
    /// Spawn to exit.
    pub wall: Duration,
    /// Peak resident set size, in KiB.
    pub max_rss_kib: u64,
}

impl RssReport {
    fn parse(text: &str) -> anyhow::Result<RssReport> {
        let line = report_line(text, "exec-rss")?;
        Ok(RssReport {
            wall: Duration::from_nanos(report_value(line, "wall_ns")?),
            max_rss_kib: report_value(line, "max_rss_kib")?,
        })
    }
}

/// The last line of `text` that starts with `tag` and a space: the report
/// a hidden `kproxy-bench` subcommand prints (`TAG KEY=VALUE ...`).
pub fn report_line<'a>(text: &'a str, tag: &str) -> anyhow::Result<&'a str> {
    text.lines()
        .rev()
        .find(|l| {
            l.strip_prefix(tag)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .with_context(|| format!("{tag} printed no report: {text:?}"))
}

/// The value of `KEY=` in a report line of [`report_line`].
pub fn report_value<T>(line: &str, key: &str) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    line.split_whitespace()
        .skip(1)
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("report {line:?} lacks {key}"))?
        .parse()
        .with_context(|| format!("report {line:?}: {key}"))
}

/// `kproxy-bench exec-rss -- ARGV`: run ARGV (stdout and stderr passed
/// through to stderr, so only the report is on stdout), then print
/// `exec-rss wall_ns=... max_rss_kib=...`. Fails when ARGV fails.
pub fn exec_rss(argv: &[String]) -> anyhow::Result<()> {
    let (prog, args) = argv.split_first().context("exec-rss: no command given")?;
    let start = Instant::now();
    let status = Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .with_context(|| format!("cannot start {prog}"))?;
    let wall = start.elapsed();
    if !status.success() {
        bail!("{argv:?} failed: {status}");
    }
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .context("getrusage")?;
    // Linux reports ru_maxrss in KiB.
    println!(
        "exec-rss wall_ns={} max_rss_kib={}",
        wall.as_nanos(),
        usage.max_rss()
    );
    Ok(())
}

/// Check the tools the bench drives are installed.
pub fn require_tools(tools: &[&str]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for t in tools {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        if !found {
            missing.push(*t);
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing tools: {} (run `make deps`; the bench needs root, iproute2, nftables, iptables, conntrack)",
            missing.join(", ")
        );
    }
    Ok(())
}
