//! The file source: Kubernetes YAML (a file or a directory), re-read when
//! it changes.
//!
//! Changes are found by polling: every [`POLL_INTERVAL`] the file list and
//! each file's contents are hashed. Polling (rather than inotify) works the
//! same for ConfigMap mounts (symlink swaps), editors that replace files,
//! and network file systems, and costs nothing at the sizes a person edits.
//! A file that does not parse (say, half-written) keeps the previous
//! snapshot and is retried on the next poll.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kproxy_graph::{Objects, Warning};

use crate::input;

/// How often files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Kubernetes objects read from files.
pub struct FileSource {
    path: PathBuf,
    /// Hash of the file list and contents of the current snapshot; `None`
    /// before the first successful read.
    hash: Option<u64>,
    /// The last read that failed, so it is logged once, not every poll.
    last_error: Option<String>,
    objects: Objects,
    warnings: Vec<Warning>,
    /// The first `changed` resolves at once with the initial state.
    delivered_initial: bool,
}

impl FileSource {
    /// A source reading `path` (a file or a directory).
    pub fn new(path: PathBuf) -> Self {
        FileSource {
            path,
            hash: None,
            last_error: None,
            objects: Objects::default(),
            warnings: Vec::new(),
            delivered_initial: false,
        }
    }

    /// The last read error, while it persists.
    pub fn error(&self) -> Option<String> {
        self.last_error.clone()
    }

    /// The path being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read everything now. Returns whether the content differs from the
    /// current snapshot.
    pub fn reload(&mut self) -> anyhow::Result<bool> {
        let files = input::input_files(std::slice::from_ref(&self.path))?;
        let mut texts = Vec::with_capacity(files.len());
        let mut h = DefaultHasher::new();
        for f in &files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))?;
            f.hash(&mut h);
            text.hash(&mut h);
            texts.push((f.display().to_string(), text));
        }
        let hash = h.finish();
        if self.hash == Some(hash) {
            return Ok(false);
        }
        let mut objects = Objects::default();
        let mut warnings = Vec::new();
        for (name, text) in &texts {
            warnings.extend(objects.add_yaml(name, text)?);
        }
        self.objects = objects;
        self.warnings = warnings;
        self.hash = Some(hash);
        Ok(true)
    }

    /// Resolves with the initial state, then whenever the files change.
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        if !self.delivered_initial {
            // The first read must succeed: starting from nothing would
            // program an empty ruleset.
            self.reload()?;
            if self.objects.services.is_empty() {
                // Legal (an empty cluster), but more often a wrong path:
                // the first sync would leave no Service reachable.
                tracing::warn!(source = %self.path.display(),
                    "the source holds no Services; every Service rule will be removed");
            }
            self.delivered_initial = true;
            return Ok(());
        }
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            match self.reload() {
                Ok(true) => {
                    self.last_error = None;
                    return Ok(());
                }
                Ok(false) => self.last_error = None,
                Err(e) => {
                    let msg = format!("{e:#}");
                    if self.last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(source = %self.path.display(), error = %msg,
                            "cannot read source; keeping the previous state");
                        self.last_error = Some(msg);
                    }
                }
            }
        }
    }

    /// The current objects.
    pub fn snapshot(&self) -> Objects {
        self.objects.clone()
    }

    /// Documents skipped while reading.
    pub fn warnings(&self) -> Vec<Warning> {
        self.warnings.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_notices_changes_and_keeps_state_on_bad_yaml() {
        let dir = std::env::temp_dir().join(format!("kproxy-filesrc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.yaml");
        let svc = |ip: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: n}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
            )
        };
        std::fs::write(&f, svc("10.0.0.1")).unwrap();
        let mut src = FileSource::new(dir.clone());
        assert!(src.reload().unwrap());
        assert!(!src.reload().unwrap(), "unchanged files are not a change");
        assert_eq!(src.snapshot().services.len(), 1);
        std::fs::write(&f, svc("10.0.0.2")).unwrap();
        assert!(src.reload().unwrap());
        std::fs::write(&f, "kind: Service\nmetadata: [unclosed").unwrap();
        assert!(src.reload().is_err());
        assert_eq!(src.snapshot().services.len(), 1, "previous state kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
