//! The file source: Kubernetes YAML (a file or a directory), re-read when
//! it changes, one file at a time.
//!
//! Each file keeps its own content hash and its own parsed objects; a
//! change to one file re-reads and re-parses that file alone, and the
//! objects of all files, in file order, are exactly what reading the whole
//! directory afresh gives ([`crate::input::load_objects`]).
//!
//! Changes are found two ways ([`WatchMode`]):
//! - **inotify** (the default on local file systems): a watch on the
//!   directory (or the file's directory) names the file that changed, and
//!   only that file is read again. A name that is not an input file (a
//!   ConfigMap volume's `..data` symlink, swapped atomically by the kubelet)
//!   re-reads the input files that are symlinks, since what they point at
//!   may have changed; the targets of symlinked files are watched too, so an
//!   in-place edit behind a symlink is seen. A full re-read every
//!   [`RESCAN_INTERVAL`] backs this up (a directory of the path replaced,
//!   say), hashing every file but parsing only those whose text changed.
//! - **polling** (network file systems such as NFS, CIFS or FUSE mounts,
//!   where inotify does not see changes made on other machines; where
//!   inotify cannot be set up; or `KPROXY_FILE_WATCH=poll`): every
//!   [`POLL_INTERVAL`] every file is read and hashed, and only the files
//!   whose text changed are parsed.
//!
//! A file that does not parse (say, half-written) keeps the previous state
//! of every file, and is retried on its next change.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kproxy_graph::incremental::Applied;
use kproxy_graph::intake::compact::{CompactService, CompactSlice};
use kproxy_graph::{IncrementalGraph, Objects, Warning};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use crate::input;

/// How often files are checked for changes when polling.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// With inotify, how often every file is hashed anyway.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(30);

/// With inotify, events are gathered until none came for this long (a
/// write is several events: truncate, writes, close), and at most for
/// [`SETTLE_MAX`].
const SETTLE: Duration = Duration::from_millis(5);
const SETTLE_MAX: Duration = Duration::from_millis(50);

/// The environment variable that chooses the [`WatchMode`].
pub const WATCH_ENV: &str = "KPROXY_FILE_WATCH";

/// How the file source finds changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify, unless the files are on a network or FUSE file system or
    /// inotify cannot be set up: then polling.
    Auto,
    /// inotify (falls back to polling, logged, if it cannot be set up).
    Notify,
    /// Polling every [`POLL_INTERVAL`].
    Poll,
}

impl WatchMode {
    /// The mode `KPROXY_FILE_WATCH` asks for (`auto`, `inotify`, `poll`);
    /// `Auto` when unset or unknown (logged).
    pub fn from_env() -> WatchMode {
        let Ok(v) = std::env::var(WATCH_ENV) else {
            return WatchMode::Auto;
        };
        match v.to_ascii_lowercase().as_str() {
            "" | "auto" => WatchMode::Auto,
            "inotify" | "notify" => WatchMode::Notify,
            "poll" => WatchMode::Poll,
            other => {
                tracing::warn!(
                    value = other,
                    "{WATCH_ENV} is not auto, inotify or poll; using auto"
                );
                WatchMode::Auto
            }
        }
    }
}

/// One file's objects, shared with the graph (no second copy). Services
/// and slices are kept in the graph's compact form, converted once when
/// the file is parsed.
#[derive(Debug, Default, Clone)]
struct FileObjects {
    services: Vec<Arc<CompactService>>,
    slices: Vec<Arc<CompactSlice>>,
    nodes: Vec<Arc<Node>>,
    cidrs: Vec<Arc<ServiceCIDR>>,
}

impl From<Objects> for FileObjects {
    fn from(o: Objects) -> Self {
        FileObjects {
            services: o
                .services
                .iter()
                .map(|s| Arc::new(CompactService::from(s)))
                .collect(),
            slices: o
                .endpoint_slices
                .iter()
                .map(|s| Arc::new(CompactSlice::from(s)))
                .collect(),
            nodes: o.nodes.into_iter().map(Arc::new).collect(),
            cidrs: o.service_cidrs.into_iter().map(Arc::new).collect(),
        }
    }
}

