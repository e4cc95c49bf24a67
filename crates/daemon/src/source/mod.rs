//! Where the cluster state comes from.
//!
//! Every source has the same shape: [`Source::changed`] resolves when the
//! state changed since the last drain (the first time: when the initial
//! state is complete) and [`Source::drain_into`] hands the changes to the
//! [`IncrementalGraph`]: the API source only the objects its watch events
//! named, the file source its files' objects after a change (each file parsed
//! again only when its text changed). The reconcile loop
//! neither knows nor cares whether they came from the API server or from
//! files.

use kproxy_graph::IncrementalGraph;
use kproxy_graph::incremental::Applied;

pub mod file;
pub mod kube;

/// A source of Services, EndpointSlices and Nodes.
pub enum Source {
    /// Kubernetes YAML files (`--source PATH`).
    File(Box<file::FileSource>),
    /// The Kubernetes API server (`--source kube`).
    Kube(kube::KubeSource),
}

impl Source {
    /// Open the source named by `--source`: `kube` or a path.
    pub async fn open(spec: &str, opts: SourceOptions) -> anyhow::Result<Self> {
        if spec == "kube" {
            return Ok(Source::Kube(kube::KubeSource::new(opts).await?));
        }
        let path = std::path::PathBuf::from(spec);
        if !path.exists() {
            anyhow::bail!(
                "--source {spec}: no such file or directory (use `kube` for the API server)"
            );
        }
        Ok(Source::File(Box::new(file::FileSource::new(path))))
    }

    /// Resolves when the state changed since the last snapshot.
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        match self {
            Source::File(f) => f.changed().await,
            Source::Kube(k) => k.changed().await,
        }
    }

    /// A copy of the current objects (`kproxy diff`; the daemon drains
    /// changes instead).
    pub fn snapshot(&self) -> kproxy_graph::Objects {
        match self {
            Source::File(f) => f.snapshot(),
            Source::Kube(k) => k.snapshot(),
        }
    }

    /// Hand `graph` the changes since the last drain (and the source's
    /// own warnings); returns what really changed.
    pub fn drain_into(&mut self, graph: &mut IncrementalGraph) -> Applied {
        match self {
            // The files' objects, shared with the graph; only a changed
            // file was parsed again, and the graph compares the others'
            // objects by pointer.
            Source::File(f) => f.drain_into(graph),
            Source::Kube(k) => k.drain_into(graph),
        }
    }

    /// Problems the source has right now (API watch errors), for /status.
    pub fn errors(&self) -> Vec<String> {
        match self {
            Source::File(f) => f.error().into_iter().collect(),
            Source::Kube(k) => k.errors(),
        }
    }

    /// A short name for logs and /status.
    pub fn describe(&self) -> String {
        match self {
            Source::File(f) => format!("file:{}", f.path().display()),
            Source::Kube(_) => "kube".to_string(),
        }
    }
}

/// What the API source needs (the file source ignores it).
pub use kube::KubeSourceOptions as SourceOptions;

/// A change of one watcher's error: what the API source tells the daemon
/// the moment it happens, rather than at the next sync.
#[derive(Debug)]
pub struct ErrorUpdate<'a> {
    /// The kind the watcher watches (`EndpointSlice`).
    pub kind: &'a str,
    /// Its new error; `None`: the error is over.
    pub error: Option<&'a str>,
    /// Every watcher's current error, as [`Source::errors`] lists them.
    pub current: Vec<String>,
}

/// Where the API source reports [`ErrorUpdate`]s (called from its tasks).
#[derive(Clone)]
pub struct ErrorSink(std::sync::Arc<dyn Fn(&ErrorUpdate<'_>) + Send + Sync>);

impl ErrorSink {
    /// A sink that calls `f` with every update.
    pub fn new(f: impl Fn(&ErrorUpdate<'_>) + Send + Sync + 'static) -> Self {
        ErrorSink(std::sync::Arc::new(f))
    }

    /// Tell the sink about `update`.
    pub fn tell(&self, update: &ErrorUpdate<'_>) {
        (self.0)(update);
    }
}

impl std::fmt::Debug for ErrorSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ErrorSink")
    }
}
