//! Kernel tests: every command runs inside a network namespace created
//! here (`kproxy_testkit::NetNs`, prefix `ipt`); the root namespace's
//! rules are never touched. These need root and the iptables tools; they
//! fail (never skip) without them.

use std::collections::BTreeSet;

use kproxy_graph::{
    ApplyError, Backend, ChangeSet, IpFamily, Objects, ProxyMode, Render, ServiceGraph,
};
use kproxy_iptables::{
    FamilyRuleset, Flavour, GenOptions, IptablesBackend, Runner, TableName, detect_flavour_with,
    generate, parse_save_lenient, render_restore, xtables_runner,
};
use kproxy_iptables::{IptablesTransport, plan_partial};
use kproxy_testkit::{NetNs, fixture_config, fixture_path, fixtures, load_fixture};

const FLAVOURS: [Flavour; 2] = [Flavour::Legacy, Flavour::Nft];

/// Run an iptables command in `ns` the way the backend does (its own
/// xtables lock file), panicking on failure.
fn run(ns: &NetNs, argv: &[&str]) {
    xtables_runner(&Runner::in_netns(ns.name()))
        .run(argv[0], &argv[1..], None)
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
}

fn transport(flavour: Flavour, ns: &NetNs) -> IptablesTransport {
    IptablesTransport {
        flavour,
        runner: Runner::in_netns(ns.name()),
    }
}

/// Compare what the kernel holds with `fr`: the same user chains with the
/// same rules (compared canonically, since iptables-save reorders
/// options), and kproxy's jumps in the built-in chains in the order
/// kube-proxy's prepends leave them.
fn assert_kernel_matches(t: &IptablesTransport, fr: &FamilyRuleset, what: &str) {
    let text = t.save(fr.family).expect("save");
    let saved = parse_save_lenient(&text).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
    for table in &fr.tables {
        // KUBE-FIREWALL is shared with kubelet and survives cleanup: an
        // earlier ruleset may have left it.
        let ignore = |c: &str| c == "KUBE-FIREWALL" && table.chain(c).is_none();
        let st = saved
            .table(table.name)
            .unwrap_or_else(|| panic!("{what}: no {} table in\n{text}", table.name));
        let kernel_chains: BTreeSet<&str> = st
            .chains
            .iter()
            .filter(|c| !table.name.is_builtin(&c.name) && c.name.starts_with("KUBE-"))
            .filter(|c| !ignore(&c.name))
            .map(|c| c.name.as_str())
            .collect();
        let ir_chains: BTreeSet<&str> = table.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(kernel_chains, ir_chains, "{what}: {} chains", table.name);
        for c in &table.chains {
            let kc = st.chain(&c.name).expect("chain");
            let got: Vec<_> = kc
                .rules
                .iter()
                .map(|r| {
                    r.rule
                        .as_ref()
                        .unwrap_or_else(|| panic!("{what}: unparsed {}", r.raw))
                        .canonical()
                })
                .collect();
            let want: Vec<_> = c.rules.iter().map(|r| r.canonical()).collect();
            assert_eq!(got, want, "{what}: {} {}", table.name, c.name);
        }
        for builtin in table.name.builtin_chains() {
            let mut want: Vec<_> = table
                .builtin_rules
                .iter()
                .filter(|b| b.chain == *builtin)
                .map(|b| b.rule.canonical())
                .collect();
            // Jumps already present (KUBE-FIREWALL survives cleanup, as
            // kubelet shares it) are not re-inserted, so compare as sets;
            // a duplicate would still show.
            want.sort();
            let got: Vec<_> = st
                .chain(builtin)
                .map(|c| {
                    c.rules
                        .iter()
                        .filter_map(|r| r.rule.as_ref())
                        .filter(|r| {
                            r.jump_target()
                                .is_some_and(|t| t.starts_with("KUBE-") && !ignore(t))
                        })
                        .map(|r| r.canonical())
                        .collect()
                })
                .unwrap_or_default();
            let mut got = got;
            got.sort();
            assert_eq!(got, want, "{what}: {} {builtin}", table.name);
        }
    }
}