/// What is kept of one file.
#[derive(Debug, Clone)]
struct FileState {
    /// Hash of the text parsed.
    hash: u64,
    objects: FileObjects,
    warnings: Vec<Warning>,
}

/// Which files to read again.
#[derive(Debug, Default)]
struct Dirty {
    /// Every file.
    all: bool,
    /// The files that are symlinks (a name they may point through moved).
    symlinks: bool,
    /// These files.
    files: HashSet<PathBuf>,
}

impl Dirty {
    fn any(&self) -> bool {
        self.all || self.symlinks || !self.files.is_empty()
    }
}

/// Kubernetes objects read from files.
pub struct FileSource {
    path: PathBuf,
    mode: WatchMode,
    /// The input files in reading order, once read successfully.
    order: Vec<PathBuf>,
    files: HashMap<PathBuf, FileState>,
    /// A successful reading happened.
    loaded: bool,
    /// The files changed since the last [`FileSource::drain_into`].
    pending: bool,
    /// The last read that failed, so it is logged once, not every poll.
    last_error: Option<String>,
    /// The first `changed` resolves at once with the initial state.
    delivered_initial: bool,
    /// The inotify watches, in notify mode once set up.
    watcher: Option<Watcher>,
    /// How many files were parsed, in total (for the tests).
    parsed: usize,
}

impl FileSource {
    /// A source reading `path` (a file or a directory), finding changes as
    /// `KPROXY_FILE_WATCH` says ([`WatchMode::from_env`]).
    pub fn new(path: PathBuf) -> Self {
        Self::with_mode(path, WatchMode::from_env())
    }

