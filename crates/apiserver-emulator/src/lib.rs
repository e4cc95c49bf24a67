//! `kproxy-apiserver-emulator`: a small Kubernetes API server for tests.
//!
//! [`Emulator`] serves, over plain HTTP/1.1 on loopback, what a service
//! proxy reads: LIST (paged with `limit`/`continue` from a consistent
//! snapshot), GET and WATCH of Services (`/api/v1/services`),
//! EndpointSlices (`/apis/discovery.k8s.io/v1/endpointslices`), Nodes
//! (`/api/v1/nodes`, also a single node by name or by the field selector
//! `metadata.name=...`) and ServiceCIDRs
//! (`/apis/networking.k8s.io/v1/servicecidrs`), plus enough discovery (`/version`, `/api`,
//! `/apis`, `/api/v1`, ...) for kube-rs.
//!
//! It behaves like the real API server where a client can tell the
//! difference: one global resourceVersion counter, ADDED/MODIFIED/DELETED
//! watch events honouring label and field selectors (an object that
//! leaves a watch's selection is seen as DELETED, one that enters it as
//! ADDED), BOOKMARK events when the watch allows them, and a 410 Gone
//! (an `ERROR` event carrying a `Status` with code 410, as the real server
//! sends it) when a watch asks to resume from a resourceVersion older than
//! the retained history. Streaming lists (a watch with
//! `sendInitialEvents=true&resourceVersionMatch=NotOlderThan`, KEP-3157)
//! send the current objects as ADDED events, then a BOOKMARK annotated
//! `k8s.io/initial-events-end: "true"`, then live events; with the
//! `WatchList` gate off ([`Emulator::set_watch_list`]) they are refused
//! with the 422 kube-apiserver's list-option validation answers.
//!
//! Tests drive it with [`Emulator::apply`] and [`Emulator::delete`], and
//! break it with [`Emulator::fail_for`] (HTTP 500 for every request),
//! [`Emulator::unavailable_for`] (503), [`Emulator::forbid_for`] (403, as
//! a just-started API server whose authorizer is not ready yet),
//! [`Emulator::hang_up_watches`], [`Emulator::expire_watches`],
//! [`Emulator::set_history_limit`] and [`Emulator::stop`] /
//! [`Emulator::restart`] (same port, state kept, like an API server
//! restart in front of etcd). [`Emulator::write_kubeconfig`] points a
//! client at it. Errors are [`EmulatorError`]; kinds are [`Kind`].
//!
//! The `kproxy-apiserver-emulator` command serves YAML files the same way
//! (see [`files`]) and follows their changes, so that `kproxy run --source
//! kube` can be tried without a cluster:
//! `kproxy-apiserver-emulator --kubeconfig /tmp/kc objects.yaml` then
//! `kproxy run --source kube --kubeconfig /tmp/kc ...`.
//!
//! ```
//! use std::time::Duration;
//! use kproxy_apiserver_emulator::{Emulator, Kind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (mut emu, addr) = Emulator::start().await?;
//! let rv = emu.apply(&serde_json::json!({
//!     "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}
//! }))?;
//! assert_eq!(emu.resource_version(), rv);
//! // What `write_kubeconfig(path)` writes for a client.
//! assert!(emu.kubeconfig().contains(&format!("server: http://{addr}")));
//! emu.fail_for(Duration::from_secs(5)); // every request: HTTP 500
//! emu.recover();
//! emu.stop().await; // the API server goes away...
//! emu.delete(Kind::Node, "", "node-1");
//! emu.restart().await?; // ...and comes back on the same port
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub mod files;
mod selector;
mod server;
mod store;

pub use selector::{FieldSelector, LabelSelector};

use store::State;

/// The kinds the emulator serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Node.
    Node,
    /// `networking.k8s.io/v1` ServiceCIDR.
    ServiceCidr,
}

impl Kind {
    /// The `kind` field.
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ServiceCidr => "ServiceCIDR",
        }
    }

    /// The `apiVersion` field.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Node => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ServiceCidr => "networking.k8s.io/v1",
        }
    }

    /// The plural resource name in URLs.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::ServiceCidr => "servicecidrs",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::ServiceCidr)
    }

    /// The kind named by a `kind` field value.
    pub fn from_kind(kind: &str) -> Option<Kind> {
        match kind {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Node" => Some(Kind::Node),
            "ServiceCIDR" => Some(Kind::ServiceCidr),
            _ => None,
        }
    }
}

