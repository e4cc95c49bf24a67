//! The events: restarts, a backend switch, a takeover from kube-proxy
//! and back, a control with no proxy, and an API server outage.

use super::*;

/// SIGKILL and restart, `cfg.restarts` times.
pub(super) fn restarts(ctx: &Ctx<'_>, b: BackendName) -> EventReport {
    let n = ctx.cfg.restarts;
    let mut rep = EventReport {
        event: format!("{n} x SIGKILL and restart"),
        backend: b.to_string(),
        ..EventReport::default()
    };
    let Some(mut daemon) = fresh_daemon(ctx, b, &mut rep) else {
        return rep;
    };
    let mut last_log = String::new();
    with_traffic(ctx, &mut rep, "running", |t, _| {
        sleep_ms(600);
        for i in 1..=n {
            t.phase(&format!("SIGKILLed {i}/{n}, no daemon"));
            daemon.kill();
            sleep_ms(300);
            t.phase(&format!("restart {i}/{n}, before its first sync"));
            last_log = daemon.tail();
            daemon = ctx.start_daemon(b, &Source::File)?;
            t.phase(&format!("running after restart {i}/{n}"));
            sleep_ms(500);
        }
        Ok(())
    });
    rep.daemon_log = Some(format!(
        "{last_log}\n--- the last daemon:\n{}",
        daemon.tail()
    ));
    terminate(&mut daemon);
    rep
}

/// iptables-legacy → iptables-nft → nftables → iptables-legacy (the
/// selected backends, in that order).
pub(super) fn switch(ctx: &Ctx<'_>) -> EventReport {
    let order = [
        BackendName::IptablesLegacy,
        BackendName::IptablesNft,
        BackendName::Nftables,
    ];
    let mut seq: Vec<BackendName> = order
        .into_iter()
        .filter(|b| ctx.cfg.backends.contains(b))
        .collect();
    let mut rep = EventReport {
        event: "backend switches".into(),
        ..EventReport::default()
    };
    if seq.len() < 2 {
        rep.backend = seq.iter().map(|b| b.as_str()).collect::<Vec<_>>().join(",");
        rep.not_run = Some("a backend switch needs at least two backends (PROTO_BACKENDS)".into());
        return rep;
    }
    seq.push(seq[0]);
    rep.backend = seq
        .iter()
        .map(|b| b.as_str())
        .collect::<Vec<_>>()
        .join(" -> ");
    let Some(mut daemon) = fresh_daemon(ctx, seq[0], &mut rep) else {
        return rep;
    };
    with_traffic(ctx, &mut rep, &format!("{} running", seq[0]), |t, rep| {
        sleep_ms(600);
        for w in seq.windows(2) {
            let (from, to) = (w[0], w[1]);
            t.phase(&format!("{from} stopped (SIGTERM), its rules stay"));
            terminate(&mut daemon);
            sleep_ms(300);
            t.phase(&format!("{to} starting over {from}'s rules"));
            daemon = ctx.start_daemon(to, &Source::File)?;
            t.phase(&format!("{to} running"));
            let gone = ctx.wait_until(Duration::from_secs(10), || !ctx.has_rules(from));
            check(
                rep,
                format!("{from}'s rules removed after {to}'s first sync"),
                gone.is_some(),
                || "still there 10 s after the sync".into(),
            );
            sleep_ms(500);
        }
        Ok(())
    });
    rep.daemon_log = Some(daemon.tail());
    terminate(&mut daemon);
    rep
}

