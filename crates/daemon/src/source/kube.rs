//! `--source kube`: the cluster state from the Kubernetes API server.
//!
//! [`KubeSource`] runs one kube-runtime watcher per kind, each feeding a
//! store of its own: Services and EndpointSlices with the label selectors
//! kube-proxy uses, this node's Node by the field selector
//! `metadata.name=NODE`, and every `networking.k8s.io/v1` ServiceCIDR.
//! Services and EndpointSlices are kept in compact form
//! ([`CompactService`], [`CompactSlice`]: what the graph reads), converted
//! as each object arrives, so the full objects of a large cluster are
//! never all in memory, and the graph shares the store's compact objects.
//!
//! Each watcher first lists, then watches from the list's resourceVersion.
//! The list is a streaming list where the API server offers one (a watch
//! with `sendInitialEvents=true&resourceVersionMatch=NotOlderThan`,
//! KEP-3157: the objects arrive as ADDED events, one at a time, until a
//! bookmark marks the end of the initial state): one request per kind,
//! so the client rate limit is paid once rather than per page. An API
//! server that refuses it (HTTP 422 with its `WatchList` feature gate off,
//! or older than 1.27) is asked for paged lists instead ([`PAGE_SIZE`]
//! objects a page, `limit`/`continue`), and for the rest of the source's
//! life ([`ListMode`]). On 410 Gone the watchers list again at once (the
//! store keeps the old state until the new list is complete, so neither
//! the first list nor a relist ever shows a partial cluster), and on
//! other errors they wait as [`backoff`] says: exponential with jitter up
//! to 30 s, not reset by a relist, with a just-started API server's
//! transient 403s retried quietly.
//! [`KubeSource::changed`] first resolves once the Service, EndpointSlice
//! and Node lists are complete, so the first sync never sees, say, Services
//! without their EndpointSlices, and the ServiceCIDR list too unless it
//! failed: kube-proxy's proxier does not wait for ServiceCIDRs at all, and a
//! cluster or a role without them must still get its Services (the drop
//! rule follows when their list arrives).
//!
//! A watcher's error is shown (in [`KubeSource::errors`] and through the
//! [`ErrorSink`] the daemon passes, which feeds `/status` and the metrics)
//! from the moment it happens until the API server next answers that
//! watcher: a client middleware sees every response, so a watch resumed
//! without news clears the error as well as an event does.
//!
//! Each watcher also records which objects its events touched (and that a
//! list completed), so [`KubeSource::drain_into`] hands the graph only the
//! changed objects (the store's own `Arc`s, no copy) rather than a
//! snapshot of the cluster.
//!
//! Adding a watcher takes a name in [`KINDS`], a [`spawn_watcher`] call in
//! [`KubeSource::new`] and its part of [`KubeSource::drain_into`]; the
//! pacing, error reporting and readiness are shared.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kproxy_graph::by_name::ByName;
use kproxy_graph::incremental::Applied;
use kproxy_graph::intake::compact::{CompactService, CompactSlice, Labels};
use kproxy_graph::intake::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL};
use kproxy_graph::{IncrementalGraph, Objects};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::backoff::{Failure, WatchBackoff};
use self::streams::*;
use super::{ErrorSink, ErrorUpdate};

pub mod backoff;
mod client;
mod streams;

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
    /// Client-side request rate limit (`clientConnection.qps` and
    /// `burst`); `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Told about every change of a watcher's error, as it happens.
    pub on_errors: Option<ErrorSink>,
}

/// A token bucket over the client's requests, as client-go's: `burst`
/// requests at once, refilled at `qps` per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per second in the long run (> 0).
    pub qps: f64,
    /// Requests allowed at once (>= 1).
    pub burst: u32,
}

/// Objects per page of a list: the first list of a large cluster arrives
/// a page at a time (client-go's informers use the same size), and each
/// page's objects are converted and dropped before the next is read.
pub const PAGE_SIZE: u32 = 500;

/// Which watcher a status entry belongs to.
const SERVICES: usize = 0;
const SLICES: usize = 1;
const NODES: usize = 2;
const SERVICE_CIDRS: usize = 3;
/// The kind each watcher watches, by index.
const KINDS: [&str; 4] = ["Service", "EndpointSlice", "Node", "ServiceCIDR"];
const WATCHERS: usize = KINDS.len();
/// The watchers whose first list the first sync always waits for.
const REQUIRED: [usize; 3] = [SERVICES, SLICES, NODES];

/// Progress of the watchers, shared with [`KubeSource::changed`].
#[derive(Debug, Clone, Default)]
struct Status {
    /// Bumped whenever a store changed.
    generation: u64,
    /// Whether each watcher completed its first list.
    ready: [bool; WATCHERS],
    /// The last error of each watcher, until the API server next answers
    /// it.
    errors: [Option<String>; WATCHERS],
    /// Set when a watcher task ended, which only happens on a bug.
    ended: Option<String>,
}

