//! The object store: current objects, a global resourceVersion counter
//! and a bounded history of change events for watches to resume from.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{EmulatorError, Kind};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, as a watch replays it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub rv: u64,
    pub kind: Kind,
    pub event: EventType,
    /// The object after the change (for a deletion: the last state, with
    /// the deletion's resourceVersion).
    pub object: Value,
    /// The object before a modification; a watch with a selector needs it
    /// to turn a modification into ADDED or DELETED when the object
    /// enters or leaves the selection.
    pub old: Option<Value>,
}

/// Key of a stored object.
pub(crate) type Key = (Kind, String, String);

/// Everything behind the emulator's lock.
#[derive(Debug)]
pub(crate) struct State {
    /// The last resourceVersion handed out.
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: VecDeque<Change>,
    /// Changes up to and including this resourceVersion are no longer in
    /// `history`: a watch asking to resume from an older version gets 410.
    pub compacted: u64,
    pub history_limit: usize,
    pub fail_until: Option<Instant>,
    /// When set, only requests whose path contains this text fail.
    pub fail_matching: Option<String>,
    /// How failing requests are answered: 500 (an internal error), 503
    /// (unavailable) or 403 (forbidden, as a freshly started API server
    /// answers while its authorizer's cache fills).
    pub fail_code: u16,
    /// Requests whose path contains this text are answered this late.
    pub delay_matching: Option<(String, Duration)>,
    pub bookmark_interval: Duration,
    /// The `WatchList` feature gate: whether streaming lists
    /// (`sendInitialEvents`) are served or refused.
    pub watch_list: bool,
    pub requests: Vec<String>,
    /// When each of `requests` arrived.
    pub request_times: Vec<Instant>,
    /// The rest of paged lists, by continue token: (resourceVersion, items).
    pub pages: BTreeMap<u64, (u64, Vec<Value>)>,
    next_page: u64,
    next_uid: u64,
}

impl State {
    pub fn new() -> State {
        State {
            // Start above zero: "0" means "any version" to the API.
            rv: 1000,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 1000,
            history_limit: 1000,
            fail_until: None,
            fail_matching: None,
            fail_code: 500,
            delay_matching: None,
            bookmark_interval: Duration::from_secs(1),
            watch_list: true,
            requests: Vec::new(),
            request_times: Vec::new(),
            pages: BTreeMap::new(),
            next_page: 1,
            next_uid: 1,
        }
    }

    /// Keeps the rest of a paged list; returns its continue token.
    pub fn store_page(&mut self, rv: u64, items: Vec<Value>) -> u64 {
        let id = self.next_page;
        self.next_page += 1;
        self.pages.insert(id, (rv, items));
        // Abandoned lists are forgotten eventually, as etcd compacts.
        while self.pages.len() > 64 {
            self.pages.pop_first();
        }
        id
    }

    pub fn failing(&self, path: &str) -> bool {
        self.fail_until.is_some_and(|t| Instant::now() < t)
            && self
                .fail_matching
                .as_deref()
                .is_none_or(|m| path.contains(m))
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Drops history beyond `limit` entries (0: all of it).
    pub fn trim_history(&mut self, limit: usize) {
        self.history_limit = limit;
        while self.history.len() > limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        if limit == 0 {
            self.compacted = self.rv;
        }
    }

    /// Creates or updates an object; returns its new resourceVersion, or
    /// the old one when nothing but server-managed fields differ.
    pub fn apply(&mut self, mut object: Value) -> Result<u64, EmulatorError> {
        let kind_name = object
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| EmulatorError::InvalidObject("missing field kind".into()))?
            .to_string();
        let kind = Kind::from_kind(&kind_name).ok_or_else(|| {
            EmulatorError::InvalidObject(format!("field kind: unsupported kind {kind_name:?}"))
        })?;
        let meta = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| {
                EmulatorError::InvalidObject(format!("{kind_name}: missing field metadata"))
            })?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                EmulatorError::InvalidObject(format!("{kind_name}: missing field metadata.name"))
            })?
            .to_string();
        let namespace = if kind.namespaced() {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_string();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        object["apiVersion"] = Value::String(kind.api_version().into());
        let key = (kind, namespace, name);
        let old = self.objects.get(&key).cloned();
        // Server-managed metadata is kept from the stored object so that an
        // unchanged re-apply is a no-op, as on a real API server.
        let managed = ["uid", "creationTimestamp", "resourceVersion"];
        if let Some(old) = &old {
            for field in managed {
                match old.pointer(&format!("/metadata/{field}")) {
                    Some(v) => object["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = object["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
            if old == &object {
                return Ok(self.rv_of(old));
            }
        } else {
            let uid = format!("00000000-0000-4000-8000-{:012}", self.next_uid);
            self.next_uid += 1;
            object["metadata"]["uid"] = Value::String(uid);
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.objects.insert(key, object.clone());
        let event = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Change {
            rv,
            kind,
            event,
            object,
            old,
        });
        Ok(rv)
    }

    fn rv_of(&self, object: &Value) -> u64 {
        object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(self.rv)
    }

    /// Deletes an object; returns the deletion's resourceVersion, or
    /// `None` when there was no such object.
    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        let ns = if kind.namespaced() { namespace } else { "" };
        let mut object = self
            .objects
            .remove(&(kind, ns.to_string(), name.to_string()))?;
        self.rv += 1;
        let rv = self.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        self.record(Change {
            rv,
            kind,
            event: EventType::Deleted,
            object,
            old: None,
        });
        Some(rv)
    }
}
