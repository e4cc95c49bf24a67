//! Running one probe: connections from a client namespace, with the
//! tracer's prediction for the same packet alongside.

use super::*;

/// The default number of connections of a probe.
pub fn default_count(e: &Expect, sticky: bool) -> u32 {
    match e {
        Expect::Endpoints(ep) if sticky => 10.max(ep.endpoints.len() as u32 * 5),
        // With n endpoints picked at random, 10n+10 connections miss one of
        // them with probability n*(1-1/n)^(10n+10): 2e-6 for n=2, 2e-5 for n=3.
        Expect::Endpoints(ep) if ep.endpoints.len() > 1 => 10 * ep.endpoints.len() as u32 + 10,
        // One endpoint expected: 16 connections let a second, unexpected
        // endpoint show itself (missed with probability 2^-16 at 50%).
        Expect::Endpoints(_) => 16,
        Expect::Simple(SimpleExpect::Drop) => 1,
        Expect::Http(_) => 2,
        Expect::Simple(_) => 2,
    }
}

/// What the tracer check works from at one step: `None` = no check
/// (mutated expectations: every probe fails anyway), `Some(Err)` = the
/// ruleset could not be dumped (every probe of the step fails).
pub(super) fn step_rules(
    topo: &Topology,
    backend: BackendName,
    cfg: &RunConfig,
) -> Option<Result<StepRules, String>> {
    if cfg.mutate {
        return None;
    }
    let dumped =
        differential::dump_ruleset(&topo.node, backend, &topo.xtables_lock()).and_then(|text| {
            Ok(StepRules {
                backend: differential::backend_kind(backend),
                text,
                node_ips: differential::node_addresses(&topo.node)?,
            })
        });
    Some(dumped)
}

/// Why a probe's tracer check is partial or exempt, if it is.
pub(super) fn tracer_depth(p: &Probe, expect: &Expect) -> Result<Depth, String> {
    if matches!(expect, Expect::Http(_)) {
        return Err(
            "exempt: HTTP health-check probe (the daemon's health server answers, not a rule)"
                .into(),
        );
    }
    if p.sticky || p.source_port.is_some() {
        return Ok(Depth::SubsetOnly);
    }
    Ok(Depth::Full)
}

/// The tracer's source address for a probe: the address the attempts
/// were made from (the kernel's choice for `node`), else for `node` the
/// loopback address towards loopback and otherwise the node's first
/// address of the family.
pub(super) fn tracer_source(
    src: &Source,
    to: &Target,
    attempts: &[Attempt],
    rules: &StepRules,
) -> Option<IpAddr> {
    match src {
        Source::NodeAddr(ip) | Source::Pod(ip) | Source::External(ip) => Some(*ip),
        Source::Node => attempts
            .iter()
            .find_map(|a| match a {
                Attempt::Answer { local: Some(l), .. } => Some(l.ip()),
                _ => None,
            })
            .or_else(|| to.addr.ip().is_loopback().then(|| to.addr.ip()))
            .or_else(|| {
                rules.node_ips.iter().copied().find(|ip| {
                    ip.is_ipv4() == to.addr.is_ipv4() && !ip.is_loopback() && !is_link_local(ip)
                })
            }),
    }
}

pub(super) fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