/// What the watchers changed since the last [`KubeSource::drain_into`]:
/// per kind, the `(namespace, name)` of objects that had events, or
/// `all` after a (re)list replaced the store.
#[derive(Debug, Default)]
struct Pending {
    keys: [HashSet<(String, String)>; WATCHERS],
    all: [bool; WATCHERS],
}

/// Lock `m`, whatever a panicking holder left: the data (keys, pacing
/// state) stays usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How the watchers list: streamed (a watch with `sendInitialEvents`,
/// KEP-3157) until the API server refuses that once, then in pages of
/// [`PAGE_SIZE`] for the rest of the source's life. client-go's reflector
/// tries the streaming list at every (re)list and falls back on any error;
/// here the answer is remembered, so a server without streaming lists
/// costs one refused request per watcher at most, and a transient error
/// (the server down) does not switch to pages.
#[derive(Debug, Default)]
struct ListMode {
    /// 0: not known yet, 1: streaming lists served, 2: refused.
    state: std::sync::atomic::AtomicU8,
}

impl ListMode {
    const UNKNOWN: u8 = 0;
    const SERVED: u8 = 1;
    const REFUSED: u8 = 2;

    /// Whether the next list should be a streaming one.
    fn streaming(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::Relaxed) != Self::REFUSED
    }

    /// A streaming list completed.
    fn served(&self) {
        let was = self.state.compare_exchange(
            Self::UNKNOWN,
            Self::SERVED,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
        if was.is_ok() {
            tracing::info!("the API server serves streaming lists (sendInitialEvents)");
        }
    }

    /// The API server refused a streaming list of `kind`.
    fn refused(&self, kind: &str, e: &watcher::Error) {
        let was = self
            .state
            .swap(Self::REFUSED, std::sync::atomic::Ordering::Relaxed);
        if was != Self::REFUSED {
            tracing::info!(kind, error = %e, "the API server refuses streaming lists (its WatchList feature gate is off?); listing in pages of {PAGE_SIZE}");
        }
    }
}

/// State shared by the watcher tasks, the client middleware and the
/// source.
struct Watchers {
    /// Streaming or paged lists, shared by every watcher.
    lists: ListMode,
    status: watch::Sender<Status>,
    pending: Mutex<Pending>,
    backoff: [Mutex<WatchBackoff>; WATCHERS],
    /// The collection URL path of each watcher (`/api/v1/services`), to
    /// tell whose request a response answers.
    paths: Mutex<Vec<(String, usize)>>,
    sink: Option<ErrorSink>,
}

impl Watchers {
    fn new(sink: Option<ErrorSink>) -> Self {
        Watchers {
            lists: ListMode::default(),
            status: watch::Sender::new(Status::default()),
            pending: Mutex::default(),
            backoff: std::array::from_fn(|_| Mutex::new(WatchBackoff::default())),
            paths: Mutex::default(),
            sink,
        }
    }

    /// Set or clear watcher `index`'s error; tells the sink about every
    /// error, and about a clear that ended one.
    fn set_error(&self, index: usize, error: Option<String>) {
        let mut current = None;
        self.status.send_if_modified(|s| {
            if error.is_none() && s.errors[index].is_none() {
                return false;
            }
            s.errors[index].clone_from(&error);
            current = Some(errors_of(s));
            // Nothing waits on errors: no wake-up.
            false
        });
        if let (Some(current), Some(sink)) = (current, &self.sink) {
            sink.tell(&ErrorUpdate {
                kind: KINDS[index],
                error: error.as_deref(),
                current,
            });
        }
    }

    /// The API server answered a request (client middleware).
    fn answered(&self, path: &str, status: hyper::StatusCode) {
        if !status.is_success() {
            return;
        }
        let index = lock(&self.paths)
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, i)| *i);
        if let Some(index) = index {
            lock(&self.backoff[index]).on_success();
            self.set_error(index, None);
        }
    }
}

/// The current errors, as `Kind: error` lines.
fn errors_of(s: &Status) -> Vec<String> {
    KINDS
        .iter()
        .zip(s.errors.iter())
        .filter_map(|(kind, e)| e.as_ref().map(|e| format!("{kind}: {e}")))
        .collect()
}