/// kube-proxy's rules → kproxy `k` takes over → hands back.
pub(super) fn takeover(ctx: &Ctx<'_>, k: BackendName) -> EventReport {
    // kube-proxy in iptables mode on the same flavour as an iptables
    // backend (kproxy adopts its chains), and on iptables-nft before
    // nftables (kproxy removes them).
    let flavour = if k == BackendName::IptablesLegacy {
        BackendName::IptablesLegacy
    } else {
        BackendName::IptablesNft
    };
    let mut rep = EventReport {
        event: format!("kube-proxy ({flavour}) taken over and handed back"),
        backend: k.to_string(),
        ..EventReport::default()
    };
    let setup = ctx
        .clean()
        .and_then(|()| ctx.load_kube_proxy_rules(flavour));
    if let Err(e) = setup {
        rep.error = Some(e);
        return rep;
    }
    check(
        &mut rep,
        format!("kube-proxy's {flavour} rules loaded"),
        ctx.has_rules(flavour),
        || "no KUBE-SERVICES chain".into(),
    );
    let mut log = String::new();
    with_traffic(
        ctx,
        &mut rep,
        "kube-proxy's rules, no proxy running",
        |t, rep| {
            sleep_ms(800);
            t.phase(&format!("kproxy {k} starting over kube-proxy's rules"));
            let mut daemon = ctx.start_daemon(k, &Source::File)?;
            t.phase(&format!("kproxy {k} running"));
            if k != flavour {
                let gone = ctx.wait_until(Duration::from_secs(10), || !ctx.has_rules(flavour));
                check(
                    rep,
                    format!("kube-proxy's {flavour} rules removed after kproxy's first sync"),
                    gone.is_some(),
                    || "still there 10 s after the sync".into(),
                );
            }
            check(
                rep,
                format!("kproxy's {k} rules in place"),
                ctx.has_rules(k),
                || "missing".into(),
            );
            sleep_ms(600);
            t.phase(&format!("kproxy {k} stopped (SIGTERM), its rules stay"));
            terminate(&mut daemon);
            log = daemon.tail();
            sleep_ms(300);
            t.phase("kube-proxy's rules loaded again");
            ctx.load_kube_proxy_rules(flavour)?;
            sleep_ms(500);
            t.phase("after `kproxy cleanup --backend nftables`");
            ctx.kproxy(&["cleanup", "--backend", "nftables"])?;
            check(
                rep,
                "kproxy's nftables tables removed, kube-proxy's rules in place",
                !ctx.has_rules(BackendName::Nftables) && ctx.has_rules(flavour),
                || {
                    format!(
                        "table ip kproxy present: {}, kube-proxy's {flavour} rules present: {}",
                        ctx.has_rules(BackendName::Nftables),
                        ctx.has_rules(flavour)
                    )
                },
            );
            sleep_ms(600);
            Ok(())
        },
    );
    rep.daemon_log = Some(log);
    rep
}

/// Rules and conntrack flushed with no daemon for 1.5 s: connections must
/// fail, long-lived ones must break.
pub(super) fn control(ctx: &Ctx<'_>, b: BackendName) -> EventReport {
    let mut rep = EventReport {
        event: "control: rules and conntrack flushed, no daemon for 1.5 s".into(),
        backend: b.to_string(),
        expect_failures: true,
        ..EventReport::default()
    };
    let Some(mut daemon) = fresh_daemon(ctx, b, &mut rep) else {
        return rep;
    };
    with_traffic(ctx, &mut rep, "running", |t, _| {
        sleep_ms(600);
        t.phase("rules and conntrack flushed, no daemon");
        daemon.kill();
        ctx.clean()?;
        ctx.topo
            .node
            .exec(&["conntrack", "-F"])
            .map_err(|e| e.to_string())?;
        sleep_ms(1500);
        t.phase("restarted");
        daemon = ctx.start_daemon(b, &Source::File)?;
        sleep_ms(600);
        Ok(())
    });
    rep.daemon_log = Some(daemon.tail());
    terminate(&mut daemon);
    rep
}

/// A binder for the emulator: its socket is made inside namespace `ns`.
pub(super) fn bind_in(
    ns: &str,
) -> impl Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync + 'static {
    let ns = ns.to_string();
    move |addr| {
        let ns = ns.clone();
        std::thread::spawn(move || {
            enter_ns(&ns).map_err(std::io::Error::other)?;
            kproxy_apiserver_emulator::reusable_listener(addr)
        })
        .join()
        .map_err(|_| std::io::Error::other("bind thread panicked"))?
    }
}

/// Mark the last check (the catch-up) with [`CATCH_UP_KNOWN_FAILURE`].
pub(super) fn mark_known(rep: &mut EventReport) {
    if let Some(c) = rep.checks.last_mut() {
        c.known_failure = CATCH_UP_KNOWN_FAILURE.map(String::from);
    }
}