#[test]
fn every_golden_output_passes_restore_test() {
    let ns = NetNs::new("ipt");
    for flavour in FLAVOURS {
        let t = transport(flavour, &ns);
        for name in fixtures() {
            let g = load_fixture(&name, ProxyMode::Iptables);
            for fr in generate(&g, &GenOptions::default()).families {
                t.test_restore(fr.family, &fr.render_full())
                    .unwrap_or_else(|e| panic!("{name} {} {flavour:?}: {e}", fr.family));
            }
        }
    }
    // A broken input is refused: the check can fail.
    let t = transport(Flavour::Legacy, &ns);
    let err = t
        .test_restore(IpFamily::V4, "*nat\n-A NO-SUCH-CHAIN -j ACCEPT\nCOMMIT\n")
        .expect_err("must be refused");
    assert!(matches!(err, ApplyError::Rejected { .. }), "{err}");
}

#[test]
fn apply_read_back_and_round_trip_every_fixture_both_flavours() {
    for flavour in FLAVOURS {
        let ns = NetNs::new("ipt");
        let t = transport(flavour, &ns);
        // A foreign rule and chain that kproxy must leave alone.
        run(
            &ns,
            &[&t.flavour.iptables_binary(IpFamily::V4), "-N", "FOREIGN"],
        );
        run(
            &ns,
            &[
                &t.flavour.iptables_binary(IpFamily::V4),
                "-A",
                "INPUT",
                "-s",
                "1.2.3.4",
                "-j",
                "FOREIGN",
            ],
        );
        for name in fixtures() {
            let g = load_fixture(&name, ProxyMode::Iptables);
            let mut be = IptablesBackend::in_netns(flavour, ns.name());
            let stats = be
                .sync(&g, None)
                .unwrap_or_else(|e| panic!("{name} {flavour:?}: {e}"));
            assert!(stats.full);
            let rs = generate(&g, &GenOptions::default());
            for fr in &rs.families {
                assert_kernel_matches(&t, fr, &format!("{name} {flavour:?} {}", fr.family));
            }
            assert!(be.check().expect("check"), "{name}: canary present");
            // A second full sync over the same state is idempotent (no
            // duplicated jumps).
            let again = be.sync(&g, None).expect("resync");
            assert!(again.full);
            assert_eq!(again.rules_written, 0, "{name}: nothing to rewrite");
            for fr in &rs.families {
                assert_kernel_matches(&t, fr, &format!("{name} {flavour:?} resync"));
            }
            be.cleanup()
                .unwrap_or_else(|e| panic!("{name} cleanup: {e:?}"));
            for f in IpFamily::ALL {
                let after = t.save(f).expect("save");
                for line in after
                    .lines()
                    .filter(|l| l.starts_with(':') || l.starts_with('-'))
                {
                    let kube = line.contains("KUBE-") && !line.contains("KUBE-FIREWALL");
                    assert!(!kube, "{name} {flavour:?} {f}: left after cleanup: {line}");
                }
                if f == IpFamily::V4 {
                    assert!(after.contains(":FOREIGN"), "foreign chain kept");
                    assert!(
                        after.contains("-A INPUT -s 1.2.3.4/32 -j FOREIGN"),
                        "{after}"
                    );
                }
            }
        }
    }
}

fn graph_from(texts: &[&str]) -> ServiceGraph {
    let mut objs = Objects::default();
    for (i, t) in texts.iter().enumerate() {
        objs.add_yaml(&format!("doc{i}"), t).expect("yaml");
    }
    ServiceGraph::build(&objs, &fixture_config("seed", ProxyMode::Iptables))
}

fn extra_service(name: &str, ip: &str, eps: &[&str]) -> String {
    let mut s = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: web}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 8080, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-x, namespace: web, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{port: 8080, protocol: TCP}}]\nendpoints:\n"
    );
    for e in eps {
        s.push_str(&format!(
            "- {{addresses: [{e}], conditions: {{ready: true}}}}\n"
        ));
    }
    s
}

/// Sync `g` (partially when `prev` is given, with the change set from it)
/// and check that the kernel and the backend's IR equal a fresh
/// generation of `g`: partial syncs reuse the previous IR's unchanged
/// chains, and the result must still be exactly a fresh generation.
fn sync_matches_fresh(
    be: &mut IptablesBackend,
    t: &IptablesTransport,
    what: &str,
    g: &ServiceGraph,
    prev: Option<&ServiceGraph>,
) -> (kproxy_graph::SyncStats, kproxy_iptables::Ruleset) {
    let flavour = t.flavour;
    let changes = prev.map(|p| ChangeSet::between(p, g));
    let stats = be
        .sync(g, changes.as_ref())
        .unwrap_or_else(|e| panic!("{flavour:?} {what}: {e}"));
    let rs = generate(g, &GenOptions::default());
    for fr in &rs.families {
        assert_kernel_matches(t, fr, &format!("{flavour:?} after {what}"));
    }
    assert!(
        be.last_ruleset() == Some(&rs),
        "{flavour:?} {what}: IR differs from a fresh one"
    );
    (stats, rs)
}

