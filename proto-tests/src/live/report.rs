//! What one event did: [`EventReport`], its [`Check`]s and the verdict.

use super::*;

/// One event on one backend (or backend sequence): the counts, the
/// failures, the other checks.
#[derive(Debug, Clone, Default)]
pub struct EventReport {
    /// The event.
    pub event: String,
    /// The backend, or the sequence of backends.
    pub backend: String,
    /// New connections attempted (long-lived ones included, when opened).
    pub attempted: u64,
    /// New connections that failed (refused, timed out, answered by the
    /// wrong server).
    pub failed: u64,
    /// New connections that took at least a second (a SYN retransmitted).
    pub slow: u64,
    /// Long-lived connections (TCP and UDP) held through the event.
    pub held: u64,
    /// Exchanges on them.
    pub exchanges: u64,
    /// Long-lived connections that broke (no answer, reset, or answered by
    /// another endpoint).
    pub broken: u64,
    /// Each failure: when, in which phase, which connection, what.
    pub failures: Vec<String>,
    /// Other checks (leftovers removed, changes caught up).
    pub checks: Vec<Check>,
    /// Outage: from the server's return to every change in the kernel.
    pub catch_up: Option<Duration>,
    /// Outage: syncs the daemon logged from the return to the catch-up.
    pub catch_up_syncs: Option<usize>,
    /// From each daemon start in the event to its first sync (the rules
    /// already in the kernel serve meanwhile).
    pub first_syncs: Vec<Duration>,
    /// Wall time.
    pub elapsed: Duration,
    /// The control event: it passes only when connections failed and
    /// long-lived ones broke.
    pub expect_failures: bool,
    /// The event could not run to its end (setup, a daemon that did not
    /// sync, ...).
    pub error: Option<String>,
    /// Not run, and why: the backends selected leave nothing to do (a
    /// switch with one backend). Reported, never counted as a pass of the
    /// traffic checks.
    pub not_run: Option<String>,
    /// The daemon's last log lines, when the event failed.
    pub daemon_log: Option<String>,
}

/// One check besides the traffic counts.
#[derive(Debug, Clone)]
pub struct Check {
    /// What must hold.
    pub what: String,
    /// Whether it held; why not.
    pub result: Result<(), String>,
    /// Marked as failing today (reason): its result is reported (`KNOWN`,
    /// or `XPASS` when it held) but does not decide the event.
    pub known_failure: Option<String>,
}

impl Check {
    /// Whether this check lets its event pass.
    pub fn ok(&self) -> bool {
        self.known_failure.is_some() || self.result.is_ok()
    }
}

/// A reason that marks the catch-up check of the outage event as a known
/// failure (reported, not failing the run), or `None`: the check counts.
/// The kube source's watch backoff is capped (see [`WATCH_BACKOFF_CAP`]), so
/// the catch-up is bounded and the check counts.
pub const CATCH_UP_KNOWN_FAILURE: Option<&str> = None;

/// The kube source's longest delay between watch retries
/// (crates/daemon/src/source/kube/backoff.rs). After the API server returns,
/// every watcher retries within this long; the changes made during the
/// outage must then be in the kernel within one more sync.
pub const WATCH_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Slack for that one sync: the relist, `--min-sync-period` (1 s by
/// default) and the sync itself, on a loaded 2-core machine.
pub(super) const ONE_SYNC: Duration = Duration::from_secs(5);

impl EventReport {
    /// Whether the event went as it must.
    pub fn ok(&self) -> bool {
        if self.not_run.is_some() && self.error.is_none() {
            return true;
        }
        if self.error.is_some() || self.attempted == 0 || self.held == 0 {
            return false;
        }
        if self.expect_failures {
            return self.failed > 0 && self.broken > 0;
        }
        self.failed == 0 && self.broken == 0 && self.checks.iter().all(Check::ok)
    }

    /// A human-readable report: the counts, then the failures (at most
    /// 40 lines of them) and every check.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(why) = &self.not_run {
            let _ = writeln!(
                s,
                "== live: {} on {}: NOT RUN: {why}",
                self.event, self.backend
            );
            return s;
        }
        let _ = writeln!(
            s,
            "== live: {} on {}: {}: {} new connections, {} failed, {} slow (>= 1 s); {} long-lived ({} exchanges), {} broken{} ({:.1}s)",
            self.event,
            self.backend,
            match (self.ok(), self.expect_failures) {
                (true, false)
                    if self
                        .checks
                        .iter()
                        .any(|c| c.known_failure.is_some() && c.result.is_err()) =>
                {
                    "ok (KNOWN FAILURES)"
                }
                (true, false) if self.checks.iter().any(|c| c.known_failure.is_some()) => {
                    "ok (XPASS: a check marked as a known failure passed)"
                }
                (true, false) => "ok",
                (true, true) => "ok (failures seen, as they must be)",
                (false, true) => "FAIL (the control saw no failure: the counting is blind)",
                (false, false) => "FAIL",
            },
            self.attempted,
            self.failed,
            self.slow,
            self.held,
            self.exchanges,
            self.broken,
            match (self.catch_up, self.catch_up_syncs) {
                (Some(c), Some(n)) => format!(
                    "; catch-up {:.2}s after the API server's return, {n} sync(s)",
                    c.as_secs_f64()
                ),
                (Some(c), None) => format!("; catch-up {:.2}s", c.as_secs_f64()),
                _ => String::new(),
            },
            self.elapsed.as_secs_f64()
        );
        if let Some(e) = &self.error {
            let _ = writeln!(s, "   ERROR: {e}");
        }
        if !self.first_syncs.is_empty() {
            let mut v: Vec<u128> = self.first_syncs.iter().map(Duration::as_millis).collect();
            v.sort_unstable();
            let _ = writeln!(
                s,
                "   daemon start to first sync: median {} ms (min {}, max {}) over {} starts",
                v[v.len() / 2],
                v[0],
                v[v.len() - 1],
                v.len()
            );
        }
        for c in &self.checks {
            let _ = match (&c.result, &c.known_failure) {
                (Ok(()), None) => writeln!(s, "   [pass] {}", c.what),
                (Err(w), None) => writeln!(s, "   [FAIL] {}: {w}", c.what),
                (Err(w), Some(k)) => {
                    writeln!(s, "   [KNOWN] {}: {w}\n        known failure: {k}", c.what)
                }
                (Ok(()), Some(k)) => writeln!(
                    s,
                    "   [XPASS] {}\n        passed although marked known failure ({k}); once it passes every time, remove the mark (live::CATCH_UP_KNOWN_FAILURE)",
                    c.what
                ),
            };
        }
        // Every failure of a failed event (up to 40); a few of the
        // control's, which must have them.
        let max = if self.ok() { 6 } else { 40 };
        for f in self.failures.iter().take(max) {
            let _ = writeln!(s, "   {f}");
        }
        if self.failures.len() > max {
            let _ = writeln!(s, "   ... {} more", self.failures.len() - max);
        }
        if let Some(l) = &self.daemon_log
            && !self.ok()
        {
            let _ = writeln!(s, "   daemon log (last lines):");
            for line in l.lines() {
                let _ = writeln!(s, "     {line}");
            }
        }
        s
    }
}
