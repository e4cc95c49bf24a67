//! The transport: the `nft` program, run through kproxy-exec's runner.
//!
//! [`Nft::apply`] pipes a script to `nft -f -` (one atomic kernel
//! transaction). nft reports errors as `/dev/stdin:LINE:COL-COL: Error: ...`;
//! the wrapper maps `LINE` back to the statement it sent (bounded around
//! the column, since an `add element` line can be long) so the error names
//! the offending statement. Optionally every command is prefixed (`ip netns
//! exec NAME`) so tests and benchmarks run inside a network namespace.

use kproxy_exec::Runner;
use kproxy_graph::{ApplyError, Transport};

use crate::ir::Transaction;

const BACKEND: &str = "nftables";

/// How to run `nft`: through a [`Runner`], on the host or inside a
/// network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nft {
    runner: Runner,
}

impl Nft {
    /// `nft` in the current network namespace.
    pub fn host() -> Self {
        Nft::with_runner(Runner::host())
    }

    /// `nft` inside the named network namespace (`ip netns exec NAME nft`).
    pub fn in_netns(name: &str) -> Self {
        Nft::with_runner(Runner::in_netns(name))
    }

    /// `nft` through a given runner.
    pub fn with_runner(runner: Runner) -> Self {
        Nft { runner }
    }

    /// The runner.
    pub fn runner(&self) -> &Runner {
        &self.runner
    }

    /// The network namespace commands run in (`None`: this process's).
    pub fn netns(&self) -> Option<&str> {
        self.runner.netns()
    }

    /// The command line, for messages.
    pub fn program(&self) -> String {
        self.runner.command_line("nft", &[])
    }

    /// Run `nft ARGS`, with `stdin` piped when given; return stdout.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
        let out = self
            .runner
            .output("nft", args, stdin.map(str::as_bytes))
            .map_err(|e| match e {
                kproxy_exec::Error::Spawn { program, source } => ApplyError::Spawn {
                    backend: BACKEND,
                    program,
                    source,
                },
                other => ApplyError::Other {
                    backend: BACKEND,
                    message: other.to_string(),
                },
            })?;
        if !out.success() {
            return Err(ApplyError::Rejected {
                backend: BACKEND,
                program: out.program,
                status: out.status.to_string(),
                stderr: explain(&out.stderr, stdin.unwrap_or("")),
            });
        }
        Ok(out.stdout)
    }

    /// Apply a script as one transaction (`nft -f -`).
    pub fn apply(&self, script: &str) -> Result<(), ApplyError> {
        self.run(&["-f", "-"], Some(script)).map(|_| ())
    }

    /// `nft list table FAMILY NAME`.
    pub fn list_table(&self, family: &str, name: &str) -> Result<String, ApplyError> {
        self.run(&["list", "table", family, name], None)
    }

    /// `nft --version`, e.g. `(1, 0, 6)`.
    pub fn version(&self) -> Result<(u32, u32, u32), ApplyError> {
        let out = self.run(&["--version"], None)?;
        parse_nft_version(&out).ok_or_else(|| ApplyError::Other {
            backend: BACKEND,
            message: format!("cannot parse nft version from {:?}", out.trim()),
        })
    }
}

/// The exec transport: each transaction rendered and piped to `nft -f -`.
/// A netlink transport implements the same trait on the same payload,
/// the typed [`Transaction`], and encodes it without text.
impl Transport for Nft {
    type Payload = Transaction;

    fn apply(&mut self, tx: &Transaction) -> Result<(), ApplyError> {
        Nft::apply(self, &tx.render())
    }
}

/// Parse `nftables v1.0.6 (Lester Gooch #5)`.
pub fn parse_nft_version(s: &str) -> Option<(u32, u32, u32)> {
    let v = s.split_whitespace().find(|w| w.starts_with('v'))?;
    parse_dotted(&v[1..])
}

/// Parse `6.18.44-foo` / `1.0.6` into three numbers (missing ones are 0).
pub fn parse_dotted(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let a = it.next()?.parse().ok()?;
    let b = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let c = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    Some((a, b, c))
}

/// The longest excerpt of a statement quoted in an error.
const STATEMENT_MAX: usize = 300;

/// nft's stderr, with each `/dev/stdin:LINE:COL...: Error: msg` turned into
/// `line LINE: msg; statement: <excerpt>`, and the rest (nft's own echo of
/// the line and its caret marks) dropped: the excerpt replaces them.
pub fn explain(stderr: &str, script: &str) -> String {
    let mut out = Vec::new();
    let mut located = false;
    for line in stderr.lines() {
        if let Some((lineno, col, msg)) = parse_location(line) {
            located = true;
            let stmt = script.lines().nth(lineno.saturating_sub(1)).unwrap_or("");
            out.push(format!(
                "line {lineno}: {}; statement: {}",
                msg.trim(),
                excerpt(stmt, col)
            ));
        } else if !located && !line.trim().is_empty() {
            out.push(line.to_string());
        }
    }
    if out.is_empty() {
        stderr.trim().to_string()
    } else {
        out.join("\n")
    }
}

/// `/dev/stdin:12:5-9: Error: foo` → (12, 5, "Error: foo").
fn parse_location(line: &str) -> Option<(usize, usize, &str)> {
    let rest = line
        .strip_prefix("/dev/stdin:")
        .or_else(|| line.strip_prefix("-:"))?;
    let (lineno, rest) = rest.split_once(':')?;
    let (cols, msg) = rest.split_once(": ")?;
    let col = cols.split('-').next()?.parse().ok()?;
    Some((lineno.parse().ok()?, col, msg))
}

/// Up to [`STATEMENT_MAX`] characters of `stmt` around column `col` (1-based).
fn excerpt(stmt: &str, col: usize) -> String {
    if stmt.len() <= STATEMENT_MAX {
        return stmt.to_string();
    }
    let col = col.saturating_sub(1).min(stmt.len());
    let mut start = col.saturating_sub(STATEMENT_MAX / 2);
    while !stmt.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (start + STATEMENT_MAX).min(stmt.len());
    while !stmt.is_char_boundary(end) {
        end -= 1;
    }
    // Always show the statement's head (what and where) too.
    let head: String = stmt.chars().take(60).collect();
    if start == 0 {
        format!("{} ...", &stmt[..end])
    } else {
        format!("{head} ... {} ...", &stmt[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_line_to_statement() {
        let script = "add table ip x\nadd chain ip x y\nadd rule ip x y foo bar\n";
        let stderr = "/dev/stdin:3:17-19: Error: No symbol type information\nadd rule ip x y foo bar\n                ^^^\n";
        assert_eq!(
            explain(stderr, script),
            "line 3: Error: No symbol type information; statement: add rule ip x y foo bar"
        );
    }

    #[test]
    fn long_statements_are_bounded() {
        let long = format!("add element ip t s {{ {} }}", "1.2.3.4, ".repeat(500));
        let stderr = "/dev/stdin:1:2000-2003: Error: boom\n";
        let e = explain(stderr, &long);
        assert!(e.len() < 500, "{e}");
        assert!(e.contains("add element ip t s"));
    }

    #[test]
    fn unlocated_errors_pass_through() {
        assert_eq!(explain("netlink: Error: foo\n", ""), "netlink: Error: foo");
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_nft_version("nftables v1.0.6 (Lester Gooch #5)\n"),
            Some((1, 0, 6))
        );
        assert_eq!(parse_dotted("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(parse_dotted("5.13"), Some((5, 13, 0)));
    }
}