/// What can go wrong driving the emulator.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listening socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An object given to [`Emulator::apply`] is not one the emulator can store.
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// An object could not be turned into JSON.
    #[error("serializing object: {0}")]
    Serialize(#[from] serde_json::Error),
    /// An input directory could not be listed.
    #[error(transparent)]
    Input(#[from] kproxy_graph::IntakeError),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file (the kubeconfig) could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// State shared by the server tasks and the test's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Bumped on every change; open watches wait on it.
    changed: tokio::sync::watch::Sender<u64>,
    /// Bumped to make open watches end their streams.
    hangup: tokio::sync::watch::Sender<u64>,
    /// Bumped to make open watches send a 410 and end.
    expire: tokio::sync::watch::Sender<u64>,
    open_watches: AtomicUsize,
    /// Watches ever started.
    started_watches: AtomicUsize,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated
        // in a way that matters to tests, so a poisoned lock is still used.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g += 1);
    }
}

/// A running (or stopped) API server emulator. Dropping it stops the
/// server and closes every connection.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    bind: Binder,
    server: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("running", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

type Binder = Arc<dyn Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync>;

/// A listening socket with SO_REUSEADDR, so that [`Emulator::restart`] can
/// bind the same port again while closed connections linger in TIME_WAIT.
pub fn reusable_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

fn listen(bind: &Binder, addr: SocketAddr) -> Result<TcpListener, EmulatorError> {
    let std_listener = bind(addr).map_err(|source| EmulatorError::Bind { addr, source })?;
    std_listener
        .set_nonblocking(true)
        .map_err(|source| EmulatorError::Bind { addr, source })?;
    TcpListener::from_std(std_listener).map_err(|source| EmulatorError::Bind { addr, source })
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this task's JoinSet, so aborting the task (stop)
    // drops every connection, open watches included.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let svc = service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(server::handle(shared, req).await) }
                        });
                        // A client going away mid-stream is normal here.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                // Out of file descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

impl Emulator {
    /// Starts an emulator on an ephemeral loopback port.
    pub async fn start() -> Result<(Emulator, SocketAddr), EmulatorError> {
        Emulator::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts an emulator on the given address.
    pub async fn start_on(addr: SocketAddr) -> Result<(Emulator, SocketAddr), EmulatorError> {
        Emulator::start_with(addr, reusable_listener).await
    }

    /// Starts an emulator on a listener made by `bind` (called again with
    /// the actual address by [`Emulator::restart`]). This is how a test
    /// serves inside a network namespace: `bind` runs
    /// [`reusable_listener`] on a thread that entered the namespace, and
    /// the socket stays in that namespace.
    pub async fn start_with(
        addr: SocketAddr,
        bind: impl Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync + 'static,
    ) -> Result<(Emulator, SocketAddr), EmulatorError> {
        let bind: Binder = Arc::new(bind);
        let listener = listen(&bind, addr)?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            changed: tokio::sync::watch::Sender::new(0),
            hangup: tokio::sync::watch::Sender::new(0),
            expire: tokio::sync::watch::Sender::new(0),
            open_watches: AtomicUsize::new(0),
            started_watches: AtomicUsize::new(0),
        });
        let server = tokio::spawn(serve(listener, shared.clone()));
        Ok((
            Emulator {
                shared,
                addr,
                bind,
                server: Some(server),
            },
            addr,
        ))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates or replaces an object (anything serializing to a Service,
    /// EndpointSlice, Node or ServiceCIDR with `kind` set, such as k8s-openapi types or
    /// `serde_json::Value`). Namespaced objects without a namespace go to
    /// `default`. Returns the object's resourceVersion; re-applying an
    /// unchanged object is a no-op, as on a real API server.
    pub fn apply<T: Serialize>(&self, object: &T) -> Result<u64, EmulatorError> {
        let value = serde_json::to_value(object)?;
        let rv = self.shared.lock().apply(value)?;
        self.shared.notify();
        Ok(rv)
    }

    /// Makes the stored objects exactly `objects`: applies each (unchanged
    /// ones are no-ops) and deletes every stored object not among them.
    /// Nothing changes if any object is invalid.
    pub fn replace_all(&self, objects: &[Value]) -> Result<(), EmulatorError> {
        let mut st = self.shared.lock();
        let mut trial = store::State::new();
        let mut keep = std::collections::BTreeSet::new();
        for o in objects {
            trial.apply(o.clone())?;
        }
        keep.extend(trial.objects.into_keys());
        for o in objects {
            st.apply(o.clone())?;
        }
        let gone: Vec<_> = st
            .objects
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for (kind, ns, name) in gone {
            st.delete(kind, &ns, &name);
        }
        drop(st);
        self.shared.notify();
        Ok(())
    }

    /// Deletes an object (`namespace` is ignored for Nodes); returns the
    /// deletion's resourceVersion, or `None` if it did not exist.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        let rv = self.shared.lock().delete(kind, namespace, name);
        self.shared.notify();
        rv
    }

