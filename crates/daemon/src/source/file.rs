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
    /// The objects of the last reading; `None` once handed over by
    /// [`FileSource::take_objects`] (the daemon's graph holds them then:
    /// at 50,000 Services one copy is ~270 MiB).
    objects: Option<Objects>,
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
            objects: None,
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
    ///
    /// The files are hashed first, one at a time, and parsed only when the
    /// hash changed; then read again and parsed one at a time, so at most
    /// one file's text is held beside the objects.
    pub fn reload(&mut self) -> anyhow::Result<bool> {
        let files = input::input_files(std::slice::from_ref(&self.path))?;
        let mut h = DefaultHasher::new();
        for f in &files {
            hash_file(&mut h, f, &read(f)?);
        }
        if self.hash == Some(h.finish()) {
            return Ok(false);
        }
        // The files may change between the two passes: the hash kept is
        // that of the text actually parsed.
        let mut h = DefaultHasher::new();
        let mut objects = Objects::default();
        let mut warnings = Vec::new();
        for f in &files {
            let text = read(f)?;
            hash_file(&mut h, f, &text);
            warnings.extend(objects.add_yaml(&f.display().to_string(), &text)?);
        }
        self.objects = Some(objects);
        self.warnings = warnings;
        self.hash = Some(h.finish());
        Ok(true)
    }

    /// Resolves with the initial state, then whenever the files change.
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        if !self.delivered_initial {
            // The first read must succeed: starting from nothing would
            // program an empty ruleset.
            self.reload()?;
            if self.objects.as_ref().is_some_and(|o| o.services.is_empty()) {
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

    /// A copy of the current objects. After [`FileSource::take_objects`]
    /// the files are read again (an unreadable file then gives no objects,
    /// logged).
    pub fn snapshot(&self) -> Objects {
        if let Some(o) = &self.objects {
            return o.clone();
        }
        let mut objects = Objects::default();
        let files = input::input_files(std::slice::from_ref(&self.path));
        let read_all = files.and_then(|files| {
            for f in &files {
                objects.add_yaml(&f.display().to_string(), &read(f)?)?;
            }
            Ok(())
        });
        if let Err(e) = read_all {
            tracing::error!(source = %self.path.display(), error = %format!("{e:#}"),
                "cannot read the source again");
        }
        objects
    }

    /// The objects read since the last call (the whole state, not a
    /// difference), moved out rather than copied; `None` when the files
    /// did not change since. For a caller that keeps the objects itself
    /// (the daemon's graph, through `Source::drain_into`): with
    /// [`FileSource::snapshot`] both would hold a copy.
    pub fn take_objects(&mut self) -> Option<Objects> {
        self.objects.take()
    }

    /// Documents skipped while reading.
    pub fn warnings(&self) -> Vec<Warning> {
        self.warnings.clone()
    }
}

fn read(f: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))
}

fn hash_file(h: &mut DefaultHasher, f: &Path, text: &str) {
    f.hash(h);
    text.hash(h);
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

    #[test]
    fn objects_are_handed_over_once_per_change() {
        let dir = std::env::temp_dir().join(format!("kproxy-filesrc-take-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.json");
        let list = |ips: &[&str]| {
            let items: Vec<String> = ips
                .iter()
                .enumerate()
                .map(|(i, ip)| format!(r#"{{"metadata":{{"name":"s{i}","namespace":"n"}},"spec":{{"clusterIP":"{ip}","ports":[{{"port":80}}]}}}}"#))
                .collect();
            format!(r#"{{"items":[{}],"kind":"ServiceList"}}"#, items.join(","))
        };
        std::fs::write(&f, list(&["10.0.0.1", "10.0.0.2"])).unwrap();
        let mut src = FileSource::new(dir.clone());
        assert!(src.reload().unwrap());
        assert_eq!(src.take_objects().map(|o| o.services.len()), Some(2));
        assert!(
            src.take_objects().is_none(),
            "nothing new since the last take"
        );
        // A copy is still available: the files are read again.
        assert_eq!(src.snapshot().services.len(), 2);
        assert!(!src.reload().unwrap());
        assert!(src.take_objects().is_none());
        std::fs::write(&f, list(&["10.0.0.1"])).unwrap();
        assert!(src.reload().unwrap());
        assert_eq!(src.take_objects().map(|o| o.services.len()), Some(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// ServiceCIDR objects in the files (YAML and JSON) reach the graph,
    /// and their changes are service-CIDR changes, not full syncs.
    #[test]
    fn service_cidrs_are_read_and_followed() {
        use kproxy_graph::{IncrementalGraph, IpFamily, ProxyConfig};

        let dir = std::env::temp_dir().join(format!("kproxy-filesrc-cidr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = dir.join("a.yaml");
        let json = dir.join("b.json");
        std::fs::write(
            &yaml,
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{port: 80}]\n---\napiVersion: networking.k8s.io/v1\nkind: ServiceCIDR\nmetadata: {name: kubernetes}\nspec: {cidrs: [10.96.0.0/16, 'fd00:96::/112']}\n",
        )
        .unwrap();
        std::fs::write(
            &json,
            r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": "extra"}, "spec": {"cidrs": ["10.100.0.0/16"]}}]}"#,
        )
        .unwrap();
        let mut source = super::super::Source::File(FileSource::new(dir.clone()));
        let super::super::Source::File(src) = &mut source else {
            unreachable!()
        };
        assert!(src.reload().unwrap());
        let mut graph = IncrementalGraph::new(ProxyConfig {
            node_name: "n".into(),
            ..Default::default()
        });
        let applied = source.drain_into(&mut graph);
        assert_eq!(applied.service_cidrs, 2);
        graph.update();
        let cidrs = |g: &IncrementalGraph, f: IpFamily| -> Vec<String> {
            g.graph().families[&f]
                .service_cidrs
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            cidrs(&graph, IpFamily::V4),
            ["10.96.0.0/16", "10.100.0.0/16"]
        );
        assert_eq!(cidrs(&graph, IpFamily::V6), ["fd00:96::/112"]);

        // The JSON file's ServiceCIDR goes.
        std::fs::write(
            &json,
            r#"{"apiVersion": "v1", "kind": "List", "items": []}"#,
        )
        .unwrap();
        let super::super::Source::File(src) = &mut source else {
            unreachable!()
        };
        assert!(src.reload().unwrap());
        let applied = source.drain_into(&mut graph);
        assert_eq!((applied.services, applied.service_cidrs), (0, 1));
        let up = graph.update();
        assert!(up.changes.service_cidrs_changed && !up.changes.needs_full_sync);
        assert_eq!(up.rebuilt, 0);
        assert_eq!(cidrs(&graph, IpFamily::V4), ["10.96.0.0/16"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
