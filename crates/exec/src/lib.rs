//! kproxy-exec: the one place kproxy runs a process.
//!
//! Every tool kproxy runs (`nft`, `iptables-*-restore`, `iptables-*-save`,
//! `conntrack`, `ip`) goes through a [`Runner`]:
//! - the command is an argv (no shell), optionally inside a named network
//!   network namespace (`ip netns exec NAME ...`, for tests and
//!   benchmarks), with extra environment variables;
//! - standard input is streamed from a byte slice on a helper thread while
//!   the child's standard output and error are collected, so a large
//!   input never deadlocks against a child that fills its output pipes,
//!   and the input is never copied;
//! - standard output is captured whole ([`Runner::output`]) or handed over
//!   line by line as it arrives ([`Runner::lines`], for dumps of tens of
//!   MB);
//! - a program that cannot be started is an [`Error::Spawn`], one that
//!   exits unsuccessfully an [`Error::Failed`] naming the command line,
//!   its status and its standard error ([`Output::check`], [`Runner::run`]).
//!
//! `std::process::Command::new` (and tokio's) is banned everywhere else in
//! the workspace by `clippy.toml`; this crate holds the one allowed use.

#![deny(missing_docs)]

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::{ExitStatus, Stdio};

/// Why a command did not yield its output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started (missing binary, say), or its
    /// pipes failed.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The command line.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        program: String,
        /// Its exit status, for messages.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

impl Error {
    /// The command line concerned.
    pub fn program(&self) -> &str {
        match self {
            Error::Spawn { program, .. } | Error::Failed { program, .. } => program,
        }
    }
}

/// What a finished process left.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub program: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Standard output (empty when it was handed over line by line).
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// The process exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `self` when the process succeeded, else [`Error::Failed`].
    pub fn check(self) -> Result<Output, Error> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::Failed {
                program: self.program,
                status: self.status.to_string(),
                stderr: self.stderr.trim().to_string(),
            })
        }
    }
}

/// Runs programs in this process's network namespace or a named one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Runner {
    netns: Option<String>,
    env: Vec<(String, String)>,
}

impl Runner {
    /// Run in this process's network namespace.
    pub fn host() -> Self {
        Runner::default()
    }

    /// Run every command inside the named network namespace
    /// (`ip netns exec NAME ...`).
    pub fn in_netns(name: &str) -> Self {
        Runner {
            netns: Some(name.to_string()),
            env: Vec::new(),
        }
    }

