//! The incremental builder against the full build: random sequences of
//! upserts, deletes, node and configuration changes, seeded with the
//! fixtures' objects; after every step the incremental graph must equal
//! `ServiceGraph::build` on the same objects, and its change set must
//! equal `ChangeSet::between` the two full builds. proptest drives the
//! sequences (`kproxy_testkit::draws`) and shrinks a failing one.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kproxy_testkit::{Draw, TestRng, check_property, draws, seeded};

use super::*;
use crate::config::ProxyMode;
use crate::intake::{SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL};

/// The objects the builder was given, by identity: the truth the full
/// build is run on.
#[derive(Default, Clone)]
struct Truth {
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
    nodes: BTreeMap<String, Node>,
    service_cidrs: BTreeMap<String, ServiceCIDR>,
}

impl Truth {
    fn objects(&self) -> Objects {
        Objects {
            services: self.services.values().cloned().collect(),
            endpoint_slices: self.slices.values().cloned().collect(),
            nodes: self.nodes.values().cloned().collect(),
            service_cidrs: self.service_cidrs.values().cloned().collect(),
        }
    }

    // Each object goes to both sides: here, the truth the full build
    // sees, and `inc`, as a watch event.

    fn upsert_service(&mut self, inc: &mut IncrementalGraph, s: Service) {
        self.services.insert(key(&s.metadata), s.clone());
        inc.upsert_service(Arc::new(s));
    }

    fn upsert_slice(&mut self, inc: &mut IncrementalGraph, s: EndpointSlice) {
        self.slices.insert(key(&s.metadata), s.clone());
        inc.upsert_slice(Arc::new(s));
    }

    fn upsert_node(&mut self, inc: &mut IncrementalGraph, n: Node) {
        let name = n.metadata.name.clone().unwrap_or_default();
        self.nodes.insert(name, n.clone());
        inc.upsert_node(Arc::new(n));
    }

    fn upsert_service_cidr(&mut self, inc: &mut IncrementalGraph, c: ServiceCIDR) {
        let name = c.metadata.name.clone().unwrap_or_default();
        self.service_cidrs.insert(name, c.clone());
        inc.upsert_service_cidr(Arc::new(c));
    }
}