#[test]
fn partial_syncs_match_a_fresh_full_render() {
    let seed = std::fs::read_to_string(fixture_path("seed")).expect("seed");
    let steps: Vec<(&str, ServiceGraph)> = vec![
        ("start", graph_from(&[&seed])),
        (
            "add api",
            graph_from(&[
                &seed,
                &extra_service("api", "10.96.0.10", &["10.244.1.7", "10.244.2.8"]),
            ]),
        ),
        (
            "change api endpoints",
            graph_from(&[&seed, &extra_service("api", "10.96.0.10", &["10.244.1.9"])]),
        ),
        ("remove api", graph_from(&[&seed])),
    ];
    for flavour in FLAVOURS {
        let ns = NetNs::new("ipt");
        let t = transport(flavour, &ns);
        let mut be = IptablesBackend::in_netns(flavour, ns.name());
        let mut prev: Option<&ServiceGraph> = None;
        for (what, g) in &steps {
            let (stats, rs) = sync_matches_fresh(&mut be, &t, what, g, prev);
            assert_eq!(stats.full, prev.is_none(), "{what}: full only at start");
            if prev.is_some() {
                assert!(
                    stats.rules_written < rs.families.iter().map(|f| f.rule_count()).sum(),
                    "{what}: partial sync wrote {} rules",
                    stats.rules_written
                );
            }
            prev = Some(g);
        }
    }
}

#[test]
fn partial_restore_writes_only_changed_service_chains() {
    let seed = std::fs::read_to_string(fixture_path("seed")).expect("seed");
    let a = graph_from(&[&seed, &extra_service("api", "10.96.0.10", &["10.244.1.7"])]);
    let b = graph_from(&[&seed, &extra_service("api", "10.96.0.10", &["10.244.1.9"])]);
    let ra = generate(&a, &GenOptions::default());
    let rb = generate(&b, &GenOptions::default());
    let changes = ChangeSet::between(&a, &b);
    let (pa, pb) = (
        ra.family(IpFamily::V4).expect("v4"),
        rb.family(IpFamily::V4).expect("v4"),
    );
    let plan = plan_partial(pa, pb, &changes.family(IpFamily::V4));
    let (text, _) = render_restore(pb, &plan);
    // The unchanged seed service's chains are not in the input ...
    assert!(!text.contains(":KUBE-SVC-6NP7QLHXVWVVFBVL"), "{text}");
    assert!(!text.contains("-A KUBE-SEP-GPPLZ26R2KHJ2RMU"), "{text}");
    // ... nor are the top-level chains, which did not change (kube-proxy
    // rewrites them every time) ...
    assert!(!text.contains("KUBE-SERVICES"), "{text}");
    assert!(!text.contains("KUBE-NODEPORTS"), "{text}");
    // ... the changed service's chains are, and its old endpoint chain is
    // flushed and deleted in the same transaction.
    assert!(text.contains("--to-destination 10.244.1.9:8080"), "{text}");
    let old = pa
        .table(TableName::Nat)
        .and_then(|t| {
            t.chains.iter().find(|c| {
                c.name.starts_with("KUBE-SEP-") && format!("{c:?}").contains("10.244.1.7")
            })
        })
        .map(|c| c.name.clone())
        .expect("old SEP");
    assert!(
        text.contains(&format!(":{old} - [0:0]")) && text.contains(&format!("-X {old}")),
        "{text}"
    );
    assert!(!text.contains("-I "), "jumps only on full syncs");
}

