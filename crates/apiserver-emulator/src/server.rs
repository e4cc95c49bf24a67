//! The HTTP side: routing, LIST, GET, WATCH and discovery.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Change, EventType};
use crate::{Kind, Shared};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A `Status` object as the API server returns for errors.
pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(code, &status(code.as_u16(), reason, message))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Default)]
struct Query {
    label_selector: String,
    field_selector: String,
    watch: bool,
    resource_version: Option<String>,
    bookmarks: bool,
    timeout: Option<u64>,
    limit: Option<usize>,
    continue_token: Option<String>,
    /// `sendInitialEvents`, when given (`false` is not the same as absent).
    send_initial_events: Option<bool>,
    resource_version_match: Option<String>,
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        match k {
            "labelSelector" => out.label_selector = v,
            "fieldSelector" => out.field_selector = v,
            "watch" => out.watch = v == "true" || v == "1",
            "resourceVersion" => out.resource_version = Some(v),
            "allowWatchBookmarks" => out.bookmarks = v == "true",
            "timeoutSeconds" => out.timeout = v.parse().ok(),
            "limit" => out.limit = v.parse().ok().filter(|l| *l > 0),
            "sendInitialEvents" => out.send_initial_events = Some(v == "true"),
            "resourceVersionMatch" => {
                out.resource_version_match = Some(v).filter(|m| !m.is_empty())
            }
            "continue" => out.continue_token = Some(v).filter(|c| !c.is_empty()),
            _ => {}
        }
    }
    out
}

/// The checks of kube-apiserver's `ValidateListOptions`
/// (k8s.io/apimachinery `pkg/apis/meta/internalversion/validation`) on the
/// parameters the emulator reads: the field errors, as the server words
/// them. `watch_list` is the API server's `WatchList` feature gate.
fn validate(q: &Query, watch_list: bool) -> Vec<String> {
    let mut errs = Vec::new();
    let not_older = "NotOlderThan";
    let matching = q.resource_version_match.as_deref();
    if !q.watch {
        if let Some(m) = matching {
            if q.resource_version.as_deref().unwrap_or("").is_empty() {
                errs.push("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided".to_string());
            }
            if m != "Exact" && m != not_older {
                errs.push(format!("resourceVersionMatch: Unsupported value: {m:?}: supported values: \"Exact\", \"NotOlderThan\", \"\""));
            }
        }
        if q.send_initial_events.is_some() {
            errs.push(
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list".to_string(),
            );
        }
        return errs;
    }
    if q.send_initial_events.is_some() {
        if matching != Some(not_older) {
            errs.push(format!("resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to {not_older}"));
        }
        if !watch_list {
            errs.push("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled".to_string());
        }
    }
    if let Some(m) = matching {
        if q.send_initial_events.is_none() {
            errs.push("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided".to_string());
        }
        if m != not_older {
            errs.push(format!(
                "resourceVersionMatch: Unsupported value: {m:?}: supported values: \"NotOlderThan\""
            ));
        }
    }
    errs
}

/// The 422 the API server answers invalid list options with
/// (`errors.NewInvalid` of a `ListOptions.meta.k8s.io`).
fn invalid_options(errs: &[String]) -> Response<Body> {
    let list = match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let mut body = status(
        422,
        "Invalid",
        &format!("ListOptions.meta.k8s.io \"\" is invalid: {list}"),
    );
    body["details"] = json!({
        "group": "meta.k8s.io",
        "kind": "ListOptions",
        "causes": errs.iter().map(|e| {
            let (field, message) = e.split_once(": ").unwrap_or(("", e));
            json!({"reason": if message.starts_with("Unsupported") { "FieldValueNotSupported" } else { "FieldValueForbidden" },
                   "message": message, "field": field})
        }).collect::<Vec<_>>(),
    });
    full(StatusCode::UNPROCESSABLE_ENTITY, &body)
}

/// What a path names.
enum Target {
    Collection(Kind, Option<String>),
    Object(Kind, String, String),
    Discovery(Value),
}

/// The `APIResourceList` of a group version serving one read-only
/// resource, or several: `(plural, singular, kind, namespaced, short names)`.
fn resource_list(group_version: &str, resources: &[(&str, &str, &str, bool, &[&str])]) -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources.iter().map(|(name, singular, kind, namespaced, short)| json!({
            "name": name, "singularName": singular, "namespaced": namespaced, "kind": kind,
            "verbs": ["get", "list", "watch"], "shortNames": short,
        })).collect::<Vec<_>>(),
    })
}