    /// A source reading `path` that finds changes by `mode`.
    pub fn with_mode(path: PathBuf, mode: WatchMode) -> Self {
        FileSource {
            path,
            mode,
            order: Vec::new(),
            files: HashMap::new(),
            loaded: false,
            pending: false,
            last_error: None,
            delivered_initial: false,
            watcher: None,
            parsed: 0,
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

    /// Whether changes are found by inotify (once [`FileSource::changed`]
    /// set it up) rather than by polling.
    #[cfg(test)]
    pub fn notifies(&self) -> bool {
        self.watcher.is_some()
    }

    /// Read every file now (parsing those whose text changed). Returns
    /// whether anything differs from the current state.
    pub fn reload(&mut self) -> anyhow::Result<bool> {
        self.refresh(&Dirty {
            all: true,
            ..Dirty::default()
        })
    }

    /// Read the files `dirty` names again, and any file that appeared;
    /// forget files that are gone. Nothing is kept unless every file read
    /// and parsed.
    fn refresh(&mut self, dirty: &Dirty) -> anyhow::Result<bool> {
        let order = input::input_files(std::slice::from_ref(&self.path))?;
        let mut updates: Vec<(PathBuf, FileState)> = Vec::new();
        for f in &order {
            let again = dirty.all
                || !self.files.contains_key(f)
                || dirty.files.contains(f)
                || (dirty.symlinks && f.symlink_metadata().is_ok_and(|m| m.is_symlink()));
            if !again {
                continue;
            }
            let text = read(f)?;
            let hash = hash_text(&text);
            if self.files.get(f).is_some_and(|s| s.hash == hash) {
                continue;
            }
            let (objects, warnings) = Objects::from_yaml(&f.display().to_string(), &text)?;
            self.parsed += 1;
            updates.push((
                f.clone(),
                FileState {
                    hash,
                    objects: objects.into(),
                    warnings,
                },
            ));
        }
        let changed = !updates.is_empty() || order != self.order || !self.loaded;
        let keep: HashSet<&PathBuf> = order.iter().collect();
        self.files.retain(|f, _| keep.contains(f));
        self.files.extend(updates);
        self.order = order;
        self.loaded = true;
        self.pending |= changed;
        if changed && let Some(w) = &mut self.watcher {
            w.watch_symlinks(&self.order);
        }
        Ok(changed)
    }

    /// Resolves with the initial state, then whenever the files change.
    pub async fn changed(&mut self) -> anyhow::Result<()> {
        if !self.delivered_initial {
            // Watch first: a change during the first read is not missed.
            self.watcher = self.start_watching();
            // The first read must succeed: starting from nothing would
            // program an empty ruleset.
            self.reload()?;
            if self.files.values().all(|f| f.objects.services.is_empty()) {
                // Legal (an empty cluster), but more often a wrong path:
                // the first sync would leave no Service reachable.
                tracing::warn!(source = %self.path.display(),
                    "the source holds no Services; every Service rule will be removed");
            }
            self.delivered_initial = true;
            return Ok(());
        }
        loop {
            let dirty = match &mut self.watcher {
                Some(w) => match w.wait().await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(source = %self.path.display(), error = %e,
                            "inotify failed; polling every {POLL_INTERVAL:?} from now on");
                        self.watcher = None;
                        continue;
                    }
                },
                None => {
                    tokio::time::sleep(POLL_INTERVAL).await;
                    Dirty {
                        all: true,
                        ..Dirty::default()
                    }
                }
            };
            if !dirty.any() {
                continue;
            }
            match self.refresh(&dirty) {
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
                    // Read the failed file again on its next change, and
                    // the other changed files with it.
                    if let Some(w) = &mut self.watcher {
                        w.carry(dirty);
                    }
                }
            }
        }
    }

    /// Set up inotify as the mode says; `None`: poll.
    fn start_watching(&self) -> Option<Watcher> {
        let reason = match self.mode {
            WatchMode::Poll => {
                tracing::info!(source = %self.path.display(), "polling every {POLL_INTERVAL:?} ({WATCH_ENV}=poll)");
                return None;
            }
            WatchMode::Auto => network_fs(&self.path),
            WatchMode::Notify => None,
        };
        if let Some(fs) = reason {
            tracing::info!(source = %self.path.display(), file_system = fs,
                "on a network file system: polling every {POLL_INTERVAL:?}");
            return None;
        }
        match Watcher::new(&self.path) {
            Ok(w) => {
                tracing::debug!(source = %self.path.display(), "watching with inotify");
                Some(w)
            }
            Err(e) => {
                tracing::warn!(source = %self.path.display(), error = %e,
                    "cannot use inotify; polling every {POLL_INTERVAL:?}");
                None
            }
        }
    }

    /// The current objects, all files' in file order (what reading the
    /// files afresh gives).
    pub fn snapshot(&self) -> Objects {
        let mut o = Objects::default();
        for f in self.order.iter().filter_map(|p| self.files.get(p)) {
            let fo = &f.objects;
            o.services
                .extend(fo.services.iter().map(|s| s.to_service()));
            o.endpoint_slices
                .extend(fo.slices.iter().map(|s| s.to_slice()));
            o.nodes.extend(fo.nodes.iter().map(|n| (**n).clone()));
            o.service_cidrs
                .extend(fo.cidrs.iter().map(|c| (**c).clone()));
        }
        o
    }

    /// Hand `graph` the files' state when it changed since the last call
    /// (with the source's warnings); returns what really changed. The
    /// objects are shared with the graph, not copied, and the graph
    /// compares the unchanged files' objects by pointer.
    pub fn drain_into(&mut self, graph: &mut IncrementalGraph) -> Applied {
        graph.set_extra_warnings(self.warnings());
        if !self.pending {
            return Applied::default();
        }
        self.pending = false;
        let files: Vec<&FileObjects> = self
            .order
            .iter()
            .filter_map(|p| self.files.get(p).map(|f| &f.objects))
            .collect();
        fn all<T>(files: &[&FileObjects], get: fn(&FileObjects) -> &Vec<Arc<T>>) -> Vec<Arc<T>> {
            files.iter().flat_map(|f| get(f).iter().cloned()).collect()
        }
        // The order of `IncrementalGraph::replace_all`.
        let mut out = graph.replace_compact_slices(all(&files, |f| &f.slices));
        out.services = graph.replace_compact_services(all(&files, |f| &f.services));
        out.nodes = graph.replace_nodes(all(&files, |f| &f.nodes));
        out.service_cidrs = graph.replace_service_cidrs(all(&files, |f| &f.cidrs));
        out
    }

    /// Documents skipped while reading, all files' in file order.
    pub fn warnings(&self) -> Vec<Warning> {
        self.order
            .iter()
            .filter_map(|p| self.files.get(p))
            .flat_map(|f| f.warnings.iter().cloned())
            .collect()
    }
}

