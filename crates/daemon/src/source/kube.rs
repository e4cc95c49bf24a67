//! `--source kube`: the cluster state from the Kubernetes API server.
//!
//! [`KubeSource`] runs three kube-runtime watchers, each feeding a
//! reflector store: Services and EndpointSlices with the label selectors
//! kube-proxy uses, and this node's Node by the field selector
//! `metadata.name=NODE`. The watchers list, then watch from the list's
//! resourceVersion; on 410 Gone they list again (the store keeps the old
//! state until the new list is complete, so a relist never shows a
//! half-empty cluster), and on errors they retry with kube-runtime's
//! default exponential backoff. [`KubeSource::changed`] first resolves
//! once all three initial lists are complete, so the first sync never
//! sees, say, Services without their EndpointSlices.
//!
//! Each watcher also records which objects its events touched (and that a
//! list completed), so [`KubeSource::drain_into`] hands the graph only the
//! changed objects (the store's own `Arc`s, no copy) rather than a
//! snapshot of the cluster.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kproxy_graph::incremental::Applied;
use kproxy_graph::intake::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
use kproxy_graph::{IncrementalGraph, Objects};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a watcher error is reported. A watcher that recovers without
/// news (a watch resumed, nothing changed) emits no event that could clear
/// its error, while a persisting outage errs again at least every backoff
/// period (at most about 30 s), so errors older than this are stale.
const ERROR_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// What [`KubeSource::new`] needs.
#[derive(Debug, Clone, Default)]
pub struct KubeSourceOptions {
    /// A kubeconfig file; `None` infers the configuration (the
    /// `KUBECONFIG` variable or `~/.kube/config`, else in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (its Node is the only one watched).
    pub node_name: String,
    /// The `service.kubernetes.io/service-proxy-name` value kproxy
    /// answers to; `None`: only objects without that label.
    pub proxy_name: Option<String>,
}

/// Which watcher a status entry belongs to.
const SERVICES: usize = 0;
const SLICES: usize = 1;
const NODES: usize = 2;
const KINDS: [&str; 3] = ["Service", "EndpointSlice", "Node"];

/// Progress of the three watchers, shared with [`KubeSource::changed`].
#[derive(Debug, Clone, Default)]
struct Status {
    /// Bumped whenever a store changed.
    generation: u64,
    /// Whether each watcher completed its first list.
    ready: [bool; 3],
    /// The last error of each watcher and when it happened, cleared by its
    /// next event.
    errors: [Option<(Instant, String)>; 3],
    /// Set when a watcher task ended, which only happens on a bug.
    ended: Option<String>,
}

/// What the watchers changed since the last [`KubeSource::drain_into`]:
/// per kind, the `(namespace, name)` of objects that had events, or
/// `all` after a (re)list replaced the store.
#[derive(Debug, Default)]
struct Pending {
    keys: [HashSet<(String, String)>; 3],
    all: [bool; 3],
}

type SharedPending = Arc<Mutex<Pending>>;

fn lock_pending(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // The data is a set of keys: still usable after a panic elsewhere.
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The API server as a source of Services, EndpointSlices and this Node.
pub struct KubeSource {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    status: watch::Receiver<Status>,
    pending: SharedPending,
    seen: u64,
    node_name: String,
    proxy_name: Option<String>,
    tasks: Vec<JoinHandle<()>>,
    /// The tests' graph fed by [`KubeSource::drain_into`], checked
    /// against a full build of the snapshot.
    #[cfg(test)]
    mirror: Option<Box<IncrementalGraph>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("node_name", &self.node_name)
            .field("proxy_name", &self.proxy_name)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

/// The label selector kube-proxy puts on its Service and EndpointSlice
/// informers. With a proxy name, Services labelled for it must be seen
/// too, and "no label or this value" cannot be written as one selector:
/// the API server then filters headless ones only and
/// [`KubeSource::snapshot`] drops those labelled for other proxies.
fn label_selector(proxy_name: Option<&str>) -> String {
    match proxy_name {
        None => format!("!{SERVICE_PROXY_NAME_LABEL},!{HEADLESS_LABEL}"),
        Some(_) => format!("!{HEADLESS_LABEL}"),
    }
}

fn spawn_watcher<K>(
    api: Api<K>,
    config: watcher::Config,
    index: usize,
    status: Arc<watch::Sender<Status>>,
    pending: SharedPending,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .modify(strip_unused_metadata),
    );
    let kind = KINDS[index];
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            // The reflector has already applied the event to the store;
            // the key is recorded after that, so a drain that reads the
            // store before the key is recorded sees it again next time.
            match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => {
                    let meta = obj.meta();
                    lock_pending(&pending).keys[index].insert((
                        meta.namespace.clone().unwrap_or_default(),
                        meta.name.clone().unwrap_or_default(),
                    ));
                    status.send_modify(|s| {
                        s.generation += 1;
                        s.errors[index] = None;
                    });
                }
                Ok(watcher::Event::InitDone) => {
                    tracing::debug!(kind, "list complete");
                    {
                        let mut p = lock_pending(&pending);
                        p.all[index] = true;
                        p.keys[index].clear();
                    }
                    status.send_modify(|s| {
                        s.generation += 1;
                        s.ready[index] = true;
                        s.errors[index] = None;
                    });
                }
                // The store swaps in a relist's objects only at InitDone.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => {
                    // Each error is followed by a backoff delay (at most
                    // about half a minute), so this does not flood the log.
                    tracing::warn!(kind, error = %e, "API watch failed; retrying");
                    status.send_modify(|s| s.errors[index] = Some((Instant::now(), e.to_string())));
                }
            }
        }
        status.send_modify(|s| s.ended = Some(format!("the {kind} watcher stopped")));
    });
    (store, task)
}