/// A ServiceCIDR named `name` with a random choice of ranges, some of
/// them overlapping, not truncated or not CIDRs at all.
fn random_service_cidr(rng: &mut TestRng, name: &str) -> ServiceCIDR {
    let mut cidrs = Vec::new();
    for _ in 0..rng.below(3) {
        cidrs.push(
            rng.pick(&[
                "10.96.0.0/16",
                "10.100.0.0/16",
                "10.96.0.0/12",
                "10.96.0.1/16",
                "fd00:96::/112",
                "fd00:100::/64",
                "not-a-cidr",
            ])
            .to_string(),
        );
    }
    ServiceCIDR {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::networking::v1::ServiceCIDRSpec { cidrs: Some(cidrs) }),
        status: None,
    }
}

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// A fixture's configuration, as `kproxy_testkit::fixture_config` reads
/// it (that one returns the test kit's own copy of this crate's types).
fn fixture_config(name: &str, mode: ProxyMode) -> ProxyConfig {
    let dir = kproxy_testkit::testdata().join("configs");
    let own = dir.join(format!("{name}.yaml"));
    let path = if own.exists() {
        own
    } else {
        dir.join("default.yaml")
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let mut pc = ProxyConfig::default();
    crate::config::KubeProxyConfiguration::from_yaml(&text)
        .and_then(|c| c.apply_to(&mut pc))
        .unwrap();
    pc.mode = mode;
    pc
}

/// Every fixture's objects (named ones), as the pool mutations draw from.
fn pool() -> Vec<(String, Objects)> {
    kproxy_testkit::fixtures()
        .into_iter()
        .map(|name| {
            let path = kproxy_testkit::fixture_path(&name);
            let text = std::fs::read_to_string(&path).unwrap();
            let (mut o, _) = Objects::from_yaml(&name, &text).unwrap();
            // Identities must be unique (the API server's guarantee).
            o.services.retain(|s| s.metadata.name.is_some());
            o.endpoint_slices.retain(|s| s.metadata.name.is_some());
            o.nodes.retain(|n| n.metadata.name.is_some());
            o.service_cidrs.retain(|c| c.metadata.name.is_some());
            (name, o)
        })
        .collect()
}

fn pick_ip(rng: &mut TestRng) -> String {
    rng.pick(&[
        "10.0.0.10",
        "10.0.0.11",
        "10.96.0.99",
        "fd00::10",
        "not-an-ip",
        "10.244.1.5",
        "10.244.2.7",
        "None",
    ])
    .to_string()
}

fn mutate_service(rng: &mut TestRng, mut s: Service, names: &[(String, String)]) -> Service {
    let spec = s.spec.get_or_insert_with(Default::default);
    match rng.below(9) {
        0 => {
            let ip = pick_ip(rng);
            spec.cluster_ip = Some(ip.clone());
            spec.cluster_ips = Some(vec![ip]);
        }
        1 => {
            spec.type_ = Some(
                rng.pick(&["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"])
                    .to_string(),
            )
        }
        2 => {
            if let Some(p) = spec.ports.as_mut().and_then(|p| p.first_mut()) {
                p.port = *rng.pick(&[80, 443, 0, 70000, 53]);
                p.protocol = Some(rng.pick(&["TCP", "UDP", "SCTP", "ICMP"]).to_string());
                p.node_port = Some(*rng.pick(&[30080, 0, 31000]));
            }
        }
        3 => {
            spec.internal_traffic_policy = Some(rng.pick(&["Local", "Cluster"]).to_string());
            spec.external_traffic_policy = Some(rng.pick(&["Local", "Cluster"]).to_string());
        }
        4 => {
            let labels = s.metadata.labels.get_or_insert_with(Default::default);
            if labels.remove(SERVICE_PROXY_NAME_LABEL).is_none() {
                labels.insert(
                    SERVICE_PROXY_NAME_LABEL.into(),
                    rng.pick(&["kproxy", "other"]).to_string(),
                );
            }
        }
        5 => {
            // Take another Service's identity (or a new one).
            let (ns, name) = if names.is_empty() || rng.chance(30) {
                ("default".to_string(), format!("new-{}", rng.below(5)))
            } else {
                rng.pick(names).clone()
            };
            s.metadata.namespace = Some(ns);
            s.metadata.name = Some(name);
        }
        6 => {
            spec.session_affinity = Some("ClientIP".into());
        }
        7 => {
            spec.external_ips = Some(vec![pick_ip(rng)]);
        }
        _ => {
            if let Some(ports) = spec.ports.as_mut() {
                let p = ports[0].clone();
                ports.push(p); // a duplicate port
            }
        }
    }
    s
}

fn mutate_slice(
    rng: &mut TestRng,
    mut s: EndpointSlice,
    services: &[(String, String)],
    node: &str,
) -> EndpointSlice {
    match rng.below(8) {
        0 => {
            if let Some(e) = s.endpoints.first_mut() {
                let c = e.conditions.get_or_insert_with(Default::default);
                c.ready = Some(!c.ready.unwrap_or(true));
                c.terminating = Some(rng.chance(50));
                c.serving = Some(rng.chance(50));
            }
        }
        1 => {
            if let Some(e) = s.endpoints.first_mut() {
                e.addresses = vec![pick_ip(rng)];
            }
        }
        2 => {
            if !s.endpoints.is_empty() {
                let i = rng.index(s.endpoints.len());
                s.endpoints.remove(i);
            }
        }
        3 => {
            if let Some(e) = s.endpoints.first().cloned() {
                s.endpoints.push(e);
            }
        }
        4 => {
            let labels = s.metadata.labels.get_or_insert_with(Default::default);
            if services.is_empty() || rng.chance(20) {
                labels.remove(SERVICE_NAME_LABEL);
            } else {
                let (ns, name) = rng.pick(services).clone();
                s.metadata.namespace = Some(ns);
                labels.insert(SERVICE_NAME_LABEL.into(), name);
            }
        }
        5 => {
            if let Some(e) = s.endpoints.first_mut() {
                e.node_name = Some(rng.pick(&[node, "other-node"]).to_string());
                e.zone = Some(rng.pick(&["zone-a", "zone-b"]).to_string());
            }
        }
        6 => {
            s.metadata.name = Some(format!("slice-{}", rng.below(6)));
        }
        _ => {
            let labels = s.metadata.labels.get_or_insert_with(Default::default);
            if labels.remove(crate::intake::HEADLESS_LABEL).is_none() {
                labels.insert(crate::intake::HEADLESS_LABEL.into(), String::new());
            }
        }
    }
    s
}

fn mutate_node(rng: &mut TestRng, mut n: Node, name: &str) -> Node {
    n.metadata.name = Some(name.to_string());
    match rng.below(3) {
        0 => {
            let labels = n.metadata.labels.get_or_insert_with(Default::default);
            labels.insert(
                crate::intake::ZONE_LABEL.into(),
                rng.pick(&["zone-a", "zone-b"]).to_string(),
            );
        }
        1 => {
            let st = n.status.get_or_insert_with(Default::default);
            st.addresses = Some(vec![k8s_openapi::api::core::v1::NodeAddress {
                address: pick_ip(rng),
                type_: "InternalIP".into(),
            }]);
        }
        _ => {
            let spec = n.spec.get_or_insert_with(Default::default);
            spec.pod_cidrs = Some(vec![rng.pick(&["10.244.1.0/24", "bad"]).to_string()]);
        }
    }
    n
}

/// Compare the incremental graph and change set with the full build.
fn check(
    ctx: &str,
    inc: &IncrementalGraph,
    up: &Update,
    truth: &Truth,
    config: &ProxyConfig,
    prev_full: &ServiceGraph,
) -> ServiceGraph {
    let full = ServiceGraph::build(&truth.objects(), config);
    let got = &**inc.graph();
    if *got != full {
        let a = crate::display::graph(got);
        let b = crate::display::graph(&full);
        panic!(
            "{ctx}: incremental graph differs from the full build\n{}\nwarnings: {:?}\nvs {:?}",
            kproxy_testkit::line_diff(&b, &a),
            got.warnings,
            full.warnings
        );
    }
    // The compact objects give back objects that build the same graph.
    let again = ServiceGraph::build(&inc.objects(), config);
    if again != full {
        panic!(
            "{ctx}: the kept objects build another graph\n{}",
            kproxy_testkit::line_diff(
                &crate::display::graph(&full),
                &crate::display::graph(&again)
            ),
        );
    }
    let want = ChangeSet::between(prev_full, &full);
    assert_eq!(up.changes, want, "{ctx}: change set");
    for (f, ports) in &up.removed {
        for sp in ports {
            assert!(
                want.family(*f).removed.contains(&sp.name),
                "{ctx}: {} reported removed",
                sp.name
            );
        }
    }
    full
}

/// The draws one sequence of 60 steps takes at the most.
const DRAWS: usize = 4096;

fn run_sequence(
    mut rng: TestRng,
    fixture: &str,
    objects: &Objects,
    pool: &[(String, Objects)],
    steps: usize,
) {
    let mut config = fixture_config(
        fixture,
        *rng.pick(&[ProxyMode::Iptables, ProxyMode::Nftables]),
    );
    let node_name = config.node_name.clone();
    let mut inc = IncrementalGraph::new(config.clone());
    let mut truth = Truth::default();
    let up = inc.update();
    let mut prev = check(
        &format!("{fixture} start"),
        &inc,
        &up,
        &truth,
        &config,
        &ServiceGraph::build(&Objects::default(), &config),
    );
    let _ = up;

    // All pool Services and slices, to draw from.
    let all_services: Vec<Service> = pool.iter().flat_map(|(_, o)| o.services.clone()).collect();
    let all_slices: Vec<EndpointSlice> = pool
        .iter()
        .flat_map(|(_, o)| o.endpoint_slices.clone())
        .collect();
    let all_nodes: Vec<Node> = pool.iter().flat_map(|(_, o)| o.nodes.clone()).collect();

    // First the fixture's own objects, one at a time, in random order;
    // then random changes.
    let mut initial: Vec<u8> = Vec::new();
    initial.extend(std::iter::repeat_n(0, objects.services.len()));
    initial.extend(std::iter::repeat_n(1, objects.endpoint_slices.len()));
    initial.extend(std::iter::repeat_n(2, objects.nodes.len()));
    initial.extend(std::iter::repeat_n(3, objects.service_cidrs.len()));
    let (mut si, mut ei, mut ni, mut ci) = (0, 0, 0, 0);
    let mut order: Vec<u8> = Vec::new();
    while !initial.is_empty() {
        order.push(initial.swap_remove(rng.index(initial.len())));
    }
    let total = order.len() + steps;
    for step in 0..total {
        let ctx = format!("fixture {fixture} step {step}");
        let mut batch = 1 + if rng.chance(20) {
            rng.below(4) as usize
        } else {
            0
        };
        while batch > 0 {
            batch -= 1;
            let svc_names: Vec<(String, String)> = truth.services.keys().cloned().collect();
            if step < order.len() {
                match order[step] {
                    0 => {
                        truth.upsert_service(&mut inc, objects.services[si].clone());
                        si += 1;
                    }
                    1 => {
                        truth.upsert_slice(&mut inc, objects.endpoint_slices[ei].clone());
                        ei += 1;
                    }
                    2 => {
                        truth.upsert_node(&mut inc, objects.nodes[ni].clone());
                        ni += 1;
                    }
                    _ => {
                        truth.upsert_service_cidr(&mut inc, objects.service_cidrs[ci].clone());
                        ci += 1;
                    }
                }
                break;
            }
            match rng.below(100) {
                0..30 => {
                    // Change a present Service, or bring one from the pool.
                    let base = if !truth.services.is_empty() && rng.chance(70) {
                        let k = rng.pick(&svc_names).clone();
                        truth.services[&k].clone()
                    } else {
                        rng.pick(&all_services).clone()
                    };
                    let s = if rng.chance(80) {
                        mutate_service(&mut rng, base, &svc_names)
                    } else {
                        base
                    };
                    // The same content in a new allocation must not count
                    // as a change; a changed one must.
                    truth.upsert_service(&mut inc, s);
                }
                30..40 => {
                    if !svc_names.is_empty() {
                        let k = rng.pick(&svc_names).clone();
                        truth.services.remove(&k);
                        assert!(inc.delete_service(&k.0, &k.1), "{ctx}: delete {k:?}");
                    }
                }
                40..75 => {
                    let slice_keys: Vec<_> = truth.slices.keys().cloned().collect();
                    let base = if !slice_keys.is_empty() && rng.chance(70) {
                        truth.slices[rng.pick(&slice_keys)].clone()
                    } else {
                        rng.pick(&all_slices).clone()
                    };
                    let s = if rng.chance(85) {
                        mutate_slice(&mut rng, base, &svc_names, &node_name)
                    } else {
                        base
                    };
                    truth.upsert_slice(&mut inc, s);
                }
                75..85 => {
                    let slice_keys: Vec<_> = truth.slices.keys().cloned().collect();
                    if !slice_keys.is_empty() {
                        let k = rng.pick(&slice_keys).clone();
                        truth.slices.remove(&k);
                        assert!(inc.delete_slice(&k.0, &k.1), "{ctx}: delete slice {k:?}");
                    }
                }
                85..89 => {
                    // ServiceCIDRs come, change and go.
                    let name = *rng.pick(&["kubernetes", "extra", "third"]);
                    if rng.chance(30) {
                        let existed = truth.service_cidrs.remove(name).is_some();
                        assert_eq!(
                            inc.delete_service_cidr(name),
                            existed,
                            "{ctx}: delete {name}"
                        );
                    } else {
                        truth.upsert_service_cidr(&mut inc, random_service_cidr(&mut rng, name));
                    }
                }
                89..92 => {
                    if rng.chance(20) {
                        truth.nodes.remove(&node_name);
                        inc.delete_node(&node_name);
                    } else {
                        let base = truth
                            .nodes
                            .get(&node_name)
                            .cloned()
                            .unwrap_or_else(|| rng.pick(&all_nodes).clone());
                        truth.upsert_node(&mut inc, mutate_node(&mut rng, base, &node_name));
                    }
                }
                92..97 => {
                    config.extra_node_ips = match rng.below(3) {
                        0 => vec![],
                        1 => vec!["192.168.5.5".parse().unwrap()],
                        _ => vec!["192.168.5.5".parse().unwrap(), "fd00::5".parse().unwrap()],
                    };
                    inc.set_config(config.clone());
                }
                _ => {
                    match rng.below(3) {
                        0 => {
                            config.proxy_name = if config.proxy_name.is_some() {
                                None
                            } else {
                                Some("kproxy".into())
                            }
                        }
                        1 => {
                            config.mode = match config.mode {
                                ProxyMode::Iptables => ProxyMode::Nftables,
                                ProxyMode::Nftables => ProxyMode::Iptables,
                            }
                        }
                        _ => {
                            // A Node of another name: ignored.
                            let other = rng.pick(&all_nodes).clone();
                            truth.upsert_node(&mut inc, mutate_node(&mut rng, other, "elsewhere"));
                        }
                    }
                    inc.set_config(config.clone());
                }
            }
        }
        let up = inc.update();
        prev = check(&ctx, &inc, &up, &truth, &config, &prev);
        // An update with nothing pending changes nothing.
        let again = inc.update();
        assert!(
            again.changes.is_empty(),
            "{ctx}: second update {:?}",
            again.changes
        );
        assert_eq!(
            **inc.graph(),
            prev,
            "{ctx}: second update changed the graph"
        );
    }
    // The builder's own view of its objects builds the same graph.
    let own = ServiceGraph::build(&inc.objects(), &config);
    assert_eq!(own, prev, "{fixture}: objects()");
}

#[test]
fn incremental_equals_full_build_over_random_changes() {
    let pool = pool();
    // Six sequences per fixture by default (KPROXY_PROPTEST_CASES for more).
    let cases = 6 * pool.len() as u32;
    let strategy = (0..pool.len(), draws(DRAWS));
    check_property(file!(), cases, &strategy, |(i, rng)| {
        let (name, objects) = &pool[i];
        run_sequence(rng, name, objects, &pool, 60);
        Ok(())
    });
}

/// The objects of the pool's fixture `name` (see [`pool`]).
fn pooled(name: &str) -> Objects {
    pool()
        .into_iter()
        .find_map(|(n, o)| (n == name).then_some(o))
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

/// `ServiceGraph::build` splits a large input across two threads; the
/// incremental graph builds one Service at a time on one. Both must give
/// the same graph.
#[test]
fn a_large_build_on_two_threads_equals_the_incremental_one() {
    let (objects, warnings) =
        Objects::from_yaml("mixed", &kproxy_testkit::mixed_cluster_yaml(1200)).expect("reads");
    assert!(warnings.is_empty(), "{warnings:?}");
    let config = ProxyConfig {
        node_name: kproxy_testkit::MIXED_NODE.into(),
        ..ProxyConfig::default()
    };
    let full = ServiceGraph::build(&objects, &config);
    assert!(full.warnings.is_empty(), "{:?}", full.warnings);
    let mut inc = IncrementalGraph::new(config);
    inc.replace_all(objects);
    inc.update();
    assert_eq!(**inc.graph(), full);
}

#[test]
fn unchanged_objects_are_not_changes_and_ports_are_reused() {
    let name = "cluster-ip-general";
    let objects = &pooled(name);
    let config = fixture_config(name, ProxyMode::Nftables);
    let mut inc = IncrementalGraph::new(config.clone());
    let applied = inc.replace_all(objects.clone());
    assert_eq!(applied.services, objects.services.len() as u64);
    let first = inc.update();
    assert!(first.full_rebuild);
    assert_eq!(**inc.graph(), ServiceGraph::build(objects, &config));
    // The same objects again (new allocations): nothing to do.
    let again = inc.replace_all(objects.clone());
    assert_eq!((again.services, again.slices, again.nodes), (0, 0, 0));
    assert!(!inc.is_dirty());
    // One slice changed: one Service rebuilt, the others kept.
    let mut s = objects.endpoint_slices[0].clone();
    s.endpoints.truncate(1);
    s.endpoints[0].addresses = vec!["10.244.9.9".into()];
    assert!(inc.upsert_slice(Arc::new(s)));
    let up = inc.update();
    assert_eq!(up.rebuilt, 1);
    assert!(!up.full_rebuild && !up.changes.needs_full_sync);
    let changed: usize = up.changes.families.values().map(|c| c.changed.len()).sum();
    assert!(changed >= 1, "{:?}", up.changes);
}

#[test]
fn a_service_cidr_change_updates_only_the_service_cidrs() {
    let name = "cluster-ip-general";
    let mut config = fixture_config(name, ProxyMode::Nftables);
    config.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
    let mut inc = IncrementalGraph::new(config.clone());
    let mut objects = pooled(name);
    objects.service_cidrs.clear();
    inc.replace_all(objects.clone());
    inc.update();
    let mut truth = objects.clone();
    let cidrs = |g: &ServiceGraph, f: IpFamily| -> Vec<String> {
        g.family(f)
            .map(|fg| fg.service_cidrs.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    };

    // Added: the union with the flag, per family.
    let mut rng = seeded(7);
    let mut c = random_service_cidr(&mut rng, "kubernetes");
    c.spec = Some(k8s_openapi::api::networking::v1::ServiceCIDRSpec {
        cidrs: Some(vec![
            "10.96.0.0/16".into(),
            "10.100.0.1/16".into(),
            "fd00:96::/112".into(),
        ]),
    });
    truth.service_cidrs.push(c.clone());
    let before = (**inc.graph()).clone();
    assert!(inc.upsert_service_cidr(Arc::new(c.clone())));
    assert!(
        !inc.upsert_service_cidr(Arc::new(c)),
        "the same object again"
    );
    let up = inc.update();
    let full = ServiceGraph::build(&truth, &config);
    assert_eq!(**inc.graph(), full);
    assert_eq!(
        cidrs(&full, IpFamily::V4),
        ["10.96.0.0/16", "10.100.0.0/16"]
    );
    assert_eq!(cidrs(&full, IpFamily::V6), ["fd00:96::/112"]);
    assert_eq!(up.changes, ChangeSet::between(&before, &full));
    assert!(up.changes.service_cidrs_changed && !up.changes.needs_full_sync);
    assert_eq!(up.rebuilt, 0, "no Service is rebuilt");
    assert!(up.changes.families.values().all(|fc| fc.is_empty()));

    // Removed: back to the flag's CIDR alone.
    truth.service_cidrs.clear();
    let before = (**inc.graph()).clone();
    assert!(inc.delete_service_cidr("kubernetes"));
    assert!(!inc.delete_service_cidr("kubernetes"));
    let up = inc.update();
    let full = ServiceGraph::build(&truth, &config);
    assert_eq!(**inc.graph(), full);
    assert_eq!(cidrs(&full, IpFamily::V4), ["10.96.0.0/16"]);
    assert!(cidrs(&full, IpFamily::V6).is_empty());
    assert_eq!(up.changes, ChangeSet::between(&before, &full));
    assert!(up.changes.service_cidrs_changed && !up.changes.needs_full_sync);
    assert_eq!(up.rebuilt, 0);
}