#[test]
fn failed_restore_keeps_previous_rules_and_forces_full_sync() {
    let seed = std::fs::read_to_string(fixture_path("seed")).expect("seed");
    let with_api = graph_from(&[&seed, &extra_service("api", "10.96.0.10", &["10.244.1.7"])]);
    let without = graph_from(&[&seed]);
    for flavour in FLAVOURS {
        let ns = NetNs::new("ipt");
        let t = transport(flavour, &ns);
        let ipt = flavour.iptables_binary(IpFamily::V4);
        let mut be = IptablesBackend::in_netns(flavour, ns.name());
        be.sync(&with_api, None).expect("first sync");
        // Someone else references api's endpoint chain, so deleting it
        // fails and the whole restore is refused.
        let rs = generate(&with_api, &GenOptions::default());
        let sep = rs
            .family(IpFamily::V4)
            .and_then(|f| f.table(TableName::Nat))
            .and_then(|t| {
                t.chains.iter().find(|c| {
                    c.name.starts_with("KUBE-SEP-") && format!("{c:?}").contains("10.244.1.7")
                })
            })
            .map(|c| c.name.clone())
            .expect("api SEP");
        run(&ns, &[&ipt, "-t", "nat", "-N", "FOREIGN"]);
        run(&ns, &[&ipt, "-t", "nat", "-A", "FOREIGN", "-j", &sep]);
        let changes = ChangeSet::between(&with_api, &without);
        let err = be
            .sync(&without, Some(&changes))
            .expect_err("restore must fail");
        match &err {
            ApplyError::Rejected { stderr, .. } => assert!(!stderr.is_empty(), "{err}"),
            other => panic!("expected Rejected, got {other}"),
        }
        assert!(be.needs_full_sync(), "a failure forces a full sync");
        // The previous rules are all still there.
        for fr in &rs.families {
            assert_kernel_matches(&t, fr, &format!("{flavour:?} after failed restore"));
        }
        // Once the obstacle is gone, the retry (full) succeeds.
        run(&ns, &[&ipt, "-t", "nat", "-F", "FOREIGN"]);
        let stats = be.sync(&without, Some(&changes)).expect("retry");
        assert!(stats.full);
        for fr in &generate(&without, &GenOptions::default()).families {
            assert_kernel_matches(&t, fr, &format!("{flavour:?} after retry"));
        }
        let after = t.save(IpFamily::V4).expect("save");
        assert!(
            !after.contains(&format!(":{sep}")),
            "stale chain removed by the full sync"
        );
    }
}

#[test]
fn lost_canary_is_detected() {
    let g = load_fixture("seed", ProxyMode::Iptables);
    for flavour in FLAVOURS {
        let ns = NetNs::new("ipt");
        let mut be = IptablesBackend::in_netns(flavour, ns.name());
        assert!(!be.check().expect("check"), "nothing applied yet");
        be.sync(&g, None).expect("sync");
        assert!(be.check().expect("check"));
        run(
            &ns,
            &[
                &flavour.iptables_binary(IpFamily::V4),
                "-t",
                "mangle",
                "-X",
                "KUBE-PROXY-CANARY",
            ],
        );
        assert!(!be.check().expect("check"), "{flavour:?}: canary loss seen");
        assert!(be.needs_full_sync());
        let changes = ChangeSet::between(&g, &g);
        let stats = be.sync(&g, Some(&changes)).expect("resync");
        assert!(stats.full);
        assert!(be.check().expect("check"));
        // No clock of its own: with a change set the sync is partial, and
        // the periodic full resync is the caller's (no change set).
        assert!(!be.sync(&g, Some(&changes)).expect("partial").full);
        assert!(be.sync(&g, None).expect("periodic").full);
    }
}

/// Like kube-proxy, MASQUERADE carries `--random-fully` only when the
/// node's iptables (`iptables --version`) is 1.6.2 or newer.
#[test]
fn random_fully_follows_the_iptables_version() {
    let g = load_fixture("seed", ProxyMode::Iptables);
    let bin = kproxy_testkit::TempDir::new("oldipt");
    for flavour in FLAVOURS {
        // An iptables that says it is 1.6.1, in front of the real tools.
        let tool = flavour.iptables_binary(IpFamily::V4);
        bin.write_program(
            &tool,
            &format!(
                "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'iptables v1.6.1'; exit 0; }}\nexec /usr/sbin/{tool} \"$@\"\n"
            ),
        );
        let old_path = bin.path_first();
        for (path, random_fully) in [(None, true), (Some(&old_path), false)] {
            let ns = NetNs::new("ipt");
            let mut runner = Runner::in_netns(ns.name());
            if let Some(p) = path {
                runner = runner.with_env("PATH", p);
            }
            let mut be = IptablesBackend::with_runner(flavour, runner);
            be.sync(&g, None).expect("sync");
            let saved = transport(flavour, &ns).save(IpFamily::V4).expect("save");
            let masq: Vec<&str> = saved
                .lines()
                .filter(|l| l.contains("-j MASQUERADE"))
                .collect();
            assert!(!masq.is_empty(), "{flavour:?}: no MASQUERADE:\n{saved}");
            for l in masq {
                assert_eq!(
                    l.contains("--random-fully"),
                    random_fully,
                    "{flavour:?} with PATH {path:?}: {l}"
                );
            }
        }
    }
}