/// The annotation `kubectl apply` keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the graph never reads and can be most of an object's size
/// (managedFields, kubectl's last-applied copy), so the stores of a large
/// cluster cost less memory.
fn strip_unused_metadata<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

async fn client_config(kubeconfig: Option<&PathBuf>) -> anyhow::Result<kube::Config> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given and none found (KUBECONFIG, ~/.kube/config, in-cluster)"),
    }
}

fn sort_key(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

impl KubeSource {
    /// Connects the watchers. This does not wait for the API server:
    /// [`KubeSource::changed`] resolves once the initial lists are in.
    pub async fn new(opts: KubeSourceOptions) -> anyhow::Result<Self> {
        if opts.node_name.is_empty() {
            anyhow::bail!("the kube source needs the node name (--hostname-override)");
        }
        let config = client_config(opts.kubeconfig.as_ref()).await?;
        tracing::info!(server = %config.cluster_url, node = %opts.node_name, "watching the API server");
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        let (tx, rx) = watch::channel(Status::default());
        let tx = Arc::new(tx);
        let pending = SharedPending::default();
        let labels = label_selector(opts.proxy_name.as_deref());
        let (services, t1) = spawn_watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(&labels),
            SERVICES,
            tx.clone(),
            pending.clone(),
        );
        let (slices, t2) = spawn_watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&labels),
            SLICES,
            tx.clone(),
            pending.clone(),
        );
        let (nodes, t3) = spawn_watcher(
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={}", opts.node_name)),
            NODES,
            tx,
            pending.clone(),
        );
        Ok(KubeSource {
            services,
            slices,
            nodes,
            status: rx,
            pending,
            seen: 0,
            node_name: opts.node_name,
            proxy_name: opts.proxy_name,
            tasks: vec![t1, t2, t3],
            #[cfg(test)]
            mirror: None,
        })
    }

    /// Resolves when the cluster state changed since the last snapshot
    /// (first: when the initial lists are synced). Cancel-safe.
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        let seen = self.seen;
        let generation = {
            let status = self
                .status
                .wait_for(|s| {
                    s.ended.is_some() || (s.ready.iter().all(|r| *r) && s.generation != seen)
                })
                .await
                .context("the API watchers stopped")?;
            if let Some(ended) = &status.ended {
                anyhow::bail!("{ended}");
            }
            status.generation
        };
        self.seen = generation;
        Ok(())
    }

    /// Whether kproxy proxies an object with this metadata: not headless,
    /// and not labelled for another proxy (the label selector cannot say
    /// "no label or this value").
    fn wanted(&self, meta: &ObjectMeta) -> bool {
        let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
        label(HEADLESS_LABEL).is_none()
            && label(SERVICE_PROXY_NAME_LABEL)
                .is_none_or(|v| self.proxy_name.as_deref() == Some(v.as_str()))
    }

    /// Hand `graph` what changed since the last drain: the objects the
    /// watchers' events named (looked up in the stores, so a burst of
    /// events for one object is one upsert), or a whole kind after a
    /// (re)list. Returns what really changed.
    pub fn drain_into(&mut self, graph: &mut IncrementalGraph) -> Applied {
        let pending = std::mem::take(&mut *lock_pending(&self.pending));
        let mut out = Applied::default();

        if pending.all[SERVICES] {
            let all = self
                .services
                .state()
                .into_iter()
                .filter(|s| self.wanted(&s.metadata))
                .collect();
            out.services += graph.replace_services(all);
        } else {
            for (ns, name) in &pending.keys[SERVICES] {
                out.services += u64::from(match self.services.get(&objref(ns, name)) {
                    Some(s) if self.wanted(&s.metadata) => graph.upsert_service(s),
                    _ => graph.delete_service(ns_or_default(ns), name),
                });
            }
        }
        if pending.all[SLICES] {
            let all = self
                .slices
                .state()
                .into_iter()
                .filter(|s| self.wanted(&s.metadata))
                .collect();
            out.merge(graph.replace_slices(all));
        } else {
            for (ns, name) in &pending.keys[SLICES] {
                match self.slices.get(&objref(ns, name)) {
                    Some(s) if self.wanted(&s.metadata) => {
                        if graph.upsert_slice(s.clone()) {
                            out.slices += 1;
                            out.changed_slices.push(s);
                        }
                    }
                    _ => {
                        let ns = ns_or_default(ns);
                        if graph.delete_slice(ns, name) {
                            out.slices += 1;
                            out.deleted_slices.push((ns.to_string(), name.clone()));
                        }
                    }
                }
            }
        }
        let ours = |n: &Arc<Node>| n.metadata.name.as_deref() == Some(self.node_name.as_str());
        if pending.all[NODES] {
            let all = self.nodes.state().into_iter().filter(ours).collect();
            out.nodes += graph.replace_nodes(all);
        } else {
            for (_, name) in &pending.keys[NODES] {
                out.nodes += u64::from(match self.nodes.get(&objref("", name)) {
                    Some(n) if ours(&n) => graph.upsert_node(n),
                    _ => graph.delete_node(name),
                });
            }
        }
        out
    }

    /// The current objects, sorted by namespace and name (`kproxy diff`
    /// and the tests; the daemon uses [`KubeSource::drain_into`]).
    pub fn snapshot(&self) -> Objects {
        let wanted = |meta: &ObjectMeta| self.wanted(meta);
        let mut services: Vec<Service> = self
            .services
            .state()
            .iter()
            .filter(|s| wanted(&s.metadata))
            .map(|s| (**s).clone())
            .collect();
        services.sort_by_key(|s| sort_key(&s.metadata));
        let mut endpoint_slices: Vec<EndpointSlice> = self
            .slices
            .state()
            .iter()
            .filter(|s| wanted(&s.metadata))
            .map(|s| (**s).clone())
            .collect();
        endpoint_slices.sort_by_key(|s| sort_key(&s.metadata));
        let nodes = self
            .nodes
            .state()
            .iter()
            .filter(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()))
            .map(|n| (**n).clone())
            .collect();
        Objects {
            services,
            endpoint_slices,
            nodes,
        }
    }

    /// Whether all three initial lists completed.
    #[allow(dead_code, reason = "part of the source's interface; the tests use it")]
    pub fn synced(&self) -> bool {
        self.status.borrow().ready.iter().all(|r| *r)
    }

    /// The watchers' recent errors (empty while the API server answers),
    /// for /status: the last error of each watcher that has had no event
    /// since, if it is less than two minutes old.
    pub fn errors(&self) -> Vec<String> {
        let status = self.status.borrow();
        KINDS
            .iter()
            .zip(status.errors.iter())
            .filter_map(|(kind, e)| {
                e.as_ref()
                    .filter(|(at, _)| at.elapsed() < ERROR_TTL)
                    .map(|(_, e)| format!("{kind}: {e}"))
            })
            .collect()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The store's key of an object.
fn objref<K>(ns: &str, name: &str) -> ObjectRef<K>
where
    K: kube::runtime::reflector::Lookup,
    K::DynamicType: Default,
{
    let r = ObjectRef::new(name);
    if ns.is_empty() { r } else { r.within(ns) }
}

/// The namespace the graph files an object under (`default` when unset).
fn ns_or_default(ns: &str) -> &str {
    if ns.is_empty() { "default" } else { ns }
}

#[cfg(test)]
mod tests;