/// The API server as a source of Services, EndpointSlices, this Node and
/// ServiceCIDRs.
pub struct KubeSource {
    services: Store<CompactService>,
    slices: Store<CompactSlice>,
    nodes: Store<Node>,
    service_cidrs: Store<ServiceCIDR>,
    status: watch::Receiver<Status>,
    shared: Arc<Watchers>,
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

/// How an error counts for pacing.
fn classify(e: &watcher::Error) -> Failure {
    let code = match e {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    };
    match code {
        Some(410) => Failure::Gone,
        Some(403) => Failure::Forbidden,
        _ => Failure::Unavailable,
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

impl KubeSource {
    /// Connects the watchers. This does not wait for the API server:
    /// [`KubeSource::changed`] resolves once the initial lists are in.
    pub async fn new(opts: KubeSourceOptions) -> anyhow::Result<Self> {
        if opts.node_name.is_empty() {
            anyhow::bail!("the kube source needs the node name (--hostname-override)");
        }
        let mut config = client_config(opts.kubeconfig.as_ref()).await?;
        // kube-client retries 429/503/504 by itself (up to 15 times,
        // within the same request): the watchers' backoff is the one
        // retry policy, so that an outage is paced, counted and shown.
        config.default_retry = false;
        tracing::info!(server = %config.cluster_url, node = %opts.node_name, rate_limit = ?opts.rate_limit, "watching the API server");
        let shared = Arc::new(Watchers::new(opts.on_errors));
        let layer = client::Layer::new(opts.rate_limit, shared.clone());
        let client: Client = kube::client::ClientBuilder::try_from(config)
            .context("building the Kubernetes client")?
            .with_layer(&layer)
            .build();
        let status = shared.status.subscribe();
        let labels = label_selector(opts.proxy_name.as_deref());
        let labelled = watcher::Config::default().labels(&labels);
        let (services, t1) = spawn_watcher::<Service, _>(
            &client,
            labelled.clone(),
            SERVICES,
            &shared,
            CompactService::from,
        );
        let (slices, t2) = spawn_watcher::<EndpointSlice, _>(
            &client,
            labelled,
            SLICES,
            &shared,
            CompactSlice::from,
        );
        let this_node = format!("metadata.name={}", opts.node_name);
        let (nodes, t3) = spawn_watcher::<Node, _>(
            &client,
            watcher::Config::default().fields(&this_node),
            NODES,
            &shared,
            std::convert::identity,
        );
        let (service_cidrs, t4) = spawn_watcher::<ServiceCIDR, _>(
            &client,
            watcher::Config::default(),
            SERVICE_CIDRS,
            &shared,
            std::convert::identity,
        );
        Ok(KubeSource {
            services,
            slices,
            nodes,
            service_cidrs,
            status,
            shared,
            seen: 0,
            node_name: opts.node_name,
            proxy_name: opts.proxy_name,
            tasks: vec![t1, t2, t3, t4],
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
                .wait_for(|s| s.ended.is_some() || (sync_ready(s) && s.generation != seen))
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

    /// Whether kproxy proxies an object with these labels: not headless,
    /// and not labelled for another proxy (the label selector cannot say
    /// "no label or this value").
    fn wanted(&self, labels: &Labels) -> bool {
        labels.wanted(self.proxy_name.as_deref())
    }

    /// Whether `node` is this node (the only Node the graph reads).
    fn is_ours(&self, node: &Node) -> bool {
        node.metadata.name.as_deref() == Some(self.node_name.as_str())
    }

    /// Hand `graph` what changed since the last drain: the objects the
    /// watchers' events named (looked up in the stores, so a burst of
    /// events for one object is one upsert), or a whole kind after a
    /// (re)list. Returns what really changed.
    pub fn drain_into(&mut self, graph: &mut IncrementalGraph) -> Applied {
        let pending = std::mem::take(&mut *lock(&self.shared.pending));
        let mut out = Applied::default();
        let wanted = |labels: &Labels| self.wanted(labels);
        out.services += drained(&self.services, &pending, SERVICES, |s| wanted(&s.labels))
            .apply_to(
                graph,
                |g, all| g.replace_compact_services(all),
                IncrementalGraph::upsert_compact_service,
                |g, ns, name| g.delete_service(ns_or_default(ns), name),
            );
        match drained(&self.slices, &pending, SLICES, |s| wanted(&s.labels)) {
            Drained::All(all) => out.merge(graph.replace_compact_slices(all)),
            Drained::Each(each) => {
                for ((ns, name), s) in each {
                    let ns = ns_or_default(ns);
                    match s {
                        Some(s) => {
                            if graph.upsert_compact_slice(s.clone()) {
                                out.slices += 1;
                                out.changed_slices.push(Arc::new(s.trigger_only()));
                            }
                        }
                        None => {
                            if graph.delete_slice(ns, name) {
                                out.slices += 1;
                                out.deleted_slices.push((ns.to_string(), name.to_string()));
                            }
                        }
                    }
                }
            }
        }
        out.nodes += drained(&self.nodes, &pending, NODES, |n| self.is_ours(n)).apply_to(
            graph,
            IncrementalGraph::replace_nodes,
            IncrementalGraph::upsert_node,
            |g, _, name| g.delete_node(name),
        );
        out.service_cidrs += drained(&self.service_cidrs, &pending, SERVICE_CIDRS, |_| true)
            .apply_to(
                graph,
                IncrementalGraph::replace_service_cidrs,
                IncrementalGraph::upsert_service_cidr,
                |g, _, name| g.delete_service_cidr(name),
            );
        out
    }

    /// The current objects, sorted by namespace and name (`kproxy diff`
    /// and the tests; the daemon uses [`KubeSource::drain_into`]). Services
    /// and EndpointSlices have the fields the graph reads only.
    pub fn snapshot(&self) -> Objects {
        let wanted = |labels: &Labels| self.wanted(labels);
        Objects {
            services: sorted(
                &self.services,
                |s| wanted(&s.labels),
                CompactService::to_service,
            ),
            endpoint_slices: sorted(&self.slices, |s| wanted(&s.labels), CompactSlice::to_slice),
            nodes: sorted(&self.nodes, |n| self.is_ours(n), Node::clone),
            service_cidrs: sorted(&self.service_cidrs, |_| true, ServiceCIDR::clone),
        }
    }

    /// Whether the initial lists the first sync waits for completed.
    #[allow(dead_code, reason = "part of the source's interface; the tests use it")]
    pub fn synced(&self) -> bool {
        sync_ready(&self.status.borrow())
    }

    /// The watchers' current errors (empty while the API server answers),
    /// for /status: each watcher's last error, until the API server next
    /// answers it.
    pub fn errors(&self) -> Vec<String> {
        errors_of(&self.status.borrow())
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Whether the first sync can go: the required lists are complete, and
/// the ServiceCIDR list is complete or failed (a role without the grant,
/// an API server without the API: the Services do not wait for it).
fn sync_ready(s: &Status) -> bool {
    REQUIRED.iter().all(|i| s.ready[*i])
        && (s.ready[SERVICE_CIDRS] || s.errors[SERVICE_CIDRS].is_some())
}

/// The wanted objects of `kept`, sorted by namespace and name, as `to` makes
/// them.
fn sorted<T, U>(
    kept: &Mutex<Kept<T>>,
    wanted: impl Fn(&T) -> bool,
    to: impl Fn(&T) -> U,
) -> Vec<U> {
    let kept = lock(kept);
    let mut entries: Vec<((&str, &str), &Arc<T>)> =
        kept.objects.iter().filter(|(_, o)| wanted(o)).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().map(|(_, o)| to(o)).collect()
}

/// What one watcher's pending changes come to: after a (re)list, every
/// wanted object; else each object the events named, `None` when it is
/// gone or not wanted.
enum Drained<'a, T> {
    All(Vec<Arc<T>>),
    Each(Vec<Named<'a, T>>),
}

/// An object's namespace and name, and the object when it is wanted.
type Named<'a, T> = ((&'a str, &'a str), Option<Arc<T>>);

impl<T> Drained<'_, T> {
    /// Hand the changes to `graph` (as a whole set, or each upserted or
    /// deleted by namespace and name); returns how many changed.
    fn apply_to(
        self,
        graph: &mut IncrementalGraph,
        replace: fn(&mut IncrementalGraph, Vec<Arc<T>>) -> u64,
        upsert: fn(&mut IncrementalGraph, Arc<T>) -> bool,
        delete: fn(&mut IncrementalGraph, &str, &str) -> bool,
    ) -> u64 {
        match self {
            Drained::All(all) => replace(graph, all),
            Drained::Each(each) => each
                .into_iter()
                .map(|((ns, name), o)| {
                    u64::from(match o {
                        Some(o) => upsert(graph, o),
                        None => delete(graph, ns, name),
                    })
                })
                .sum(),
        }
    }
}

/// The pending changes of `kept`, watcher `kind`, looked up in its store
/// (under its lock, which is released before the graph is touched).
fn drained<'a, T>(
    kept: &Mutex<Kept<T>>,
    pending: &'a Pending,
    kind: usize,
    wanted: impl Fn(&T) -> bool,
) -> Drained<'a, T> {
    let kept = lock(kept);
    if pending.all[kind] {
        let all = kept.objects.values().filter(|o| wanted(o)).cloned();
        return Drained::All(all.collect());
    }
    let each = pending.keys[kind].iter().map(|(ns, name)| {
        let o = kept.objects.get(ns, name).filter(|o| wanted(o));
        ((ns.as_str(), name.as_str()), o.cloned())
    });
    Drained::Each(each.collect())
}

/// The namespace the graph files an object under (`default` when unset).
fn ns_or_default(ns: &str) -> &str {
    if ns.is_empty() { "default" } else { ns }
}

#[cfg(test)]
mod tests;