fn route(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let kind_of = |group: &[&str], resource: &str| -> Option<Kind> {
        match (group, resource) {
            (["api", "v1"], "services") => Some(Kind::Service),
            (["api", "v1"], "nodes") => Some(Kind::Node),
            (["apis", "discovery.k8s.io", "v1"], "endpointslices") => Some(Kind::EndpointSlice),
            (["apis", "networking.k8s.io", "v1"], "servicecidrs") => Some(Kind::ServiceCidr),
            _ => None,
        }
    };
    let (group, rest) = match segs.as_slice() {
        ["version"] => {
            return Some(Target::Discovery(json!({
                "major": "1", "minor": "34", "gitVersion": "v1.34.0-kproxy-emulator",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                "platform": "linux/amd64"
            })));
        }
        ["api"] => {
            return Some(Target::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
            })));
        }
        ["apis"] => {
            return Some(Target::Discovery(json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": [{"name": "discovery.k8s.io",
                    "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}},
                    {"name": "networking.k8s.io",
                    "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"}}]
            })));
        }
        ["api", "v1"] => {
            return Some(Target::Discovery(resource_list(
                "v1",
                &[
                    ("services", "service", "Service", true, &["svc"]),
                    ("nodes", "node", "Node", false, &["no"]),
                ],
            )));
        }
        ["apis", "discovery.k8s.io", "v1"] => {
            return Some(Target::Discovery(resource_list(
                "discovery.k8s.io/v1",
                &[(
                    "endpointslices",
                    "endpointslice",
                    "EndpointSlice",
                    true,
                    &[],
                )],
            )));
        }
        ["apis", "networking.k8s.io", "v1"] => {
            return Some(Target::Discovery(resource_list(
                "networking.k8s.io/v1",
                &[("servicecidrs", "servicecidr", "ServiceCIDR", false, &[])],
            )));
        }
        ["api", "v1", rest @ ..] => (&segs[..2], rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => (&segs[..3], rest),
        ["apis", "networking.k8s.io", "v1", rest @ ..] => (&segs[..3], rest),
        _ => return None,
    };
    match rest {
        [resource] => Some(Target::Collection(kind_of(group, resource)?, None)),
        [resource, name] => {
            let kind = kind_of(group, resource)?;
            (!kind.namespaced()).then(|| Target::Object(kind, String::new(), name.to_string()))
        }
        ["namespaces", ns, resource] => {
            let kind = kind_of(group, resource)?;
            kind.namespaced()
                .then(|| Target::Collection(kind, Some(ns.to_string())))
        }
        ["namespaces", ns, resource, name] => {
            let kind = kind_of(group, resource)?;
            kind.namespaced()
                .then(|| Target::Object(kind, ns.to_string(), name.to_string()))
        }
        _ => None,
    }
}

/// What the API server's authorizer says when it denies a request (the
/// message of a real `system:serviceaccount` denial).
fn forbidden_message(path: &str) -> String {
    let resource = path.trim_matches('/').rsplit('/').next().unwrap_or("");
    let group = if path.starts_with("/apis/discovery.k8s.io") {
        "discovery.k8s.io"
    } else {
        ""
    };
    format!(
        "{resource} is forbidden: User \"system:serviceaccount:kube-system:kproxy\" cannot list resource \"{resource}\" in API group \"{group}\" at the cluster scope"
    )
}

/// Serves one request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    {
        let mut st = shared.lock();
        st.request_times.push(std::time::Instant::now());
        st.requests.push(match &query {
            Some(q) => format!("{} {path}?{}", req.method(), percent_decode(q)),
            None => format!("{} {path}", req.method()),
        });
        if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")).boxed_unsync());
            if st.failing(&path) {
                *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            return resp;
        }
        if st.failing(&path) {
            return match st.fail_code {
                403 => error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    &forbidden_message(&path),
                ),
                503 => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the emulator was told to be unavailable",
                ),
                _ => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "the emulator was told to fail requests",
                ),
            };
        }
    }
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the emulator serves GET only",
        );
    }
    let Some(target) = route(&path) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource: {path}"),
        );
    };
    let delay = shared
        .lock()
        .delay_matching
        .as_ref()
        .filter(|(part, _)| path.contains(part.as_str()))
        .map(|(_, d)| *d);
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let q = parse_query(query.as_deref());
    let errs = validate(&q, shared.lock().watch_list);
    if !errs.is_empty() {
        return invalid_options(&errs);
    }
    match target {
        Target::Discovery(v) => full(StatusCode::OK, &v),
        Target::Object(kind, ns, name) => {
            let st = shared.lock();
            match st.objects.get(&(kind, ns, name.clone())) {
                Some(o) => full(StatusCode::OK, o),
                None => error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} {name:?} not found", kind.resource()),
                ),
            }
        }
        Target::Collection(kind, ns) => {
            let labels = match LabelSelector::parse(&q.label_selector) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
            };
            let mut fields = match FieldSelector::parse(&q.field_selector) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
            };
            if let Some(ns) = &ns
                && let Ok(f) = FieldSelector::parse(&format!("metadata.namespace={ns}"))
            {
                fields = fields.and(f);
            }
            let filter = Filter {
                kind,
                labels,
                fields,
            };
            if q.watch {
                watch(shared, filter, &q)
            } else {
                list(&shared, &filter, q.limit, q.continue_token.as_deref())
            }
        }
    }
}