/// The API server away for `cfg.outage` while objects change.
pub(super) fn outage(ctx: &Ctx<'_>, b: BackendName) -> EventReport {
    let mut rep = EventReport {
        event: format!("API server away for {} s", ctx.cfg.outage.as_secs()),
        backend: b.to_string(),
        ..EventReport::default()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            rep.error = Some(format!("tokio runtime: {e}"));
            return rep;
        }
    };
    let kubeconfig = ctx.topo.dir.join("kubeconfig");
    let started = ctx.clean().and_then(|()| {
        let (emu, _) = rt
            .block_on(kproxy_apiserver_emulator::Emulator::start_with(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                bind_in(ctx.topo.node.name()),
            ))
            .map_err(|e| format!("API server emulator: {e}"))?;
        emu.write_kubeconfig(&kubeconfig)
            .map_err(|e| e.to_string())?;
        for o in objects_before() {
            emu.apply(&o).map_err(|e| e.to_string())?;
        }
        let d = ctx.start_daemon(b, &Source::Kube(&kubeconfig))?;
        Ok((emu, d))
    });
    let (mut emu, mut daemon) = match started {
        Ok(x) => x,
        Err(e) => {
            rep.error = Some(e);
            return rep;
        }
    };
    let lock = ctx.topo.xtables_lock();
    let rules = || {
        crate::differential::dump_ruleset(&ctx.topo.node, b, &lock)
            .unwrap_or_else(|e| format!("(cannot dump the ruleset: {e})"))
    };
    let sync_period = ctx.cfg.sync_period;
    let outage_len = ctx.cfg.outage;
    with_traffic(ctx, &mut rep, "API server up", |t, rep| {
        sleep_ms(1000);
        t.phase("API server away");
        let gone_at = Instant::now();
        rt.block_on(emu.stop());
        sleep_ms(2000);
        for o in outage_changes() {
            emu.apply(&o).map_err(|e| e.to_string())?;
        }
        let left = outage_len.saturating_sub(gone_at.elapsed());
        std::thread::sleep(left.saturating_sub(Duration::from_secs(1)));
        let during = rules();
        check(
            rep,
            "the rules stay as they were while the API server is away",
            during.contains(&API_GONE.to_string()) && !has_outage_changes(&during),
            || format!("the kernel holds:\n{during}"),
        );
        std::thread::sleep(outage_len.saturating_sub(gone_at.elapsed()));
        t.phase("API server back, catching up");
        let syncs_before = daemon.syncs();
        rt.block_on(emu.restart())
            .map_err(|e| format!("emulator restart: {e}"))?;
        let back = Instant::now();
        let limit = sync_period * 4 + Duration::from_secs(30);
        let caught = ctx.wait_until(limit, || has_outage_changes(&rules()));
        match caught {
            Some(_) => {
                let took = back.elapsed();
                rep.catch_up = Some(took);
                rep.catch_up_syncs = Some(daemon.syncs().saturating_sub(syncs_before));
                check(
                    rep,
                    format!(
                        "every change made during the outage in the kernel within the watch backoff cap ({} s) and one sync ({} s) of the server's return",
                        WATCH_BACKOFF_CAP.as_secs(),
                        ONE_SYNC.as_secs()
                    ),
                    took <= WATCH_BACKOFF_CAP + ONE_SYNC,
                    || format!("it took {:.1} s", took.as_secs_f64()),
                );
            }
            None => check(
                rep,
                "every change made during the outage reaches the kernel",
                false,
                || {
                    format!(
                        "not within {} s; the kernel holds:\n{}",
                        limit.as_secs(),
                        rules()
                    )
                },
            ),
        }
        // The mark covers the one-sync-period target only: changes that
        // never arrive fail the event.
        if caught.is_some() {
            mark_known(rep);
        }
        t.phase("API server back, caught up");
        sleep_ms(1000);
        Ok(())
    });
    // After the catch-up: the new Service answers, the removed endpoint
    // no longer gets new connections.
    if rep.catch_up.is_some() {
        let pod = ctx.topo.pods[1].1.name().to_string();
        let after = Flows {
            new: vec![
                Flow {
                    name: format!("pod {CLIENT_POD} -> new ClusterIP {FRESH_VIP}:80/tcp"),
                    ns: pod.clone(),
                    bind: IpAddr::V4(CLIENT_POD),
                    to: target(FRESH_VIP, 80, Proto::Tcp),
                    endpoints: [IpAddr::V4(FRESH_EP)].into(),
                },
                Flow {
                    name: format!(
                        "pod {CLIENT_POD} -> ClusterIP {API_VIP}:80/tcp (endpoint {API_GONE} removed)"
                    ),
                    ns: pod,
                    bind: IpAddr::V4(CLIENT_POD),
                    to: target(API_VIP, 80, Proto::Tcp),
                    endpoints: [IpAddr::V4(API_A), IpAddr::V4(API_NEW)].into(),
                },
            ],
            held: Vec::new(),
        };
        let traffic = Traffic::start(&after, "after the catch-up: changed Services");
        sleep_ms(1000);
        let tally = traffic.finish();
        check(
            &mut rep,
            format!(
                "after the catch-up, {} new connections to the new Service and to the changed one reach only their current endpoints",
                tally.attempted
            ),
            tally.failed == 0 && tally.attempted > 0,
            || {
                tally
                    .failures
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
    }
    rep.daemon_log = Some(daemon.tail());
    terminate(&mut daemon);
    rt.block_on(emu.stop());
    rep
}

/// A clean node and a daemon on the file source; `None`, with the reason
/// in `rep`, when either fails.
fn fresh_daemon(ctx: &Ctx<'_>, b: BackendName, rep: &mut EventReport) -> Option<Daemon> {
    match ctx
        .clean()
        .and_then(|()| ctx.start_daemon(b, &Source::File))
    {
        Ok(d) => Some(d),
        Err(e) => {
            rep.error = Some(e);
            None
        }
    }
}
