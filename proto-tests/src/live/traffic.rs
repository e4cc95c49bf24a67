//! Traffic while an event runs: client loops that open new connections
//! and hold long-lived ones, counting what fails and when.

use super::*;

#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) attempted: u64,
    pub(super) failed: u64,
    pub(super) slow: u64,
    pub(super) held: u64,
    pub(super) exchanges: u64,
    pub(super) broken: u64,
    pub(super) failures: Vec<String>,
}

/// Client loops running in their namespaces until [`Traffic::finish`] (or
/// their own time and count limits).
pub(super) struct Traffic {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) phase: Arc<Mutex<String>>,
    pub(super) tally: Arc<Mutex<Tally>>,
    pub(super) threads: Vec<JoinHandle<()>>,
}

/// Join network namespace `ns` (this thread only).
pub(super) fn enter_ns(ns: &str) -> Result<(), String> {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {path}: {e}"))
}

/// `Ok(endpoint)` when an expected endpoint answered; else what happened.
pub(super) fn answered_by(a: &Attempt, eps: &BTreeSet<IpAddr>) -> Result<SocketAddr, String> {
    match a {
        Attempt::Answer { reached, .. }
            if eps.contains(&reached.ip()) && reached.port() == TARGET_PORT =>
        {
            Ok(*reached)
        }
        Attempt::Answer { label, reached, .. } => Err(format!(
            "answered by {label} at {reached}, which is no endpoint of this Service"
        )),
        other => Err(crate::runner::summarize(std::slice::from_ref(other))),
    }
}

impl Traffic {
    pub(super) fn start(flows: &Flows, phase: &str) -> Traffic {
        let t = Traffic {
            stop: Arc::new(AtomicBool::new(false)),
            phase: Arc::new(Mutex::new(phase.to_string())),
            tally: Arc::new(Mutex::new(Tally::default())),
            threads: Vec::new(),
        };
        let start = Instant::now();
        let mut threads = Vec::new();
        for f in &flows.new {
            let (f, stop, phase, tally) =
                (f.clone(), t.stop.clone(), t.phase.clone(), t.tally.clone());
            threads.push(std::thread::spawn(move || {
                new_loop(&f, start, &stop, &phase, &tally);
            }));
        }
        for f in &flows.held {
            let (f, stop, phase, tally) =
                (f.clone(), t.stop.clone(), t.phase.clone(), t.tally.clone());
            threads.push(std::thread::spawn(move || {
                held_loop(&f, start, &stop, &phase, &tally);
            }));
        }
        Traffic { threads, ..t }
    }

    pub(super) fn phase(&self, p: &str) {
        if let Ok(mut g) = self.phase.lock() {
            *g = p.to_string();
        }
    }

    pub(super) fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.tally)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .unwrap_or_default()
    }
}

pub(super) fn phase_now(phase: &Mutex<String>) -> String {
    phase.lock().map(|p| p.clone()).unwrap_or_default()
}

/// `during "A"`, or `during "A" .. "B"` when the phase changed meanwhile.
pub(super) fn during(from: &str, to: &str) -> String {
    if from == to {
        format!("during \"{from}\"")
    } else {
        format!("during \"{from}\" .. \"{to}\"")
    }
}

pub(super) fn record(tally: &Mutex<Tally>, f: impl FnOnce(&mut Tally)) {
    if let Ok(mut t) = tally.lock() {
        f(&mut t);
    }
}

pub(super) fn new_loop(
    f: &Flow,
    start: Instant,
    stop: &AtomicBool,
    phase: &Mutex<String>,
    tally: &Mutex<Tally>,
) {
    if let Err(e) = enter_ns(&f.ns) {
        record(tally, |t| {
            t.attempted += 1;
            t.failed += 1;
            t.failures.push(format!("new {}: {e}", f.name));
        });
        return;
    }
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) && n < LOOP_COUNT_LIMIT && start.elapsed() < LOOP_TIME_LIMIT
    {
        let p0 = phase_now(phase);
        let t0 = Instant::now();
        let a = wire::probe(&f.to, Some(f.bind), 0, ATTEMPT_TIMEOUT);
        let took = t0.elapsed();
        let verdict = answered_by(&a, &f.endpoints);
        let p1 = phase_now(phase);
        record(tally, |t| {
            t.attempted += 1;
            if took >= Duration::from_secs(1) {
                t.slow += 1;
            }
            if let Err(w) = verdict {
                t.failed += 1;
                t.failures.push(format!(
                    "+{:.3}s {}: new connection {} failed after {} ms: {w}",
                    t0.duration_since(start).as_secs_f64(),
                    during(&p0, &p1),
                    f.name,
                    took.as_millis()
                ));
            }
        });
        n += 1;
        std::thread::sleep(NEW_EVERY);
    }
}

pub(super) fn held_loop(
    f: &Flow,
    start: Instant,
    stop: &AtomicBool,
    phase: &Mutex<String>,
    tally: &Mutex<Tally>,
) {
    let kind = if f.to.proto == Proto::Udp {
        "long-lived UDP flow"
    } else {
        "long-lived TCP connection"
    };
    if let Err(e) = enter_ns(&f.ns) {
        record(tally, |t| {
            t.attempted += 1;
            t.failed += 1;
            t.failures.push(format!("{kind} {}: {e}", f.name));
        });
        return;
    }
    let p0 = phase_now(phase);
    let t0 = Instant::now();
    let opened = Held::open(&f.to, Some(f.bind), ATTEMPT_TIMEOUT)
        .map_err(|a| crate::runner::summarize(&[a]))
        .and_then(|h| answered_by(&h.first, &f.endpoints).map(|ep| (h, ep)));
    let (mut h, first) = match opened {
        Ok(x) => x,
        Err(w) => {
            let p1 = phase_now(phase);
            record(tally, |t| {
                t.attempted += 1;
                t.failed += 1;
                t.failures.push(format!(
                    "+{:.3}s {}: {kind} {} could not be opened: {w}",
                    t0.duration_since(start).as_secs_f64(),
                    during(&p0, &p1),
                    f.name
                ));
            });
            return;
        }
    };
    record(tally, |t| {
        t.attempted += 1;
        t.held += 1;
    });
    let mut exchanges = 0u64;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < LOOP_TIME_LIMIT {
        std::thread::sleep(PING_EVERY);
        let p0 = phase_now(phase);
        let t0 = Instant::now();
        let a = h.ping();
        let verdict = match answered_by(&a, &f.endpoints) {
            Ok(ep) if ep == first => Ok(()),
            Ok(ep) => Err(format!("answered by {ep}, but it was {first}")),
            Err(w) => Err(w),
        };
        match verdict {
            Ok(()) => {
                exchanges += 1;
                record(tally, |t| t.exchanges += 1);
            }
            Err(w) => {
                let p1 = phase_now(phase);
                record(tally, |t| {
                    t.broken += 1;
                    t.failures.push(format!(
                        "+{:.3}s {}: {kind} {} (endpoint {first}) broke after {exchanges} exchanges: {w}",
                        t0.duration_since(start).as_secs_f64(),
                        during(&p0, &p1),
                        f.name
                    ));
                });
                return;
            }
        }
    }
}
