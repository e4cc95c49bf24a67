//! Health-check node ports: for every `externalTrafficPolicy: Local`
//! service with a `healthCheckNodePort`, an HTTP server on that port
//! answering 200 when this node has a ready local endpoint and 503
//! otherwise (reference §1.9), so load balancers send traffic only to nodes
//! that can serve it locally.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use kproxy_graph::{ServiceGraph, TrafficPolicy};

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
    servers: BTreeMap<u16, tokio::task::JoinHandle<()>>,
}

impl HealthCheckPorts {
    /// No servers yet.
    pub fn new(shared: Arc<Shared>) -> Self {
        HealthCheckPorts {
            shared,
            table: Arc::new(Mutex::new(BTreeMap::new())),
            servers: BTreeMap::new(),
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

    /// Bring the servers in line with `graph` (after a successful sync).
    pub fn update(&mut self, graph: &ServiceGraph) {
        let wanted = Self::wanted(graph);
        self.servers.retain(|port, task| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
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
            // [::] accepts IPv4 too on Linux (bindv6only=0); fall back to
            // 0.0.0.0 where IPv6 is off.
            let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            let v4 = SocketAddr::from(([0, 0, 0, 0], port));
            let listener =
                std::net::TcpListener::bind(v6).or_else(|_| std::net::TcpListener::bind(v4));
            let listener = match listener.and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(port, service = %format!("{}/{}", info.namespace, info.name),
                        error = %e, "cannot open health-check node port");
                    continue;
                }
            };
            let table = self.table.clone();
            let shared = self.shared.clone();
            let handler: http::Handler = Arc::new(move |_path: &str| {
                let info = table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&port)
                    .cloned();
                let Some(info) = info else {
                    return Reply::text(503, "service gone\n");
                };
                let healthy = shared.health().proxy_healthy(SystemTime::now());
                let (code, body) =
                    service_health_body(&info.namespace, &info.name, info.local_endpoints, healthy);
                let mut r = Reply::json(code, body);
                r.headers.push((
                    "X-Load-Balancing-Endpoint-Weight",
                    info.local_endpoints.to_string(),
                ));
                r
            });
            tracing::info!(port, service = %format!("{}/{}", info.namespace, info.name),
                "health-check node port open");
            self.servers
                .insert(port, tokio::spawn(http::serve(listener, handler)));
        }
    }
}

impl Drop for HealthCheckPorts {
    fn drop(&mut self) {
        for task in self.servers.values() {
            task.abort();
        }
    }
}
