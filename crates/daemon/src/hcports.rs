//! Health-check node ports: for every `externalTrafficPolicy: Local`
//! service with a `healthCheckNodePort`, an HTTP server on that port
//! answering 200 when this node has a ready local endpoint and 503
//! otherwise (upstream pkg/proxy/healthcheck/service_health.go), so load
//! balancers send traffic only to nodes
//! that can serve it locally. Like kube-proxy, the servers listen on the
//! NodePort addresses: every address when NodePorts are accepted on all
//! local addresses (iptables mode's default), else only on the addresses
//! `nodePortAddresses` selects (nftables mode's default: the primary node
//! IPs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kproxy_graph::{NodePortIps, ServiceGraph, TrafficPolicy};

use crate::health::service_health_body;
use crate::http::{self, Reply};
use crate::state::Shared;

/// What one port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PortInfo {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

type Table = Arc<Mutex<BTreeMap<u16, PortInfo>>>;

/// The set of health-check node port servers.
pub struct HealthCheckPorts {
    shared: Arc<Shared>,
    table: Table,
    servers: BTreeMap<u16, Server>,
    /// The connections all ports together may hold.
    budget: Arc<tokio::sync::Semaphore>,
}

impl HealthCheckPorts {
    /// No servers yet.
    pub fn new(shared: Arc<Shared>) -> Self {
        HealthCheckPorts {
            shared,
            table: Arc::new(Mutex::new(BTreeMap::new())),
            servers: BTreeMap::new(),
            budget: Arc::new(tokio::sync::Semaphore::new(
                http::HEALTH_CHECK_PORTS_CONNECTIONS,
            )),
        }
    }

    /// The ports the graph asks for, with their local endpoint counts.
    fn wanted(graph: &ServiceGraph) -> BTreeMap<u16, PortInfo> {
        let mut out: BTreeMap<u16, PortInfo> = BTreeMap::new();
        for fg in graph.families.values() {
            for sp in fg.services.values() {
                let Some(port) = sp.health_check_node_port else {
                    continue;
                };
                if sp.external_traffic_policy != TrafficPolicy::Local {
                    continue;
                }
                // One server per Service (ports of a Service share it); the
                // count is the Service's ready local endpoints, across
                // families, counted once per address.
                let e = out.entry(port).or_insert_with(|| PortInfo {
                    namespace: sp.name.namespace.clone(),
                    name: sp.name.name.clone(),
                    local_endpoints: 0,
                });
                e.local_endpoints = e.local_endpoints.max(sp.ready_local_endpoints);
            }
        }
        out
    }

    /// Where health-check node ports listen: like kube-proxy, on the
    /// NodePort addresses (`nodePortAddresses`), or on every address when
    /// NodePorts are accepted on all of them.
    fn bind_ips(graph: &ServiceGraph) -> BindIps {
        let mut ips = BTreeSet::new();
        for fg in graph.families.values() {
            match &fg.nodeport_ips {
                NodePortIps::All => return BindIps::All,
                NodePortIps::Only(v) => ips.extend(v.iter().copied()),
            }
        }
        BindIps::Only(ips)
    }

    fn listen(bind: &BindIps, port: u16) -> Vec<std::io::Result<std::net::TcpListener>> {
        let addrs: Vec<Vec<SocketAddr>> = match bind {
            // [::] accepts IPv4 too on Linux (bindv6only=0); 0.0.0.0 where
            // IPv6 is off.
            BindIps::All => vec![vec![
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
                SocketAddr::from(([0, 0, 0, 0], port)),
            ]],
            BindIps::Only(ips) => ips
                .iter()
                .map(|ip| vec![SocketAddr::new(*ip, port)])
                .collect(),
        };
        addrs
            .into_iter()
            .map(|candidates| {
                let mut last = None;
                for a in candidates {
                    match std::net::TcpListener::bind(a) {
                        Ok(l) => {
                            l.set_nonblocking(true)?;
                            return Ok(l);
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| std::io::Error::other("no address to bind")))
            })
            .collect()
    }

    /// Bring the servers in line with `graph` (after a successful sync).
    pub fn update(&mut self, graph: &ServiceGraph) {
        let wanted = Self::wanted(graph);
        let bind = Self::bind_ips(graph);
        self.servers.retain(|port, server| {
            let keep = wanted.contains_key(port) && server.bind == bind;
            if !keep {
                for t in &server.tasks {
                    t.abort();
                }
                tracing::info!(port, "health-check node port closed");
            }
            keep
        });
        {
            let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
            *t = wanted.clone();
        }
        for (port, info) in wanted {
            if self.servers.contains_key(&port) {
                continue;
            }
            let service = format!("{}/{}", info.namespace, info.name);
            let mut tasks = Vec::new();
            for listener in Self::listen(&bind, port) {
                let listener = match listener {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(port, service = %service, error = %e,
                            "cannot open health-check node port");
                        continue;
                    }
                };
                let table = self.table.clone();
                let shared = self.shared.clone();
                let handler = http::handler(move |_path: &str| {
                    let info = table
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&port)
                        .cloned();
                    let Some(info) = info else {
                        return Reply::text(503, "service gone\n");
                    };
                    let healthy = shared.health().proxy_healthy(SystemTime::now());
                    let (code, body) = service_health_body(
                        &info.namespace,
                        &info.name,
                        info.local_endpoints,
                        healthy,
                    );
                    let mut r = Reply::json(code, body);
                    r.headers.push((
                        "X-Load-Balancing-Endpoint-Weight",
                        info.local_endpoints.to_string(),
                    ));
                    r
                });
                let Some(rt) = self.shared.http_runtime() else {
                    continue;
                };
                tasks.push(rt.spawn(http::serve(
                    listener,
                    handler,
                    http::Limits::HEALTH_CHECK_PORT,
                    Some(self.budget.clone()),
                )));
            }
            tracing::info!(port, service = %service, listeners = tasks.len(), bind = ?bind,
                "health-check node port open");
            // Recorded even with no listener, so a failing bind is retried
            // only when the addresses change, not logged every sync.
            self.servers.insert(
                port,
                Server {
                    bind: bind.clone(),
                    tasks,
                },
            );
        }
    }
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BindIps {
    /// Every address.
    All,
    /// These addresses.
    Only(BTreeSet<IpAddr>),
}

/// One health-check node port's listeners.
struct Server {
    bind: BindIps,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HealthCheckPorts {
    fn drop(&mut self) {
        for server in self.servers.values() {
            for task in &server.tasks {
                task.abort();
            }
        }
    }
}