#[test]
fn flavour_detection_follows_iptables_wrappers() {
    let ns = NetNs::new("ipt");
    let r = Runner::in_netns(ns.name());
    assert_eq!(detect_flavour_with(&r), Flavour::Nft, "default is nft");
    run(
        &ns,
        &[
            "iptables-legacy",
            "-t",
            "mangle",
            "-N",
            "KUBE-IPTABLES-HINT",
        ],
    );
    assert_eq!(detect_flavour_with(&r), Flavour::Legacy, "legacy hint");
    run(
        &ns,
        &["iptables-nft", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"],
    );
    assert_eq!(detect_flavour_with(&r), Flavour::Nft, "nft hint wins");

    let ns = NetNs::new("ipt");
    let r = Runner::in_netns(ns.name());
    run(
        &ns,
        &[
            "iptables-legacy",
            "-A",
            "INPUT",
            "-s",
            "1.2.3.4",
            "-j",
            "ACCEPT",
        ],
    );
    assert_eq!(
        detect_flavour_with(&r),
        Flavour::Legacy,
        "more legacy rules"
    );
}

#[test]
fn render_full_is_the_golden_text() {
    let g = load_fixture("seed", ProxyMode::Iptables);
    let be = IptablesBackend::new(Flavour::Nft);
    assert_eq!(
        be.render_full(&g).expect("render"),
        generate(&g, &GenOptions::default()).render()
    );
}

#[test]
fn takeover_removes_leftovers_of_another_run() {
    // A node another proxy (kube-proxy, an older kproxy) programmed for a
    // different cluster state, plus a pre-1.24 KUBE-XLB chain: the first
    // (full) sync of a new backend leaves exactly the new ruleset, with
    // no duplicated jumps.
    let old = load_fixture("cluster-ip-general", ProxyMode::Iptables);
    let new = load_fixture("seed", ProxyMode::Iptables);
    for flavour in FLAVOURS {
        let ns = NetNs::new("ipt");
        let t = transport(flavour, &ns);
        IptablesBackend::in_netns(flavour, ns.name())
            .sync(&old, None)
            .expect("old state");
        let ipt = flavour.iptables_binary(IpFamily::V4);
        run(&ns, &[&ipt, "-t", "nat", "-N", "KUBE-XLB-OLDOLDOLDOLDOLDO"]);
        let mut be = IptablesBackend::in_netns(flavour, ns.name());
        let stats = be.sync(&new, None).expect("takeover");
        assert!(stats.full);
        for fr in &generate(&new, &GenOptions::default()).families {
            assert_kernel_matches(&t, fr, &format!("{flavour:?} takeover"));
        }
    }
}

/// `n` extra ClusterIP services (`svc00`, `svc01`, ...) with two
/// endpoints each, plus `extra` on top.
fn many(seed: &str, n: usize, skip: &[usize], extra: &[String]) -> ServiceGraph {
    let mut docs: Vec<String> = (0..n)
        .filter(|i| !skip.contains(i))
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            extra_service(
                &format!("svc{i:02}"),
                &format!("10.96.{}.{lo}", 1 + 3 * hi),
                &[
                    &format!("10.244.{}.{lo}", 3 + 2 * hi),
                    &format!("10.244.{}.{lo}", 4 + 2 * hi),
                ],
            )
        })
        .collect();
    docs.extend(extra.iter().cloned());
    let mut all: Vec<&str> = vec![seed];
    all.extend(docs.iter().map(String::as_str));
    graph_from(&all)
}

