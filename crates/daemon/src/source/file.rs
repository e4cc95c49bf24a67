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
use kproxy_graph::intake::compact::{CompactObjects, CompactService, CompactSlice};
use kproxy_graph::{IncrementalGraph, Objects, Warning};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;

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

impl From<CompactObjects> for FileObjects {
    fn from(o: CompactObjects) -> Self {
        FileObjects {
            services: o.services,
            slices: o.endpoint_slices,
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
        let order = kproxy_graph::input_files(std::slice::from_ref(&self.path))?;
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
            let (objects, warnings) = CompactObjects::from_yaml(&f.display().to_string(), &text)?;
            // The text is no longer needed: free it before the graph is built.
            drop(text);
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
                    None => kproxy_graph::is_input_name(&file),
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
mod tests;