    /// Set an environment variable for every command (replacing an
    /// earlier value of the same name).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The value this runner gives `key`, if it sets it.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The network namespace commands run in (`None`: this process's).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// The command line of `program args...` as this runner runs it, for
    /// messages.
    pub fn command_line(&self, program: &str, args: &[&str]) -> String {
        let mut words: Vec<&str> = Vec::with_capacity(args.len() + 5);
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns.as_str()]);
        }
        words.push(program);
        words.extend(args);
        words.join(" ")
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "the runner is the one place kproxy starts processes"
    )]
    fn command(&self, program: &str, args: &[&str]) -> std::process::Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns.as_str(), program]);
                c
            }
            None => std::process::Command::new(program),
        };
        c.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Run `program args...`, feeding `stdin` when given (else standard
    /// input is empty), and collect its output whatever its exit status.
    /// Errors only when the program cannot be started (inside a network
    /// namespace a missing program shows as a failed run instead, since
    /// `ip` started).
    pub fn output(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Output, Error> {
        let input = if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let (line, mut child) = self.spawn(program, args, input)?;
        let spawn_err = |source| Error::Spawn {
            program: line.clone(),
            source,
        };
        let pipe = child.stdin.take();
        let out = std::thread::scope(|s| {
            // Standard input from a scoped thread (borrowing, not copying,
            // the input) while this one collects the output.
            if let (Some(data), Some(mut pipe)) = (stdin, pipe) {
                s.spawn(move || {
                    // A child that exits early closes the pipe; its status
                    // says why.
                    let _ = pipe.write_all(data);
                });
            }
            child.wait_with_output()
        })
        .map_err(spawn_err)?;
        Ok(Output {
            program: line,
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Start `program args...` with `stdin` and its standard output and
    /// error piped: its command line and the child.
    fn spawn(
        &self,
        program: &str,
        args: &[&str],
        stdin: Stdio,
    ) -> Result<(String, std::process::Child), Error> {
        let line = self.command_line(program, args);
        let spawned = self
            .command(program, args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        match spawned {
            Ok(child) => Ok((line, child)),
            Err(source) => Err(Error::Spawn {
                program: line,
                source,
            }),
        }
    }

    /// [`Runner::output`] of a run that must succeed: its standard output,
    /// or [`Error::Failed`] naming the command line, status and standard
    /// error.
    pub fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, Error> {
        Ok(self.output(program, args, stdin)?.check()?.stdout)
    }

    /// Run `program args...` with empty standard input and hand each line
    /// of its standard output (without the newline) to `line` as it
    /// arrives, keeping none of it. Returns the status and standard error
    /// whatever the exit status.
    pub fn lines(
        &self,
        program: &str,
        args: &[&str],
        mut line: impl FnMut(&str),
    ) -> Result<Output, Error> {
        let (cmdline, mut child) = self.spawn(program, args, Stdio::null())?;
        let spawn_err = |source| Error::Spawn {
            program: cmdline.clone(),
            source,
        };
        let stderr_pipe = child.stderr.take();
        let stdout_pipe = child.stdout.take();
        let (read, stderr) = std::thread::scope(|s| {
            // Standard error from a thread: a child that fills that pipe
            // while standard output is read would otherwise block.
            let err = stderr_pipe.map(|mut e| {
                s.spawn(move || {
                    let mut text = String::new();
                    let _ = e.read_to_string(&mut text);
                    text
                })
            });
            let mut read = Ok(());
            if let Some(out) = stdout_pipe {
                let mut r = std::io::BufReader::new(out);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) => break,
                        Ok(_) => line(String::from_utf8_lossy(&buf).trim_end_matches('\n')),
                        Err(e) => {
                            read = Err(e);
                            break;
                        }
                    }
                }
            }
            let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
            (read, stderr)
        });
        let status = child.wait().map_err(spawn_err)?;
        read.map_err(spawn_err)?;
        Ok(Output {
            program: cmdline,
            status,
            stdout: String::new(),
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_is_streamed_and_output_captured() {
        // Larger than a pipe buffer both ways: a runner that wrote stdin
        // before reading stdout would deadlock here.
        let input = "0123456789abcdef\n".repeat(64 * 1024);
        let out = Runner::host()
            .output("cat", &[], Some(input.as_bytes()))
            .expect("cat runs");
        assert!(out.success());
        assert_eq!(out.stdout.len(), input.len());
        assert_eq!(out.stdout, input);
    }

    #[test]
    fn failure_names_the_tool_status_and_stderr() {
        let e = Runner::host()
            .run("sh", &["-c", "echo oops >&2; exit 3"], None)
            .expect_err("exit 3 is a failure");
        let text = e.to_string();
        assert!(
            text.starts_with("sh -c echo oops >&2; exit 3 failed ("),
            "{text}"
        );
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(text.ends_with(": oops"), "{text}");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let e = Runner::host()
            .run("kproxy-no-such-program", &[], None)
            .expect_err("no such program");
        assert!(matches!(e, Error::Spawn { .. }), "{e:?}");
        assert!(e.to_string().contains("kproxy-no-such-program"), "{e}");
    }

    #[test]
    fn lines_arrive_one_by_one_with_stderr_kept() {
        let mut got = Vec::new();
        let out = Runner::host()
            .lines("sh", &["-c", "printf 'a\\nb\\nc'; echo err >&2"], |l| {
                got.push(l.to_string())
            })
            .expect("sh runs");
        assert!(out.success());
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn environment_and_netns_command_line() {
        let r = Runner::host()
            .with_env("KPROXY_EXEC_TEST", "x")
            .with_env("KPROXY_EXEC_TEST", "y");
        assert_eq!(r.env("KPROXY_EXEC_TEST"), Some("y"));
        let out = r
            .run("sh", &["-c", "printf %s \"$KPROXY_EXEC_TEST\""], None)
            .expect("sh runs");
        assert_eq!(out, "y");
        assert_eq!(
            Runner::in_netns("t1").command_line("nft", &["-f", "-"]),
            "ip netns exec t1 nft -f -"
        );
    }
}
