//! When a watcher tries again after an error.
//!
//! kube-runtime's watcher recovers by itself (it resumes a watch, or lists
//! again after a 410) but leaves the pacing to its consumer. Its
//! `StreamBackoff` resets the delay on every `Ok` item, and the watcher
//! emits one (`Init`) before every list, so with the API server down the
//! delay never grew: about three LIST requests a second per node. This
//! policy is instead the one of client-go's reflector (exponential from
//! 1 s, doubling, capped at 30 s, reset only once the watcher has gone two
//! minutes without an error), with jitter so that the nodes of a cluster do
//! not come back in step, and two kinds of errors that are not outages:
//!
//! - **410 Gone** ("too old resource version"): the watcher lists again,
//!   at once. If 410s repeat within [`RELIST_GUARD`], they are paced like
//!   any other error, so a server that keeps answering 410 is not
//!   hammered.
//! - **403 Forbidden** right after errors or at start: a freshly started
//!   API server answers 403 until its authorizer has loaded the RBAC
//!   objects, a few seconds. For [`FORBIDDEN_GRACE`] a 403 is retried
//!   after the base delay without growing it and is logged at debug
//!   level; a 403 that persists longer is a real denial (RBAC missing)
//!   and is paced and logged like any other error.
//!
//! The policy is a plain state machine over [`Instant`]s, shared by every
//! watcher; the watcher task sleeps for the returned delay before it polls
//! its stream again (the stream makes no request while not polled).

use std::time::Duration;

use tokio::time::Instant;

/// The first delay.
pub const BASE: Duration = Duration::from_secs(1);
/// The longest delay.
pub const CAP: Duration = Duration::from_secs(30);
/// Without an error for this long, the next error starts from [`BASE`]
/// again (client-go's reflector: 2 minutes).
pub const HEALTHY_RESET: Duration = Duration::from_secs(120);
/// How long 403s are taken for a server that is still starting.
pub const FORBIDDEN_GRACE: Duration = Duration::from_secs(30);
/// A second 410 within this time is paced like other errors.
pub const RELIST_GUARD: Duration = Duration::from_secs(10);
/// The delay is the nominal one times a factor drawn from this range.
const JITTER: std::ops::RangeInclusive<f64> = 0.75..=1.0;

/// What went wrong, as far as pacing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server is unreachable or failing (connection refused, timeouts,
    /// 5xx, 429, anything not below).
    Unavailable,
    /// HTTP 403.
    Forbidden,
    /// HTTP 410: the watch's resourceVersion is too old; list again.
    Gone,
}

/// What to do about one error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Wait this long before the next request.
    pub delay: Duration,
    /// An expected, transient condition: log at debug level, not as a
    /// warning.
    pub quiet: bool,
}

/// One watcher's pacing state.
pub struct WatchBackoff {
    /// Errors paced so far since the last reset (the exponent).
    attempt: u32,
    last_error: Option<Instant>,
    /// Start of the current run of 403s, ended by a success.
    forbidden_since: Option<Instant>,
    last_gone: Option<Instant>,
    jitter: Box<dyn FnMut() -> f64 + Send>,
}

impl std::fmt::Debug for WatchBackoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchBackoff")
            .field("attempt", &self.attempt)
            .field("last_error", &self.last_error)
            .field("forbidden_since", &self.forbidden_since)
            .finish_non_exhaustive()
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff::with_jitter(|| {
            use rand::RngExt as _;
            rand::rng().random_range(JITTER)
        })
    }
}

impl WatchBackoff {
    /// A policy drawing its jitter factor from `jitter` (tests pin it).
    pub fn with_jitter(jitter: impl FnMut() -> f64 + Send + 'static) -> Self {
        WatchBackoff {
            attempt: 0,
            last_error: None,
            forbidden_since: None,
            last_gone: None,
            jitter: Box::new(jitter),
        }
    }

    /// The server answered a request of this watcher successfully: a run
    /// of 403s is over. The delay itself is not reset (see
    /// [`HEALTHY_RESET`]): a server that answers once and fails again is
    /// still struggling.
    pub fn on_success(&mut self) {
        self.forbidden_since = None;
    }

