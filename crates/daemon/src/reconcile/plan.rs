//! Planning a sync: update the graph from the changes taken in, and
//! decide between a full and an incremental sync.
//!
//! The sync is full on the first sync, after a failure or drift, every
//! `full_sync_period` (the one full-sync clock: backends keep none of
//! their own) and when the graph update says so (node topology,
//! configuration); incremental otherwise, from the update's
//! [`ChangeSet`].

use std::time::{Duration, Instant};

use kproxy_graph::{ChangeSet, FamilyGraph, ServiceGraph};

use super::Reconciler;

/// One sync's plan: the graph to apply and how.
pub(super) struct SyncPlan {
    /// When the sync started.
    pub started: Instant,
    /// How long updating the graph took.
    pub graph_built: Duration,
    /// The graph to apply.
    pub graph: std::sync::Arc<ServiceGraph>,
    /// The changes from the last applied graph; `None`: a full sync.
    pub changes: Option<ChangeSet>,
    /// A full sync.
    pub full: bool,
    /// What left the graph since the last applied one (its removed service
    /// ports), for the conntrack clean-up; `None` before the first
    /// successful sync.
    pub before: Option<ServiceGraph>,
    /// Service ports the graph update rebuilt.
    pub rebuilt: usize,
}

impl SyncPlan {
    /// `full` or `partial`, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        if self.full { "full" } else { "partial" }
    }
}

impl Reconciler {
    /// Update the graph and decide how to sync it.
    pub(super) fn plan(&mut self) -> SyncPlan {
        let started = Instant::now();
        self.last_attempt = Some(started);
        let config = self.proxy_config();
        self.graph.set_config(config);
        if self.graph.is_dirty() {
            // The update changes the graph in place: a copy still held
            // here would make it copy the whole graph first.
            self.shared.status().graph = None;
        }
        let update = self.graph.update();
        let graph = self.graph.graph().clone();
        self.report_warnings(&graph);
        let graph_built = started.elapsed();

        let full_due = self
            .last_full
            .is_none_or(|t| started.duration_since(t) >= self.settings.full_sync_period);
        let changes = if self.applied && !self.need_full && !full_due {
            (!update.changes.needs_full_sync).then_some(update.changes)
        } else {
            None
        };
        // What left the graph, for the conntrack clean-up of removed UDP
        // service ports (it reads nothing else of the previous graph).
        let before = self.applied.then(|| ServiceGraph {
            node: graph.node.clone(),
            config: graph.config.clone(),
            families: update
                .removed
                .into_iter()
                .map(|(f, ports)| {
                    let mut fg = FamilyGraph::empty(f);
                    fg.services = ports.into_iter().map(|sp| (sp.name.clone(), sp)).collect();
                    (f, fg)
                })
                .collect(),
            warnings: Vec::new(),
        });
        let full = changes.is_none();
        if let Some(c) = &changes {
            for (family, fc) in &c.families {
                tracing::debug!(family = %family, added = fc.added.len(), removed = fc.removed.len(),
                    changed = fc.changed.len(), "service port changes");
            }
        } else {
            tracing::debug!(
                need_full = self.need_full,
                full_due,
                first = !self.applied,
                "full sync"
            );
        }
        SyncPlan {
            started,
            graph_built,
            graph,
            changes,
            full,
            before,
            rebuilt: update.rebuilt,
        }
    }
}