#[test]
fn top_level_chains_are_edited_in_place_and_nft_loads_in_batches() {
    // 40 services: KUBE-SERVICES is long enough to be edited with -D/-I
    // rather than rewritten. Tiny batch limits make the nft flavour's full
    // syncs split into many restores, including a fresh KUBE-SERVICES
    // filled over several. After every step the kernel must hold exactly
    // a fresh full render.
    let seed = std::fs::read_to_string(fixture_path("seed")).expect("seed");
    let add = |name: &str, ip: &str| extra_service(name, ip, &["10.244.5.1", "10.244.5.2"]);
    let steps: Vec<(&str, ServiceGraph)> = vec![
        ("start", many(&seed, 40, &[], &[])),
        (
            "add three",
            many(
                &seed,
                40,
                &[],
                &[
                    add("svc05b", "10.96.2.1"),
                    add("svc20b", "10.96.2.2"),
                    add("svc39b", "10.96.2.3"),
                ],
            ),
        ),
        (
            "remove two, change one",
            many(
                &seed,
                40,
                &[7, 30],
                &[
                    add("svc05b", "10.96.2.1"),
                    add("svc20b", "10.96.2.2"),
                    extra_service("svc39b", "10.96.2.3", &["10.244.5.9"]),
                ],
            ),
        ),
        ("back", many(&seed, 40, &[], &[])),
    ];
    let limits = kproxy_iptables::BatchLimits {
        names: 8,
        rules: 20,
    };
    for flavour in FLAVOURS {
        let ns = NetNs::named(&format!("kpi-edit-{}-{flavour:?}", std::process::id()));
        let t = transport(flavour, &ns);
        let mut be = IptablesBackend::in_netns(flavour, ns.name());
        be.set_batch_limits(limits);
        let mut prev: Option<&ServiceGraph> = None;
        for (what, g) in &steps {
            let (stats, _) = sync_matches_fresh(&mut be, &t, what, g, prev);
            if prev.is_some() {
                assert!(
                    stats.rules_written < 60,
                    "{flavour:?} {what}: wrote {} rules",
                    stats.rules_written
                );
            }
            prev = Some(g);
        }
        // A new backend (full sync) over a kernel that differs from the
        // wanted state by a few services: the top-level chains are edited
        // against what iptables-save shows.
        let mut fresh = IptablesBackend::in_netns(flavour, ns.name());
        fresh.set_batch_limits(limits);
        let target = &steps[2].1;
        let stats = fresh.sync(target, None).expect("full sync");
        assert!(stats.full);
        assert!(
            stats.rules_written < 60,
            "{flavour:?}: full sync wrote {}",
            stats.rules_written
        );
        for fr in &generate(target, &GenOptions::default()).families {
            assert_kernel_matches(&t, fr, &format!("{flavour:?} full sync over a near state"));
        }
    }
}

#[test]
fn partial_restore_inserts_and_deletes_top_level_rules_by_number() {
    let seed = std::fs::read_to_string(fixture_path("seed")).expect("seed");
    let a = many(&seed, 40, &[], &[]);
    let b = many(
        &seed,
        40,
        &[12],
        &[extra_service("svc20b", "10.96.2.2", &["10.244.5.1"])],
    );
    let (ra, rb) = (
        generate(&a, &GenOptions::default()),
        generate(&b, &GenOptions::default()),
    );
    let (pa, pb) = (
        ra.family(IpFamily::V4).expect("v4"),
        rb.family(IpFamily::V4).expect("v4"),
    );
    let plan = plan_partial(pa, pb, &ChangeSet::between(&a, &b).family(IpFamily::V4));
    let (text, written) = render_restore(pb, &plan);
    assert!(!text.contains(":KUBE-SERVICES"), "not rewritten:\n{text}");
    let nat = pb.table(TableName::Nat).expect("nat");
    let services = nat.chain("KUBE-SERVICES").expect("KUBE-SERVICES");
    let at = services
        .rules
        .iter()
        .position(|r| format!("{r:?}").contains("svc20b"))
        .expect("svc20b rule")
        + 1;
    assert!(text.contains(&format!("-I KUBE-SERVICES {at} ")), "{text}");
    assert!(text.contains("-D KUBE-SERVICES "), "{text}");
    assert!(written < 20, "{written} rules\n{text}");
}

