//! Where the cluster state comes from.
//!
//! Every source has the same shape: [`Source::changed`] resolves when the
//! state changed since the last snapshot (the first time: when the initial
//! state is complete) and [`Source::snapshot`] returns the objects. The
//! reconcile loop neither knows nor cares whether they came from the API
//! server or from files.

use kproxy_graph::{Objects, Warning};

pub mod file;
pub mod kube;

/// A source of Services, EndpointSlices and Nodes.
pub enum Source {
    /// Kubernetes YAML files (`--source PATH`).
    File(file::FileSource),
    /// The Kubernetes API server (`--source kube`).
    Kube(kube::KubeSource),
}

impl Source {
    /// Open the source named by `--source`: `kube` or a path.
    pub async fn open(spec: &str, opts: SourceOptions) -> anyhow::Result<Self> {
        if spec == "kube" {
            let k = kube::KubeSource::new(kube::KubeSourceOptions {
                kubeconfig: opts.kubeconfig,
                node_name: opts.node_name,
                proxy_name: opts.proxy_name,
            })
            .await?;
            return Ok(Source::Kube(k));
        }
        let path = std::path::PathBuf::from(spec);
        if !path.exists() {
            anyhow::bail!(
                "--source {spec}: no such file or directory (use `kube` for the API server)"
            );
        }
        Ok(Source::File(file::FileSource::new(path)))
    }

    /// Resolves when the state changed since the last snapshot.
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        match self {
            Source::File(f) => f.changed().await,
            Source::Kube(k) => k.changed().await,
        }
    }

    /// The current objects.
    pub fn snapshot(&self) -> Objects {
        match self {
            Source::File(f) => f.snapshot(),
            Source::Kube(k) => k.snapshot(),
        }
    }

    /// Objects the source itself could not decode (a whole document that
    /// does not match its schema); the graph adds its own warnings.
    pub fn warnings(&self) -> Vec<Warning> {
        match self {
            Source::File(f) => f.warnings(),
            Source::Kube(_) => Vec::new(),
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
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// `--kubeconfig`.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// This node's name.
    pub node_name: String,
    /// `--proxy-name`.
    pub proxy_name: Option<String>,
}