/// Which objects a request selects.
struct Filter {
    kind: Kind,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches(o) && self.fields.matches(o)
    }
}

fn list(
    shared: &Shared,
    filter: &Filter,
    limit: Option<usize>,
    continue_token: Option<&str>,
) -> Response<Body> {
    let mut st = shared.lock();
    // A paged list is one consistent snapshot, as from etcd: later pages
    // come from the snapshot taken for the first, whatever changed since,
    // and all carry the first page's resourceVersion.
    let (rv, mut items) = match continue_token {
        Some(token) => match token
            .parse::<u64>()
            .ok()
            .and_then(|id| st.pages.remove(&id))
        {
            Some(page) => page,
            None => {
                return error(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
        },
        None => (
            st.rv,
            st.objects
                .iter()
                .filter(|((k, _, _), o)| *k == filter.kind && filter.matches(o))
                .map(|(_, o)| o.clone())
                .collect(),
        ),
    };
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(limit) = limit
        && items.len() > limit
    {
        let rest = items.split_off(limit);
        metadata["remainingItemCount"] = json!(rest.len());
        metadata["continue"] = json!(st.store_page(rv, rest).to_string());
    }
    full(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", filter.kind.kind()),
            "apiVersion": filter.kind.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

/// One watch event, a line of JSON (written directly: building a `Value`
/// around `object` would copy it).
fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{{\"object\":{object},\"type\":\"{kind}\"}}\n"))
}

/// A 410 Gone, delivered inside the watch stream as the real API server does.
fn gone(requested: u64, oldest: u64) -> Bytes {
    event_line(
        "ERROR",
        &status(
            410,
            "Expired",
            &format!("too old resource version: {requested} ({oldest})"),
        ),
    )
}

struct WatchState {
    shared: Arc<Shared>,
    filter: Filter,
    pos: u64,
    /// The initial events still to send: the objects selected when the
    /// watch started, serialized as the client reads them (as the API
    /// server streams from its watch cache), not all at once.
    initial: std::vec::IntoIter<Value>,
    /// Sent after the initial events: a streaming list's bookmark.
    initial_end: Option<Bytes>,
    queue: VecDeque<Bytes>,
    done: bool,
    bookmarks: bool,
    deadline: Instant,
    next_bookmark: Instant,
    changed: tokio::sync::watch::Receiver<u64>,
    hangup: tokio::sync::watch::Receiver<u64>,
    expire: tokio::sync::watch::Receiver<u64>,
}

impl Drop for WatchState {
    fn drop(&mut self) {
        self.shared.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WatchState {
    fn translate(&self, c: &Change) -> Option<Bytes> {
        if c.kind != self.filter.kind {
            return None;
        }
        let now = self.filter.matches(&c.object);
        let ty = match c.event {
            EventType::Added => now.then_some("ADDED")?,
            EventType::Deleted => now.then_some("DELETED")?,
            EventType::Modified => {
                let before = c.old.as_ref().is_some_and(|o| self.filter.matches(o));
                match (before, now) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                }
            }
        };
        Some(event_line(ty, &c.object))
    }

    fn collect(&mut self) {
        let shared = self.shared.clone();
        let st = shared.lock();
        if self.pos < st.compacted {
            self.queue.push_back(gone(self.pos, st.compacted + 1));
            self.done = true;
            return;
        }
        for c in st.history.iter().filter(|c| c.rv > self.pos) {
            if let Some(b) = self.translate(c) {
                self.queue.push_back(b);
            }
        }
        self.pos = self.pos.max(st.rv);
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        // Initial events go out in chunks of about 64 KiB.
        let mut chunk = Vec::new();
        for o in self.initial.by_ref() {
            chunk.extend_from_slice(&event_line("ADDED", &o));
            if chunk.len() >= 64 * 1024 {
                break;
            }
        }
        if !chunk.is_empty() {
            return Some(Bytes::from(chunk));
        }
        if let Some(end) = self.initial_end.take() {
            return Some(end);
        }
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            self.changed.borrow_and_update();
            self.collect();
            if !self.queue.is_empty() || self.done {
                continue;
            }
            tokio::select! {
                r = self.changed.changed() => if r.is_err() { return None },
                _ = self.hangup.changed() => return None,
                _ = self.expire.changed() => {
                    let compacted = self.shared.lock().compacted;
                    self.queue.push_back(gone(self.pos, compacted + 1));
                    self.done = true;
                }
                _ = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    let interval = self.shared.lock().bookmark_interval;
                    self.next_bookmark = Instant::now() + interval;
                    let kind = self.filter.kind;
                    self.queue.push_back(event_line("BOOKMARK", &json!({
                        "kind": kind.kind(),
                        "apiVersion": kind.api_version(),
                        "metadata": {"resourceVersion": self.pos.to_string()},
                    })));
                }
                _ = tokio::time::sleep_until(self.deadline) => return None,
            }
        }
    }
}

fn watch(shared: Arc<Shared>, filter: Filter, q: &Query) -> Response<Body> {
    let mut initial_objects = Vec::new();
    let mut initial_end = None;
    let (pos, interval) = {
        let st = shared.lock();
        let requested = q
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "0");
        // "" and "0" mean "start from any version": the API server then
        // sends the current state as synthetic ADDED events, unless
        // `sendInitialEvents=false`. A streaming list
        // (`sendInitialEvents=true`) sends them whatever the version (the
        // state is at least as new as asked: NotOlderThan) and ends them
        // with a bookmark marking the end of the initial events.
        let initial = match q.send_initial_events {
            Some(send) => send,
            None => requested.is_none(),
        };
        if initial {
            initial_objects = st
                .objects
                .iter()
                .filter(|((k, _, _), o)| *k == filter.kind && filter.matches(o))
                .map(|(_, o)| o.clone())
                .collect();
        }
        if q.send_initial_events == Some(true) {
            initial_end = Some(event_line(
                "BOOKMARK",
                &json!({
                    "kind": filter.kind.kind(),
                    "apiVersion": filter.kind.api_version(),
                    "metadata": {
                        "resourceVersion": st.rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                }),
            ));
        }
        let pos = match requested.filter(|_| q.send_initial_events != Some(true)) {
            None => st.rv,
            Some(v) => match v.parse::<u64>() {
                Ok(v) => v,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        &format!("invalid resource version {v:?}"),
                    );
                }
            },
        };
        (pos, st.bookmark_interval)
    };
    shared.open_watches.fetch_add(1, Ordering::SeqCst);
    shared.started_watches.fetch_add(1, Ordering::SeqCst);
    let now = Instant::now();
    let state = WatchState {
        changed: shared.changed.subscribe(),
        hangup: shared.hangup.subscribe(),
        expire: shared.expire.subscribe(),
        shared,
        filter,
        pos,
        initial: initial_objects.into_iter(),
        initial_end,
        queue: VecDeque::new(),
        done: false,
        bookmarks: q.bookmarks,
        deadline: now + Duration::from_secs(q.timeout.unwrap_or(1800).max(1)),
        next_bookmark: now + interval,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        let chunk = st.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), st))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode() {
        assert_eq!(
            percent_decode("%21service.kubernetes.io%2Fheadless%2Ca+in+%28b%29"),
            "!service.kubernetes.io/headless,a in (b)"
        );
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route("/api/v1/services"),
            Some(Target::Collection(Kind::Service, None))
        ));
        assert!(matches!(
            route("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices"),
            Some(Target::Collection(Kind::EndpointSlice, Some(_)))
        ));
        assert!(matches!(
            route("/api/v1/nodes/n1"),
            Some(Target::Object(Kind::Node, _, _))
        ));
        assert!(matches!(
            route("/apis/networking.k8s.io/v1/servicecidrs"),
            Some(Target::Collection(Kind::ServiceCidr, None))
        ));
        assert!(matches!(
            route("/apis/networking.k8s.io/v1/servicecidrs/kubernetes"),
            Some(Target::Object(Kind::ServiceCidr, _, _))
        ));
        assert!(route("/apis/networking.k8s.io/v1/namespaces/a/servicecidrs").is_none());
        assert!(route("/api/v1/services/x").is_none());
        assert!(route("/api/v1/namespaces/a/nodes").is_none());
        assert!(route("/api/v1/pods").is_none());
    }
}