pub(super) fn run_probe(
    topo: &Topology,
    step: usize,
    p: &Probe,
    backend: BackendName,
    cfg: &RunConfig,
    scenario_known: bool,
    rules: Option<&Result<StepRules, String>>,
) -> Option<ProbeReport> {
    if let Some(bs) = &p.backends
        && !bs.iter().any(|k| backend.matches_key(k))
    {
        return None;
    }
    let mode = match cfg.applier {
        Applier::Kproxy { .. } => "run",
        Applier::Daemon { .. } => "daemon",
        Applier::Render { .. } => "render",
        Applier::Nft { .. } => "nft",
    };
    if let Some(ms) = &p.modes
        && !ms.iter().any(|m| m == mode)
    {
        return None;
    }
    let expect = p.expect.get(backend)?.clone();
    let mut rep = ProbeReport {
        step,
        probe: format!(
            "{} -> {}{}",
            p.from,
            p.to,
            if p.sticky { " (sticky)" } else { "" }
        ),
        expect: describe(&expect),
        observed: String::new(),
        tracer: None,
        verdict: Verdict::Pass,
    };
    if !p.note.is_empty() {
        rep.probe = format!("{} [{}]", rep.probe, p.note);
    }
    let (Ok(src), Ok(to)) = (Source::parse(&p.from), p.to.parse::<Target>()) else {
        rep.verdict = Verdict::Fail("unparsable probe (checked at load time)".into());
        return Some(rep);
    };
    if to.proto == Proto::Sctp && !cfg.sctp {
        rep.verdict = Verdict::NotRun("this kernel has no SCTP".into());
        rep.observed = "-".into();
        return Some(rep);
    }
    let count = p.count.unwrap_or_else(|| default_count(&expect, p.sticky));
    let known = p
        .known_failure
        .as_ref()
        .and_then(|k| k.get(backend))
        .cloned();
    let expect = if cfg.mutate {
        if known.is_some() || scenario_known {
            return None;
        }
        let m = mutate(&expect);
        rep.expect = format!("{} (mutated from {})", describe(&m), rep.expect);
        m
    } else {
        expect
    };
    let attempts = match topo.source(&src) {
        Ok((ns, bind)) => probe_in(
            ns,
            &cfg.proto_bin,
            &ProbeArgs {
                to,
                bind,
                port: p.source_port.unwrap_or(0),
                http: matches!(expect, Expect::Http(_)),
                count,
                timeout: cfg.timeout,
            },
        ),
        Err(e) => Err(e),
    };
    // The tracer check: what the rules the kernel holds predict must be
    // what the kernel did. A disagreement is never a known failure: it is
    // a tracer bug (or a kernel behaviour the tracer does not model), not
    // the kproxy bug a known_failure mark is about.
    let mut disagreement = None;
    if let (Some(rules), Ok(a)) = (rules, &attempts) {
        let checked = match (rules, tracer_depth(p, &expect)) {
            (_, Err(exempt)) => Ok(exempt),
            (Err(e), _) => Err(format!("cannot dump the node's ruleset: {e}")),
            (Ok(r), Ok(depth)) => match tracer_source(&src, &to, a, r) {
                None => Err(format!("no source address for {} in the node", p.from)),
                Some(from) => differential::check(r, from, to.addr, to.proto, a, depth).map(
                    |pred| match depth {
                        Depth::Full => format!("{pred} (agrees)"),
                        Depth::SubsetOnly => format!(
                            "{pred} (agrees; every answer predicted, not every prediction required: {})",
                            if p.sticky {
                                "session affinity keeps one endpoint, the tracer sees them all"
                            } else {
                                "one source port, one conntrack flow"
                            }
                        ),
                    },
                ),
            },
        };
        match checked {
            Ok(line) => rep.tracer = Some(line),
            Err(mut e) => {
                if p.source_port.is_some() {
                    // The tracer models a new connection; this probe reuses
                    // one conntrack flow across steps.
                    e.push_str(
                        " (a fixed source port reuses one conntrack flow: a stale flow the rules no longer create shows here)",
                    );
                }
                rep.tracer = Some(format!("DISAGREES: {e}"));
                disagreement = Some(e);
            }
        }
    }
    let result = attempts.and_then(|a| {
        rep.observed = summarize(&a);
        judge(&expect, p.sticky, &a)
    });
    let known = p
        .known_failure
        .as_ref()
        .and_then(|k| k.get(backend))
        .cloned();
    if let Some(d) = disagreement {
        rep.verdict = Verdict::Fail(match result {
            Ok(()) => format!("the tracer and the kernel disagree: {d}"),
            Err(w) => format!("{w}; and the tracer and the kernel disagree: {d}"),
        });
        return Some(rep);
    }
    rep.verdict = match (result, known) {
        (Ok(()), None) => Verdict::Pass,
        (Ok(()), Some(r)) => Verdict::UnexpectedPass(r),
        (Err(w), Some(r)) => Verdict::KnownFailure(r, w),
        (Err(w), None) if scenario_known => {
            Verdict::KnownFailure("scenario known failure".into(), w)
        }
        (Err(w), None) => Verdict::Fail(w),
    };
    Some(rep)
}

/// The `kproxy-proto probe` arguments.
pub(super) struct ProbeArgs {
    to: Target,
    bind: Option<IpAddr>,
    port: u16,
    http: bool,
    count: u32,
    timeout: Duration,
}

pub(super) fn probe_in(
    ns: &crate::topo::Ns,
    proto_bin: &Path,
    a: &ProbeArgs,
) -> Result<Vec<Attempt>, String> {
    let ProbeArgs {
        to,
        bind,
        port,
        http,
        count,
        timeout,
    } = a;
    let mut c = ns.command(proto_bin);
    c.args([
        "probe",
        "--to",
        &to.to_string(),
        "--count",
        &count.to_string(),
        "--timeout-ms",
        &timeout.as_millis().to_string(),
        "--port",
        &port.to_string(),
    ]);
    if let Some(b) = bind {
        c.args(["--bind", &b.to_string()]);
    }
    if *http {
        c.arg("--http");
    }
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running the probe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "probe failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Attempt>(l).map_err(|e| format!("probe output {l:?}: {e}")))
        .collect()
}