#[test]
fn batches_are_bottom_up_and_not_in_name_order() {
    // Every chain is created before a rule jumps to it, the jumps from
    // built-in chains come last, and chains are not created in name
    // order (iptables-nft-save's quicksort crashed on sorted chains).
    let seed = std::fs::read_to_string(fixture_path("seed")).expect("seed");
    let rs = generate(&many(&seed, 40, &[], &[]), &GenOptions::default());
    let fr = rs.family(IpFamily::V4).expect("v4");
    let limits = kproxy_iptables::BatchLimits {
        names: 8,
        rules: 20,
    };
    let batches =
        kproxy_iptables::render_batches(fr, &kproxy_iptables::RestorePlan::full(), limits);
    assert!(batches.len() > 5, "{} batches", batches.len());
    let mut created: BTreeSet<String> = BTreeSet::new();
    let mut seps = Vec::new();
    for (i, (text, _)) in batches.iter().enumerate() {
        let last = i + 1 == batches.len();
        for line in text.lines() {
            if let Some(c) = line.strip_prefix(':') {
                let name = c.split(' ').next().expect("name").to_string();
                if name.starts_with("KUBE-SEP-") {
                    seps.push(name.clone());
                }
                created.insert(name);
            } else if line.starts_with("-I ") {
                assert!(
                    last,
                    "jump from a built-in chain before the last restore: {line}"
                );
            }
            if let Some(j) = line.split(" -j ").nth(1) {
                let target = j.split(' ').next().expect("target");
                if target.starts_with("KUBE-") {
                    assert!(
                        created.contains(target),
                        "batch {i}: {line} before {target} exists"
                    );
                }
            }
        }
    }
    let mut sorted = seps.clone();
    sorted.sort();
    assert_ne!(seps, sorted, "SEP chains created in ascending order");
    sorted.reverse();
    assert_ne!(seps, sorted, "SEP chains created in descending order");
}

#[test]
fn generate_reusing_equals_a_fresh_generation() {
    // No kernel involved: the IR a partial sync builds from the previous
    // one equals a fresh generation, across additions, removals, endpoint
    // changes and a flip into large-cluster mode (> 1000 endpoints).
    let seed = std::fs::read_to_string(fixture_path("seed")).expect("seed");
    let opts = GenOptions::default();
    let cases: Vec<(&str, ServiceGraph, ServiceGraph)> = vec![
        (
            "add, remove, change",
            many(&seed, 40, &[3], &[]),
            many(
                &seed,
                40,
                &[5, 9],
                &[extra_service("svc03", "10.96.1.4", &["10.244.9.9"])],
            ),
        ),
        (
            "into large-cluster mode",
            many(&seed, 495, &[], &[]),
            many(&seed, 510, &[], &[]),
        ),
    ];
    let large = |g: &ServiceGraph| generate(g, &opts).families[0].large_cluster;
    assert!(
        !large(&cases[1].1) && large(&cases[1].2),
        "the second case must flip"
    );
    for (what, a, b) in cases {
        let mut prev = generate(&a, &opts);
        let changes = ChangeSet::between(&a, &b);
        let reused = kproxy_iptables::generate_reusing(&b, &opts, &mut prev, &changes);
        assert!(
            reused == generate(&b, &opts),
            "{what}: differs from a fresh generation"
        );
    }
}

#[test]
fn nft_cleanup_in_small_batches_removes_everything_of_ours() {
    // Cleanup of a big node is split for iptables-nft: jumps first, then
    // chains referrers-first; with two chains per restore every ordering
    // mistake makes a restore fail (a chain still referenced).
    let seed = std::fs::read_to_string(fixture_path("seed")).expect("seed");
    let g = many(&seed, 40, &[], &[]);
    let ns = NetNs::named(&format!("kpi-clean-{}", std::process::id()));
    let t = transport(Flavour::Nft, &ns);
    IptablesBackend::in_netns(Flavour::Nft, ns.name())
        .sync(&g, None)
        .expect("sync");
    run(&ns, &["iptables-nft", "-t", "nat", "-N", "FOREIGN"]);
    run(
        &ns,
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-A",
            "FOREIGN",
            "-j",
            "KUBE-SERVICES",
        ],
    );
    let saved = parse_save_lenient(&t.save(IpFamily::V4).expect("save")).expect("parse");
    let batches = IptablesTransport::cleanup_batches(&saved, 2);
    assert!(batches.len() > 20, "{} batches", batches.len());
    for (i, text) in batches.iter().enumerate() {
        t.apply_text(IpFamily::V4, text)
            .unwrap_or_else(|e| panic!("batch {i}: {e}\n{text}"));
    }
    let after = t.save(IpFamily::V4).expect("save");
    assert!(
        !after.contains(":KUBE-SVC-") && !after.contains(":KUBE-SERVICES"),
        "{after}"
    );
    assert!(!after.contains("-j KUBE-SERVICES"), "{after}");
    assert!(after.contains(":FOREIGN"), "foreign chain kept: {after}");
}