fn read(f: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("reading {}: {e}", f.display()))
}

fn hash_text(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The name of the network or FUSE file system `path` is on (inotify does
/// not see changes made elsewhere there), `None` for a local one.
fn network_fs(path: &Path) -> Option<&'static str> {
    let st = nix::sys::statfs::statfs(path).ok()?;
    // statfs(2) f_type values, from linux/magic.h.
    const NETWORK: &[(u32, &str)] = &[
        (0x6969, "nfs"),
        (0x517b, "smb"),
        (0xff53_4d42, "cifs"),
        (0xfe53_4d42, "smb2"),
        (0x0102_1997, "9p"),
        (0x6573_5546, "fuse"),
        (0x00c3_6400, "ceph"),
        (0x5346_414f, "afs"),
        (0x7375_7245, "coda"),
        (0x0116_1970, "gfs2"),
        (0x7461_636f, "ocfs2"),
        (0x0bd0_0bd0, "lustre"),
        (0x564c, "ncp"),
    ];
    // f_type is a C long holding a 32-bit magic.
    let magic = st.filesystem_type().0 as u64 & 0xffff_ffff;
    NETWORK
        .iter()
        .find(|(m, _)| u64::from(*m) == magic)
        .map(|(_, name)| *name)
}

/// The inotify descriptor, for tokio.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The watches of a file source.
struct Watcher {
    fd: AsyncFd<InotifyFd>,
    /// The directory watched (the path, or a file's directory).
    dir: PathBuf,
    dir_wd: Option<WatchDescriptor>,
    /// For a file source: the file's name in `dir`.
    only: Option<std::ffi::OsString>,
    /// Watches on the targets of symlinked files, and the files.
    targets: HashMap<WatchDescriptor, Vec<PathBuf>>,
    /// Files whose read failed, read again with the next change.
    carried: Dirty,
    next_rescan: tokio::time::Instant,
}

const DIR_EVENTS: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

const FILE_EVENTS: AddWatchFlags = AddWatchFlags::IN_MODIFY
    .union(AddWatchFlags::IN_CLOSE_WRITE)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

impl Watcher {
    fn new(path: &Path) -> anyhow::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let (dir, only) = if path.is_dir() {
            (path.to_path_buf(), None)
        } else {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (dir, path.file_name().map(ToOwned::to_owned))
        };
        // `AsyncFd::new` is deprecated for types that may close their
        // descriptor while registered; `InotifyFd` owns its descriptor and
        // is moved in, so it stays open until the AsyncFd is dropped
        // (`register`, the replacement, is `unsafe`).
        #[expect(deprecated, reason = "sound for an owned descriptor; see above")]
        let fd = AsyncFd::new(InotifyFd(inotify))?;
        let mut w = Watcher {
            fd,
            dir,
            dir_wd: None,
            only,
            targets: HashMap::new(),
            carried: Dirty::default(),
            next_rescan: tokio::time::Instant::now() + RESCAN_INTERVAL,
        };
        w.watch_dir()?;
        Ok(w)
    }

    fn inotify(&self) -> &Inotify {
        &self.fd.get_ref().0
    }

    /// (Re-)watch the directory: a directory replaced on the path is
    /// watched anew.
    fn watch_dir(&mut self) -> anyhow::Result<()> {
        let wd = self
            .inotify()
            .add_watch(&self.dir, DIR_EVENTS | AddWatchFlags::IN_ONLYDIR)?;
        self.dir_wd = Some(wd);
        Ok(())
    }

    /// Watch what the symlinked input files point at (an in-place edit
    /// there raises no event in the directory); drop watches no longer
    /// needed. Regular files are covered by the directory's watch.
    fn watch_symlinks(&mut self, files: &[PathBuf]) {
        let mut targets: HashMap<WatchDescriptor, Vec<PathBuf>> = HashMap::new();
        for f in files {
            if !f.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
                continue;
            }
            // add_watch follows the symlink.
            match self.inotify().add_watch(f, FILE_EVENTS) {
                Ok(wd) => targets.entry(wd).or_default().push(f.clone()),
                Err(e) => tracing::debug!(file = %f.display(), error = %e, "cannot watch"),
            }
        }
        for wd in self.targets.keys() {
            if !targets.contains_key(wd) && Some(*wd) != self.dir_wd {
                // Gone with its file, or no longer an input's target.
                let _ = self.inotify().rm_watch(*wd);
            }
        }
        self.targets = targets;
    }

    /// Files to read again after a failed read, with the next change.
    fn carry(&mut self, dirty: Dirty) {
        self.carried.all |= dirty.all;
        self.carried.symlinks |= dirty.symlinks;
        self.carried.files.extend(dirty.files);
    }

    /// Wait for changes; what to read again.
    async fn wait(&mut self) -> anyhow::Result<Dirty> {
        let mut dirty = std::mem::take(&mut self.carried);
        tokio::select! {
            ready = self.fd.readable() => {
                let mut guard = ready?;
                let events = match guard.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                    Ok(events) => events?,
                    Err(_would_block) => Vec::new(),
                };
                self.classify(&events, &mut dirty)?;
            }
            () = tokio::time::sleep_until(self.next_rescan) => {
                dirty.all = true;
            }
        }
        // Let a write finish: gather events until they stop.
        let settle_until = tokio::time::Instant::now() + SETTLE_MAX;
        while dirty.any() && tokio::time::Instant::now() < settle_until {
            tokio::time::sleep(SETTLE).await;
            let events = match self.inotify().read_events() {
                Ok(e) => e,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            };
            if events.is_empty() {
                break;
            }
            self.classify(&events, &mut dirty)?;
        }
        if dirty.all {
            self.next_rescan = tokio::time::Instant::now() + RESCAN_INTERVAL;
        }
        Ok(dirty)
    }

    /// What `events` ask to read again.
    fn classify(&mut self, events: &[InotifyEvent], dirty: &mut Dirty) -> anyhow::Result<()> {
        for ev in events {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                dirty.all = true;
                continue;
            }
            if Some(ev.wd) == self.dir_wd {
                let Some(name) = &ev.name else {
                    // The directory itself moved or went: watch the path
                    // again (it may hold a new directory) and read it all.
                    if ev.mask.intersects(
                        AddWatchFlags::IN_DELETE_SELF
                            | AddWatchFlags::IN_MOVE_SELF
                            | AddWatchFlags::IN_IGNORED,
                    ) {
                        self.dir_wd = None;
                        let _ = self.watch_dir();
                        dirty.all = true;
                    }
                    continue;
                };
                let file = self.dir.join(name);
                let input = match &self.only {
                    Some(only) => only == name,
                    None => input::is_input_name(&file),
                };
                if input {
                    dirty.files.insert(file);
                } else {
                    // `..data` swapped, or any other name a symlinked
                    // input may point through.
                    dirty.symlinks = true;
                }
                continue;
            }
            if let Some(files) = self.targets.get(&ev.wd) {
                dirty.files.extend(files.iter().cloned());
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.targets.remove(&ev.wd);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kproxy_graph::{IpFamily, ProxyConfig};
    use proptest::prelude::*;

    /// A fresh directory under the system's temporary directory.
    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kproxy-filesrc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn svc(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: n}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n"
        )
    }

    fn names(o: &Objects) -> Vec<String> {
        o.services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    fn cluster_ip(o: &Objects, name: &str) -> Option<String> {
        o.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
    }

    /// `changed()` resolves within `secs` (a hang fails the test).
    async fn changed_within(src: &mut FileSource, secs: u64) {
        tokio::time::timeout(Duration::from_secs(secs), src.changed())
            .await
            .expect("the change was seen in time")
            .expect("the files read");
    }

    #[test]
    fn reload_notices_changes_and_keeps_state_on_bad_yaml() {
        let dir = temp_dir("reload");
        let f = dir.join("a.yaml");
        std::fs::write(&f, svc("s", "10.0.0.1")).unwrap();
        let mut src = FileSource::with_mode(dir.clone(), WatchMode::Poll);
        assert!(src.reload().unwrap());
        assert!(!src.reload().unwrap(), "unchanged files are not a change");
        assert_eq!(src.snapshot().services.len(), 1);
        std::fs::write(&f, svc("s", "10.0.0.2")).unwrap();
        assert!(src.reload().unwrap());
        std::fs::write(&f, "kind: Service\nmetadata: [unclosed").unwrap();
        std::fs::write(dir.join("b.yaml"), svc("t", "10.0.0.3")).unwrap();
        assert!(src.reload().is_err());
        let snap = src.snapshot();
        assert_eq!(names(&snap), ["s"], "previous state of every file kept");
        assert_eq!(cluster_ip(&snap, "s").as_deref(), Some("10.0.0.2"));
        std::fs::write(&f, svc("s", "10.0.0.4")).unwrap();
        assert!(src.reload().unwrap());
        assert_eq!(names(&src.snapshot()), ["s", "t"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn objects_are_handed_over_once_per_change() {
        let dir = temp_dir("drain");
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
        let mut src = FileSource::with_mode(dir.clone(), WatchMode::Poll);
        let mut graph = IncrementalGraph::new(ProxyConfig {
            node_name: "n".into(),
            ..Default::default()
        });
        assert!(src.reload().unwrap());
        assert_eq!(src.drain_into(&mut graph).services, 2);
        assert_eq!(
            src.drain_into(&mut graph).services,
            0,
            "nothing new since the last drain"
        );
        assert!(!src.reload().unwrap());
        assert_eq!(src.drain_into(&mut graph).services, 0);
        std::fs::write(&f, list(&["10.0.0.1"])).unwrap();
        assert!(src.reload().unwrap());
        assert_eq!(src.drain_into(&mut graph).services, 1, "one Service went");
        assert_eq!(src.snapshot().services.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// ServiceCIDR objects in the files (YAML and JSON) reach the graph,
    /// and their changes are service-CIDR changes, not full syncs.
    #[test]
    fn service_cidrs_are_read_and_followed() {
        let dir = temp_dir("cidr");
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
        let mut source =
            super::super::Source::File(FileSource::with_mode(dir.clone(), WatchMode::Poll));
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

    /// With inotify, a change to the small file re-reads and re-parses it
    /// alone, not the large file beside it.
    #[tokio::test(flavor = "current_thread")]
    async fn inotify_reparses_only_the_changed_file() {
        let dir = temp_dir("notify");
        let big: String = (0..300)
            .map(|i| {
                format!(
                    "---\n{}",
                    svc(
                        &format!("big-{i}"),
                        &format!("10.1.{}.{}", i / 250, i % 250 + 1)
                    )
                )
            })
            .collect();
        std::fs::write(dir.join("big.yaml"), big).unwrap();
        std::fs::write(dir.join("small.yaml"), svc("small", "10.0.0.1")).unwrap();
        let mut src = FileSource::with_mode(dir.clone(), WatchMode::Notify);
        changed_within(&mut src, 10).await;
        assert!(src.notifies(), "inotify is in use");
        assert_eq!(src.parsed, 2);
        std::fs::write(dir.join("small.yaml"), svc("small", "10.0.0.2")).unwrap();
        changed_within(&mut src, 10).await;
        assert_eq!(src.parsed, 3, "only the changed file was parsed again");
        let snap = src.snapshot();
        assert_eq!(snap.services.len(), 301);
        assert_eq!(cluster_ip(&snap, "small").as_deref(), Some("10.0.0.2"));
        // A new file, then a file removed.
        std::fs::write(dir.join("new.json"), r#"{"kind":"Service","metadata":{"name":"new","namespace":"n"},"spec":{"clusterIP":"10.0.0.9","ports":[{"port":80}]}}"#).unwrap();
        changed_within(&mut src, 10).await;
        assert_eq!(src.parsed, 4);
        assert_eq!(src.snapshot().services.len(), 302);
        std::fs::remove_file(dir.join("small.yaml")).unwrap();
        changed_within(&mut src, 10).await;
        assert_eq!(src.parsed, 4, "a removal parses nothing");
        assert_eq!(cluster_ip(&src.snapshot(), "small"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A ConfigMap volume as the kubelet writes it: each key a symlink
    /// through `..data` to a timestamped directory; an update writes a new
    /// directory and swaps `..data` to it with one rename.
    #[tokio::test(flavor = "current_thread")]
    async fn configmap_symlink_swap_is_seen_by_inotify() {
        let dir = temp_dir("configmap");
        let write_version = |v: &str, ip: &str| {
            let d = dir.join(format!("..2026_12_07_{v}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("services.yaml"), svc("cm", ip)).unwrap();
            std::os::unix::fs::symlink(format!("..2026_12_07_{v}"), dir.join("..data_tmp"))
                .unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        };
        write_version("01", "10.0.0.1");
        std::os::unix::fs::symlink("..data/services.yaml", dir.join("services.yaml")).unwrap();
        let mut src = FileSource::with_mode(dir.clone(), WatchMode::Notify);
        changed_within(&mut src, 10).await;
        assert!(src.notifies(), "inotify is in use");
        assert_eq!(
            cluster_ip(&src.snapshot(), "cm").as_deref(),
            Some("10.0.0.1")
        );

        write_version("02", "10.0.0.2");
        std::fs::remove_dir_all(dir.join("..2026_12_07_01")).unwrap();
        // Well inside the full re-read's interval: inotify saw it.
        changed_within(&mut src, 5).await;
        assert_eq!(
            cluster_ip(&src.snapshot(), "cm").as_deref(),
            Some("10.0.0.2")
        );

        // And again: the watches follow the new targets.
        write_version("03", "10.0.0.3");
        std::fs::remove_dir_all(dir.join("..2026_12_07_02")).unwrap();
        changed_within(&mut src, 5).await;
        assert_eq!(
            cluster_ip(&src.snapshot(), "cm").as_deref(),
            Some("10.0.0.3")
        );

        // An in-place edit of the target behind the symlink.
        std::fs::write(
            dir.join("..2026_12_07_03/services.yaml"),
            svc("cm", "10.0.0.4"),
        )
        .unwrap();
        changed_within(&mut src, 5).await;
        assert_eq!(
            cluster_ip(&src.snapshot(), "cm").as_deref(),
            Some("10.0.0.4")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Forced polling (what a network file system gets) sees edits, new
    /// files, a symlink swap and removals, without inotify.
    #[tokio::test(flavor = "current_thread")]
    async fn forced_polling_sees_changes() {
        let dir = temp_dir("poll");
        std::fs::write(dir.join("a.yaml"), svc("a", "10.0.0.1")).unwrap();
        std::fs::create_dir(dir.join("v1")).unwrap();
        std::fs::write(dir.join("v1/b.yaml"), svc("b", "10.0.0.2")).unwrap();
        std::os::unix::fs::symlink("v1/b.yaml", dir.join("b.yaml")).unwrap();
        let mut src = FileSource::with_mode(dir.clone(), WatchMode::Poll);
        changed_within(&mut src, 10).await;
        assert!(!src.notifies(), "polling, not inotify");
        assert_eq!(names(&src.snapshot()), ["a", "b"]);

        std::fs::write(dir.join("a.yaml"), svc("a", "10.0.0.3")).unwrap();
        changed_within(&mut src, 5).await;
        assert_eq!(
            cluster_ip(&src.snapshot(), "a").as_deref(),
            Some("10.0.0.3")
        );
        assert_eq!(src.parsed, 3, "only the changed file was parsed again");

        std::fs::create_dir(dir.join("v2")).unwrap();
        std::fs::write(dir.join("v2/b.yaml"), svc("b", "10.0.0.4")).unwrap();
        std::os::unix::fs::symlink("v2/b.yaml", dir.join("b.tmp")).unwrap();
        std::fs::rename(dir.join("b.tmp"), dir.join("b.yaml")).unwrap();
        changed_within(&mut src, 5).await;
        assert_eq!(
            cluster_ip(&src.snapshot(), "b").as_deref(),
            Some("10.0.0.4")
        );

        std::fs::remove_file(dir.join("a.yaml")).unwrap();
        changed_within(&mut src, 5).await;
        assert_eq!(names(&src.snapshot()), ["b"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One file's content in the property test: Services and slices from
    /// a small pool of names (so files repeat each other's objects), an
    /// object of another kind and an empty document (warnings).
    fn file_text(seed: &[u8]) -> String {
        let mut out = String::new();
        for (i, b) in seed.iter().enumerate() {
            let name = format!("s{}", b % 6);
            match b % 5 {
                0 | 1 => out += &format!("---\n{}", svc(&name, &format!("10.0.{}.{}", i, b))),
                2 => {
                    out += &format!(
                        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata:\n  name: {name}-x\n  namespace: n\n  labels: {{kubernetes.io/service-name: {name}}}\nendpoints:\n- addresses: [10.1.{i}.{b}]\n  conditions: {{ready: true}}\nports: [{{port: 8080}}]\n"
                    )
                }
                3 => {
                    out +=
                        &format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{b}}}\n")
                }
                _ => out += "---\n",
            }
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(usize, Vec<u8>),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..4usize, proptest::collection::vec(any::<u8>(), 0..6))
                .prop_map(|(f, s)| Op::Write(f, s)),
            1 => (0..4usize).prop_map(Op::Remove),
        ]
    }

    const FILES: [&str; 4] = ["a.yaml", "b.yml", "c.json", "d.yaml"];

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("KPROXY_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
            ..ProptestConfig::default()
        })]

        /// After any sequence of edits, additions and removals, each read
        /// again the way inotify (that file) or polling (every file) would,
        /// the source's objects and warnings equal a fresh read of the
        /// directory, and the graph fed from it equals one fed that read.
        #[test]
        fn per_file_reading_equals_a_fresh_read(
            ops in proptest::collection::vec((op(), any::<bool>()), 1..24),
        ) {
            let dir = temp_dir("prop");
            let config = ProxyConfig { node_name: "n".into(), ..Default::default() };
            let mut src = FileSource::with_mode(dir.clone(), WatchMode::Poll);
            let mut graph = IncrementalGraph::new(config.clone());
            src.reload().unwrap();
            for (op, whole) in ops {
                let file = match &op {
                    Op::Write(f, _) | Op::Remove(f) => dir.join(FILES[*f]),
                };
                match op {
                    // JSON files hold YAML too: the reader takes either.
                    Op::Write(_, seed) => std::fs::write(&file, file_text(&seed)).unwrap(),
                    Op::Remove(_) => { let _ = std::fs::remove_file(&file); }
                }
                if whole {
                    src.reload().unwrap();
                } else {
                    src.refresh(&Dirty { files: [file].into(), ..Dirty::default() }).unwrap();
                }
                let (fresh, fresh_warnings) = input::load_objects(std::slice::from_ref(&dir)).unwrap();
                let mine = src.snapshot();
                // Services and slices are kept in compact form: compare
                // with the fresh reading's objects in the same form.
                let services: Vec<_> =
                    fresh.services.iter().map(|s| CompactService::from(s).to_service()).collect();
                let slices: Vec<_> =
                    fresh.endpoint_slices.iter().map(|s| CompactSlice::from(s).to_slice()).collect();
                prop_assert_eq!(&mine.services, &services);
                prop_assert_eq!(&mine.endpoint_slices, &slices);
                prop_assert_eq!(&mine.nodes, &fresh.nodes);
                prop_assert_eq!(&mine.service_cidrs, &fresh.service_cidrs);
                prop_assert_eq!(&src.warnings(), &fresh_warnings);
                src.drain_into(&mut graph);
                graph.update();
                // What the whole reading handed the graph before.
                let mut want = IncrementalGraph::new(config.clone());
                want.set_extra_warnings(fresh_warnings);
                want.replace_all(fresh);
                want.update();
                prop_assert_eq!(&**graph.graph(), &**want.graph());
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
