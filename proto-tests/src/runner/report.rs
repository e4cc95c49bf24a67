//! What a run says: the verdict on each probe and the scenario's report.

use super::*;

/// The verdict on one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// As expected.
    Pass,
    /// Not as expected.
    Fail(String),
    /// Not as expected, but marked `known_failure` (reason, what went wrong).
    KnownFailure(String, String),
    /// Marked `known_failure` but passed: the mark must go.
    UnexpectedPass(String),
    /// Could not be run here (reason), e.g. no SCTP in this kernel.
    NotRun(String),
}

/// One probe's report.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// Step number (0 = first sync).
    pub step: usize,
    /// `from -> to`.
    pub probe: String,
    /// The expectation in force for this backend.
    pub expect: String,
    /// What was seen, summarised.
    pub observed: String,
    /// The tracer check ([`crate::differential`]): what the tracer
    /// predicted and that the kernel agreed, or why the probe is exempt.
    /// `None` when not checked at all (mutated expectations, a probe that
    /// did not run).
    pub tracer: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
}

/// One scenario on one backend.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// Backend name.
    pub backend: String,
    /// Setup or sync failure (the probes of the failed step are not run).
    pub setup_error: Option<String>,
    /// Known failure of the whole scenario (reason).
    pub known_failure: Option<String>,
    /// Per probe.
    pub probes: Vec<ProbeReport>,
    /// Wall time.
    pub elapsed: Duration,
    /// The daemon's last log lines when a probe failed (daemon mode).
    pub daemon_log: Option<String>,
}

impl ScenarioReport {
    /// Whether this run fails the suite.
    pub fn failed(&self) -> bool {
        let probe_fail = self
            .probes
            .iter()
            .any(|p| matches!(p.verdict, Verdict::Fail(_) | Verdict::UnexpectedPass(_)));
        match &self.known_failure {
            None => self.setup_error.is_some() || probe_fail,
            Some(_) => probe_fail || self.scenario_xpass(),
        }
    }

    /// A scenario marked `known_failure` that ran cleanly: the mark must go
    /// (so the suite fails).
    pub fn scenario_xpass(&self) -> bool {
        self.known_failure.is_some()
            && self.setup_error.is_none()
            && !self.probes.is_empty()
            && !self
                .probes
                .iter()
                .any(|p| matches!(p.verdict, Verdict::KnownFailure(..) | Verdict::Fail(_)))
    }

    /// Count of probes per verdict kind: (pass, fail, known, not run).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for p in &self.probes {
            match p.verdict {
                Verdict::Pass => c.0 += 1,
                Verdict::Fail(_) | Verdict::UnexpectedPass(_) => c.1 += 1,
                Verdict::KnownFailure(..) => c.2 += 1,
                Verdict::NotRun(_) => c.3 += 1,
            }
        }
        c
    }

    /// A human-readable report: one line per probe.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let (pass, fail, known, notrun) = self.counts();
        let status = if self.failed() {
            "FAIL"
        } else if self.known_failure.is_some() || known > 0 {
            "ok (KNOWN FAILURES)"
        } else {
            "ok"
        };
        let _ = writeln!(
            s,
            "== {} on {}: {status}: {pass} passed, {fail} failed, {known} known failures, {notrun} not run ({:.1}s)",
            self.scenario,
            self.backend,
            self.elapsed.as_secs_f64()
        );
        if let Some(r) = &self.known_failure {
            let _ = writeln!(s, "   KNOWN FAILURE (whole scenario): {r}");
        }
        if let Some(e) = &self.setup_error {
            let _ = writeln!(s, "   SETUP/SYNC FAILED: {e}");
        }
        for p in &self.probes {
            let (tag, why) = match &p.verdict {
                Verdict::Pass => ("pass", String::new()),
                Verdict::Fail(w) => ("FAIL", format!("\n        why: {w}")),
                Verdict::KnownFailure(r, w) => (
                    "KNOWN",
                    format!("\n        known failure: {r}\n        why: {w}"),
                ),
                Verdict::UnexpectedPass(r) => (
                    "XPASS",
                    format!("\n        marked known_failure ({r}) but passed: remove the mark"),
                ),
                Verdict::NotRun(r) => ("NOT RUN", format!(" ({r})")),
            };
            let _ = writeln!(
                s,
                "   [{tag}] step {} {}: expect {}; saw {}{why}",
                p.step, p.probe, p.expect, p.observed
            );
            if let Some(t) = &p.tracer {
                let _ = writeln!(s, "        tracer: {t}");
            }
        }
        if let Some(l) = &self.daemon_log {
            let _ = writeln!(s, "   daemon log (last lines):");
            for line in l.lines() {
                let _ = writeln!(s, "     {line}");
            }
        }
        if self.scenario_xpass() {
            let _ = writeln!(
                s,
                "   XPASS: the scenario is marked known_failure but every probe passed: remove the mark"
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(known: Option<&str>, verdicts: &[Verdict]) -> ScenarioReport {
        ScenarioReport {
            scenario: "s".into(),
            backend: "nftables".into(),
            setup_error: None,
            known_failure: known.map(String::from),
            probes: verdicts
                .iter()
                .map(|v| ProbeReport {
                    step: 0,
                    probe: "p".into(),
                    expect: "e".into(),
                    observed: "o".into(),
                    tracer: None,
                    verdict: v.clone(),
                })
                .collect(),
            elapsed: Duration::ZERO,
            daemon_log: None,
        }
    }

    #[test]
    fn known_failures_and_xpass() {
        let known = Verdict::KnownFailure("bug".into(), "why".into());
        let fail = Verdict::Fail("why".into());
        assert!(!report(None, &[Verdict::Pass]).failed());
        assert!(report(None, &[Verdict::Pass, fail.clone()]).failed());
        assert!(!report(None, &[Verdict::Pass, known.clone()]).failed());
        assert!(report(None, &[Verdict::UnexpectedPass("bug".into())]).failed());
        // A scenario marked known_failure fails the suite only once it passes.
        assert!(!report(Some("bug"), &[Verdict::Pass, known.clone()]).failed());
        assert!(report(Some("bug"), &[Verdict::Pass, Verdict::Pass]).failed());
        assert!(
            report(Some("bug"), &[Verdict::Pass])
                .render()
                .contains("XPASS")
        );
        // Probes that cannot run here do not fail anything.
        assert!(!report(None, &[Verdict::NotRun("no SCTP".into())]).failed());
        let mut setup = report(None, &[]);
        setup.setup_error = Some("kproxy run failed".into());
        assert!(setup.failed());
    }
}
