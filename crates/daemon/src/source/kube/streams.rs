//! The kube source's watches: one task a kind that follows the API
//! server's list and watch into a store of the objects kept, keyed by
//! their names, and wakes the source when one changes.

use super::*;

/// An object's identity: `(namespace, name)`, the namespace empty for
/// cluster-scoped kinds.
pub(super) type Key = (String, String);

pub(super) fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// What a kept object is found by: its `(namespace, name)` as
/// [`key_of`] reads them from its metadata (the namespace empty for
/// cluster-scoped kinds).
pub(super) trait Keyed {
    fn key(&self) -> (&str, &str);
}

impl Keyed for CompactService {
    fn key(&self) -> (&str, &str) {
        (
            self.namespace.as_deref().unwrap_or_default(),
            self.name.as_deref().unwrap_or_default(),
        )
    }
}

impl Keyed for CompactSlice {
    fn key(&self) -> (&str, &str) {
        (
            self.namespace.as_deref().unwrap_or_default(),
            self.name.as_deref().unwrap_or_default(),
        )
    }
}

pub(super) fn meta_key(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

impl Keyed for Node {
    fn key(&self) -> (&str, &str) {
        meta_key(&self.metadata)
    }
}

impl Keyed for ServiceCIDR {
    fn key(&self) -> (&str, &str) {
        meta_key(&self.metadata)
    }
}

/// One watcher's objects, as the source keeps them: found by the
/// namespace and name each holds, with no copy of them as keys.
pub(super) struct Kept<T> {
    pub(super) objects: ByName<T>,
    /// A list in progress: it replaces `objects` once complete, so a
    /// relist never shows a half-empty cluster.
    listing: Option<ByName<T>>,
}

impl<T: Keyed> Default for Kept<T> {
    fn default() -> Self {
        Kept {
            objects: ByName::new(T::key),
            listing: None,
        }
    }
}

/// A watcher's store, shared by its task and the source.
pub(super) type Store<T> = Arc<Mutex<Kept<T>>>;

/// Start watcher `index` on every `K` (`config` selecting): its store and
/// its task. `keep` turns each object into what the store holds, as it
/// arrives.
pub(super) fn spawn_watcher<K, T>(
    client: &Client,
    config: watcher::Config,
    index: usize,
    shared: &Arc<Watchers>,
    keep: fn(K) -> T,
) -> (Store<T>, JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    T: Keyed + Send + Sync + 'static,
{
    let api = Api::<K>::all(client.clone());
    let shared = shared.clone();
    lock(&shared.paths).push((api.resource_url().to_string(), index));
    let store: Store<T> = Arc::default();
    let kept = store.clone();
    let kind = KINDS[index];
    let task = tokio::spawn(async move {
        loop {
            let streaming = shared.lists.streaming();
            // No `StreamBackoff`: it resets on every `Ok` item, and the
            // watcher emits one before each list. `follow` paces instead:
            // the stream makes no request while it is not polled.
            let config = if streaming {
                config.clone().streaming_lists()
            } else {
                config.clone().page_size(PAGE_SIZE)
            };
            let stream = watcher(api.clone(), config).modify(strip_unused_metadata);
            match follow(stream, index, &shared, &kept, keep, streaming).await {
                Followed::Refused(e) => {
                    shared.lists.refused(kind, &e);
                }
                Followed::Ended => break,
            }
        }
        shared
            .status
            .send_modify(|s| s.ended = Some(format!("the {kind} watcher stopped")));
    });
    (store, task)
}

/// How [`follow`] ended.
pub(super) enum Followed {
    /// The API server refused the streaming list: list in pages instead.
    Refused(watcher::Error),
    /// The stream ended (a bug: a watcher's stream does not end).
    Ended,
}

/// Feed watcher `index`'s events into its store until the stream ends, or
/// until the API server refuses a streaming list (`streaming`).
pub(super) async fn follow<K, T>(
    stream: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>>,
    index: usize,
    shared: &Watchers,
    kept: &Mutex<Kept<T>>,
    keep: fn(K) -> T,
    streaming: bool,
) -> Followed
where
    K: Resource,
    T: Keyed,
{
    let kind = KINDS[index];
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        // The store is changed first and the key recorded after, so a
        // drain that reads the store before the key is recorded sees it
        // again next time.
        match event {
            Ok(watcher::Event::Apply(obj)) => {
                let key = key_of(obj.meta());
                let value = Arc::new(keep(obj));
                lock(kept).objects.insert(value);
                changed(shared, index, key);
            }
            Ok(watcher::Event::Delete(obj)) => {
                let key = key_of(obj.meta());
                lock(kept).objects.remove(&key.0, &key.1);
                changed(shared, index, key);
            }
            Ok(watcher::Event::Init) => {
                lock(kept).listing = Some(ByName::new(T::key));
            }
            Ok(watcher::Event::InitApply(obj)) => {
                let value = Arc::new(keep(obj));
                lock(kept)
                    .listing
                    .get_or_insert_with(|| ByName::new(T::key))
                    .insert(value);
            }
            Ok(watcher::Event::InitDone) => {
                tracing::debug!(kind, streaming, "list complete");
                if streaming {
                    shared.lists.served();
                }
                {
                    let mut k = lock(kept);
                    k.objects = k.listing.take().unwrap_or_else(|| ByName::new(T::key));
                }
                {
                    let mut p = lock(&shared.pending);
                    p.all[index] = true;
                    p.keys[index].clear();
                }
                shared.status.send_modify(|s| {
                    s.generation += 1;
                    s.ready[index] = true;
                });
                shared.set_error(index, None);
            }
            Err(e) if streaming && refuses_streaming(&e) => {
                lock(kept).listing = None;
                return Followed::Refused(e);
            }
            Err(e) => {
                let failure = classify(&e);
                let retry = lock(&shared.backoff[index]).on_error(failure, Instant::now());
                let retry_in = retry.delay;
                if failure == Failure::Gone && retry.quiet {
                    tracing::info!(kind, error = %e, "watch too far behind; listing again");
                } else {
                    if retry.quiet {
                        tracing::debug!(kind, error = %e, ?retry_in, "API watch failed (the API server may be starting); retrying");
                    } else {
                        tracing::warn!(kind, error = %e, ?retry_in, "API watch failed; retrying");
                    }
                    shared.set_error(index, Some(e.to_string()));
                }
                if !retry_in.is_zero() {
                    tokio::time::sleep(retry_in).await;
                }
            }
        }
    }
    Followed::Ended
}

/// Whether `e` is the API server refusing a streaming list: the request
/// itself answered 422 Invalid (kube-apiserver with its `WatchList`
/// feature gate off: "sendInitialEvents is forbidden for watch unless the
/// WatchList feature gate is enabled"; servers older than 1.27: "
/// resourceVersionMatch is forbidden for watch") or 400 Bad Request. Any
/// other error (the server down, 403, 5xx) says nothing about streaming
/// lists and is retried as it is.
pub(super) fn refuses_streaming(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 422 || s.code == 400)
}

/// Record that watcher `index` changed the object `key`.
pub(super) fn changed(shared: &Watchers, index: usize, key: Key) {
    lock(&shared.pending).keys[index].insert(key);
    shared.status.send_modify(|s| s.generation += 1);
    shared.set_error(index, None);
}

/// The annotation `kubectl apply` keeps a whole copy of the object in.
pub(super) const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the graph never reads and can be most of an object's size
/// (managedFields, kubectl's last-applied copy), for the kinds kept whole
/// (this Node, the ServiceCIDRs).
pub(super) fn strip_unused_metadata<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}