    /// The stored object, as the API would return it.
    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Answers every request with HTTP 500 for `duration` (open watches
    /// keep streaming; combine with [`Emulator::hang_up_watches`]).
    pub fn fail_for(&self, duration: Duration) {
        self.fail_with_for(500, duration);
    }

    /// Answers every request with HTTP 403 Forbidden for `duration`, as a
    /// freshly started API server does until its authorizer has loaded
    /// the RBAC objects.
    pub fn forbid_for(&self, duration: Duration) {
        self.fail_with_for(403, duration);
    }

    /// Answers every request with HTTP 503 Service Unavailable for
    /// `duration`: the API server is down, but the requests are counted
    /// (see [`Emulator::requests`]), which a stopped server cannot do.
    pub fn unavailable_for(&self, duration: Duration) {
        self.fail_with_for(503, duration);
    }

    fn fail_with_for(&self, code: u16, duration: Duration) {
        let mut st = self.shared.lock();
        st.fail_until = Some(Instant::now() + duration);
        st.fail_matching = None;
        st.fail_code = code;
    }

    /// Answers requests whose path contains `path_part` (such as
    /// `/nodes`) with HTTP 500 for `duration`; others are served.
    pub fn fail_matching_for(&self, path_part: &str, duration: Duration) {
        let mut st = self.shared.lock();
        st.fail_until = Some(Instant::now() + duration);
        st.fail_matching = Some(path_part.to_string());
        st.fail_code = 500;
    }

    /// Answers requests whose path contains `path_part` (such as
    /// `/servicecidrs`) only after `delay` (a slow list); a zero `delay`
    /// ends it.
    pub fn delay_matching(&self, path_part: &str, delay: Duration) {
        self.shared.lock().delay_matching =
            (!delay.is_zero()).then(|| (path_part.to_string(), delay));
    }

    /// Stops failing requests now.
    pub fn recover(&self) {
        self.shared.lock().fail_until = None;
    }

    /// Ends every open watch stream (cleanly, as on a server-side timeout).
    pub fn hang_up_watches(&self) {
        self.shared.hangup.send_modify(|g| *g += 1);
    }

    /// Sends every open watch a 410 Gone and ends it, and drops the whole
    /// history so resuming from any earlier resourceVersion is also 410:
    /// clients must list again.
    pub fn expire_watches(&self) {
        {
            let mut st = self.shared.lock();
            let limit = st.history_limit;
            st.trim_history(0);
            // Later changes are retained again.
            st.history_limit = limit;
        }
        self.shared.expire.send_modify(|g| *g += 1);
    }

    /// Forgets every unfinished paged list: continuing one is 410 Gone.
    pub fn expire_list_pages(&self) {
        self.shared.lock().pages.clear();
    }

    /// Keeps at most `limit` change events; a watch resuming from before
    /// the oldest retained one gets 410 Gone (0 drops all history).
    pub fn set_history_limit(&self, limit: usize) {
        self.shared.lock().trim_history(limit);
    }

    /// How often open watches that allow bookmarks get a BOOKMARK (1 s by default).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.lock().bookmark_interval = interval;
    }

    /// Turns the API server's `WatchList` feature gate on (the default) or
    /// off. Off, a streaming list (a watch with `sendInitialEvents`) is
    /// refused as kube-apiserver refuses it: HTTP 422 `Invalid`,
    /// "sendInitialEvents is forbidden for watch unless the WatchList
    /// feature gate is enabled"; paged lists are served either way.
    pub fn set_watch_list(&self, enabled: bool) {
        self.shared.lock().watch_list = enabled;
    }

    /// The number of watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// The number of watch streams started so far (open or not): after a
    /// hang-up, a client has reconnected once this grew.
    pub fn watches_started(&self) -> usize {
        self.shared.started_watches.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` watch streams are open; false on timeout.
    pub async fn wait_for_watches(&self, n: usize, timeout: Duration) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        while self.open_watches() < n {
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Every request so far, as `METHOD PATH?DECODED-QUERY`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Every request so far with the time it arrived.
    pub fn timed_requests(&self) -> Vec<(Instant, String)> {
        let st = self.shared.lock();
        st.request_times
            .iter()
            .copied()
            .zip(st.requests.iter().cloned())
            .collect()
    }

    /// Stops listening and closes every connection; the objects stay.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // Waiting for the task makes sure the listener is closed, so
            // that `restart` can bind the port again.
            let _ = server.await;
        }
    }

    /// Whether the server is running.
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Starts serving again on the same address after [`Emulator::stop`].
    pub async fn restart(&mut self) -> Result<(), EmulatorError> {
        self.stop().await;
        let listener = listen(&self.bind, self.addr)?;
        self.server = Some(tokio::spawn(serve(listener, self.shared.clone())));
        Ok(())
    }

    /// A kubeconfig (YAML) pointing at the emulator, without credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: emulator\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: emulator\n  user: {{}}\n\
             contexts:\n\
             - name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    namespace: default\n\
             current-context: emulator\n",
            url = self.url()
        )
    }

    /// Writes [`Emulator::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<(), EmulatorError> {
        std::fs::write(path, self.kubeconfig()).map_err(|source| EmulatorError::Write {
            path: path.display().to_string(),
            source,
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}