    /// The delay before the next request after `failure` at `now`.
    pub fn on_error(&mut self, failure: Failure, now: Instant) -> Retry {
        if self
            .last_error
            .is_some_and(|t| now.saturating_duration_since(t) >= HEALTHY_RESET)
        {
            self.attempt = 0;
        }
        match failure {
            Failure::Gone
                if self
                    .last_gone
                    .is_none_or(|t| now.saturating_duration_since(t) >= RELIST_GUARD) =>
            {
                self.last_gone = Some(now);
                return Retry {
                    delay: Duration::ZERO,
                    quiet: true,
                };
            }
            Failure::Forbidden => {
                let since = *self.forbidden_since.get_or_insert(now);
                if now.saturating_duration_since(since) < FORBIDDEN_GRACE {
                    self.last_error = Some(now);
                    return Retry {
                        delay: self.jittered(BASE),
                        quiet: true,
                    };
                }
            }
            Failure::Gone | Failure::Unavailable => {}
        }
        self.last_error = Some(now);
        let nominal = BASE
            .checked_mul(1u32 << self.attempt.min(16))
            .map_or(CAP, |d| d.min(CAP));
        self.attempt = self.attempt.saturating_add(1).min(16);
        Retry {
            delay: self.jittered(nominal),
            quiet: false,
        }
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        let f = (self.jitter)();
        d.mul_f64(if JITTER.contains(&f) {
            f
        } else {
            *JITTER.end()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    fn fixed() -> WatchBackoff {
        WatchBackoff::with_jitter(|| 1.0)
    }

    /// A policy whose delay an outage (six errors) grew to the cap, and
    /// the time after them.
    fn after_an_outage() -> (WatchBackoff, Instant) {
        let mut b = fixed();
        let mut now = Instant::now();
        for _ in 0..6 {
            now += b.on_error(Failure::Unavailable, now).delay;
        }
        (b, now)
    }

    #[test]
    fn grows_exponentially_to_the_cap_and_stays_there() {
        let mut b = fixed();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..9 {
            let r = b.on_error(Failure::Unavailable, now);
            assert!(!r.quiet);
            delays.push(secs(r.delay));
            now += r.delay;
        }
        assert_eq!(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]);
    }

    #[test]
    fn jitter_only_shortens_within_a_quarter() {
        let mut b = WatchBackoff::default();
        let mut now = Instant::now();
        for i in 0..200 {
            let r = b.on_error(Failure::Unavailable, now);
            let nominal = BASE.saturating_mul(1 << i.min(5)).min(CAP);
            assert!(
                r.delay <= nominal && r.delay >= nominal.mul_f64(0.75),
                "{i}: {:?} for {nominal:?}",
                r.delay
            );
            now += r.delay;
        }
    }

    #[test]
    fn resets_only_after_two_minutes_without_errors() {
        let (mut b, mut now) = after_an_outage();
        // Successes (events, answered requests) do not reset the delay.
        b.on_success();
        now += Duration::from_secs(60);
        assert_eq!(secs(b.on_error(Failure::Unavailable, now).delay), 30.0);
        now += HEALTHY_RESET;
        assert_eq!(secs(b.on_error(Failure::Unavailable, now).delay), 1.0);
    }

    #[test]
    fn a_410_relists_at_once_but_not_in_a_loop() {
        let (mut b, mut now) = after_an_outage();
        // The 410 after an outage: list again now, whatever was built up.
        let r = b.on_error(Failure::Gone, now);
        assert_eq!(r.delay, Duration::ZERO);
        assert!(r.quiet);
        // Another 410 right after the relist is paced.
        now += Duration::from_secs(1);
        let r = b.on_error(Failure::Gone, now);
        assert_eq!(secs(r.delay), 30.0);
        now += RELIST_GUARD;
        assert_eq!(b.on_error(Failure::Gone, now).delay, Duration::ZERO);
    }

    #[test]
    fn a_transient_403_is_quiet_and_does_not_escalate() {
        // An outage built the delay up to the cap...
        let (mut b, mut now) = after_an_outage();
        // ...then the restarted server answers 403 for a few seconds.
        for _ in 0..10 {
            let r = b.on_error(Failure::Forbidden, now);
            assert_eq!(r.delay, BASE);
            assert!(r.quiet);
            now += r.delay;
        }
        // A 403 that lasts past the grace period is a real denial: paced
        // from where the delay was, and loud.
        now += FORBIDDEN_GRACE;
        let r = b.on_error(Failure::Forbidden, now);
        assert!(!r.quiet);
        assert_eq!(secs(r.delay), 30.0);
        // A success ends the run of 403s: the next one is quiet again.
        b.on_success();
        let r = b.on_error(Failure::Forbidden, now + Duration::from_secs(1));
        assert!(r.quiet);
        assert_eq!(r.delay, BASE);
    }

    #[test]
    fn lists_in_a_window_are_bounded() {
        // The bound the emulator test asserts: with the shortest jitter,
        // at most 6 requests fit in 30 s from the first error.
        let mut b = WatchBackoff::with_jitter(|| 0.75);
        let mut now = Duration::ZERO;
        let start = Instant::now();
        let mut requests = 1;
        loop {
            now += b.on_error(Failure::Unavailable, start + now).delay;
            if now > Duration::from_secs(30) {
                break;
            }
            requests += 1;
        }
        assert_eq!(requests, 6);
    }
}