/// Partial damage is drift, for both flavours: each case is seen by
/// `check` (base-chain jumps and top-level rule counts) and the next sync
/// (full) restores every rule.
#[test]
fn partial_damage_is_detected_and_repaired() {
    let g = load_fixture("seed", ProxyMode::Iptables);
    let rs = generate(&g, &GenOptions::default());
    for flavour in FLAVOURS {
        let ns = NetNs::new("iptdrift");
        let t = transport(flavour, &ns);
        let ipt = flavour.iptables_binary(IpFamily::V4);
        let ip6t = flavour.iptables_binary(IpFamily::V6);
        let mut be = IptablesBackend::in_netns(flavour, ns.name());
        be.sync(&g, None).expect("sync");
        let portals = "kubernetes service portals";
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("iptables -t nat -F", vec![&ipt, "-t", "nat", "-F"]),
            (
                "the PREROUTING jump deleted",
                vec![
                    &ipt,
                    "-t",
                    "nat",
                    "-D",
                    "PREROUTING",
                    "-m",
                    "comment",
                    "--comment",
                    portals,
                    "-j",
                    "KUBE-SERVICES",
                ],
            ),
            (
                "KUBE-SERVICES flushed",
                vec![&ipt, "-t", "nat", "-F", "KUBE-SERVICES"],
            ),
            (
                "the IPv6 FORWARD jump to KUBE-FORWARD deleted",
                vec![
                    &ip6t,
                    "-t",
                    "filter",
                    "-D",
                    "FORWARD",
                    "-m",
                    "comment",
                    "--comment",
                    "kubernetes forwarding rules",
                    "-j",
                    "KUBE-FORWARD",
                ],
            ),
            (
                "a rule added to KUBE-NODEPORTS",
                vec![&ipt, "-t", "nat", "-A", "KUBE-NODEPORTS", "-j", "RETURN"],
            ),
            (
                "the canary deleted",
                vec![&ipt, "-t", "mangle", "-X", "KUBE-PROXY-CANARY"],
            ),
        ];
        let mut missed = Vec::new();
        for (what, argv) in &cases {
            assert!(
                be.check().expect("check"),
                "{flavour:?} {what}: in sync before"
            );
            run(&ns, argv);
            if be.check().expect("check") {
                missed.push(*what);
            }
            let changes = ChangeSet::between(&g, &g);
            let stats = be.sync(&g, Some(&changes)).expect("repair");
            assert!(stats.full, "{flavour:?} {what}: the repair is a full sync");
            assert!(
                be.check().expect("check"),
                "{flavour:?} {what}: in sync after"
            );
            for fr in &rs.families {
                assert_kernel_matches(&t, fr, &format!("{flavour:?} {what}: repaired"));
            }
        }
        assert!(missed.is_empty(), "{flavour:?}: drift not seen: {missed:?}");
        // Rules of others in the same base chains are not drift.
        run(
            &ns,
            &[
                &ipt,
                "-t",
                "nat",
                "-I",
                "PREROUTING",
                "-s",
                "10.9.9.9",
                "-j",
                "RETURN",
            ],
        );
        run(
            &ns,
            &[&ipt, "-t", "filter", "-A", "FORWARD", "-j", "ACCEPT"],
        );
        assert!(be.check().expect("check"), "{flavour:?}: foreign rules");
    }
}

/// Each flavour end to end: a full sync, the rules in that flavour's
/// tables, a clean drift check, a partial sync, the applied text equal to
/// the render, and cleanup.
#[test]
fn seed_syncs_checks_and_cleans_up_through_each_flavour() {
    for flavour in FLAVOURS {
        let ns = NetNs::new("ipt");
        let g = load_fixture("seed", ProxyMode::Iptables);
        let mut be = IptablesBackend::in_netns(flavour, ns.name());
        assert_eq!(be.kind(), flavour.kind());
        let stats = be.sync(&g, None).expect("sync");
        assert!(stats.full && stats.rules_written > 0);
        let save = flavour.save_binary(IpFamily::V4);
        let saved = ns.exec(&[save.as_str(), "-t", "nat"]);
        assert!(
            saved.contains("-A KUBE-NODEPORTS -p tcp -m comment --comment \"web/web-service\" -m tcp --dport 30007 -j KUBE-EXT-6NP7QLHXVWVVFBVL"),
            "{flavour:?}: {saved}"
        );
        assert!(be.check().expect("check"));
        let stats = be
            .sync(&g, Some(&ChangeSet::between(&g, &g)))
            .expect("partial");
        assert!(!stats.full);
        assert_eq!(be.last_applied(), Some(be.render_full(&g).expect("render")));
        be.cleanup().expect("cleanup");
        let saved = ns.exec(&[save.as_str(), "-t", "nat"]);
        assert!(!saved.contains("KUBE-"), "{flavour:?}: {saved}");
    }
}
