//! Recording a sync's outcome: kube-proxy's and kproxy's metrics, the
//! log line, and `/status`.

use std::time::{Duration, Instant, SystemTime};

use kproxy_graph::{ProxyMode, SyncStats};

use super::plan::SyncPlan;
use super::{RULE_COUNT_PERIOD, Reconciler, endpoints, service_ports, unix_secs};
use crate::metrics::{FamilyLabel, TableLabel};
use crate::state::lock;

impl Reconciler {
    /// kube-proxy runs a proxier per family and labels its sync metrics
    /// with it; kproxy syncs every family at once, so each family's
    /// series gets the same observation.
    fn family_labels(plan: &SyncPlan) -> Vec<FamilyLabel> {
        plan.graph
            .families
            .keys()
            .map(|f| FamilyLabel::of(*f))
            .collect()
    }

    /// The metrics and log line of a successful sync.
    pub(super) fn record_success(
        &mut self,
        plan: &SyncPlan,
        stats: &SyncStats,
        elapsed: Duration,
        now: SystemTime,
    ) {
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let graph = &plan.graph;
        let label = crate::metrics::SyncLabel {
            sync: plan.kind().into(),
        };
        let secs = elapsed.as_secs_f64();
        for fl in &Self::family_labels(plan) {
            m.sync_duration.get_or_create(fl).observe(secs);
            if plan.full {
                m.sync_full_duration.get_or_create(fl).observe(secs);
            } else {
                m.sync_partial_duration.get_or_create(fl).observe(secs);
            }
            m.last_sync_timestamp.get_or_create(fl).set(unix_secs(now));
        }
        m.syncs.get_or_create(&label).inc();
        m.service_changes_pending.set(0);
        m.endpoint_changes_pending.set(0);
        m.bytes_written.inc_by(stats.bytes_written as u64);
        m.bytes_last.set(stats.bytes_written as i64);
        m.objects_written.inc_by(stats.rules_written as u64);
        m.objects_total.set(stats.rules_total as i64);
        m.service_ports.set(service_ports(graph) as i64);
        m.endpoints.set(endpoints(graph) as i64);
        self.no_local_endpoint_metrics(graph);
        self.network_programming(now);
        tracing::info!(
            backend = %self.kind,
            sync = plan.kind(),
            services = stats.services,
            endpoints = stats.endpoints,
            rules_written = stats.rules_written,
            bytes_written = stats.bytes_written,
            rules_total = stats.rules_total,
            duration_ms = elapsed.as_millis() as u64,
            graph_ms = plan.graph_built.as_millis() as u64,
            services_rebuilt = plan.rebuilt,
            "synced"
        );
    }

    /// kube-proxy's iptables-mode per-table gauges (iptables backends).
    pub(super) fn record_rule_counts(&mut self, plan: &SyncPlan, stats: &SyncStats) {
        if self.mode != ProxyMode::Iptables {
            return;
        }
        let shared = self.shared.clone();
        let m = &shared.metrics;
        // Rules written per family and table; tables this sync did not
        // write count 0, as kube-proxy's buffer.
        for f in plan.graph.families.keys() {
            for table in ["filter", "nat"] {
                m.iptables_last
                    .get_or_create(&TableLabel {
                        ip_family: f.as_k8s_str().into(),
                        table: table.into(),
                    })
                    .set(0);
            }
        }
        // Only kube-proxy's tables, and others kproxy wrote to.
        for (f, table, n) in &stats.rules_written_by_table {
            if *n == 0 {
                continue;
            }
            m.iptables_last
                .get_or_create(&TableLabel {
                    ip_family: f.as_k8s_str().into(),
                    table: table.clone(),
                })
                .set(*n as i64);
        }
        // kube-proxy's per-table gauges: the rules kproxy owns in each
        // table (both families), as the backend counts them in the applied
        // ruleset, so after full syncs and at most every RULE_COUNT_PERIOD
        // otherwise.
        let due = plan.full
            || self
                .rules_counted
                .is_none_or(|t| t.elapsed() >= RULE_COUNT_PERIOD);
        let counts = if due {
            lock(&self.backend).rules_per_table()
        } else {
            None
        };
        if let Some(counts) = counts {
            for c in counts {
                if c.rules == 0 && c.table != "filter" && c.table != "nat" {
                    continue;
                }
                m.iptables_total
                    .get_or_create(&TableLabel {
                        ip_family: c.family.as_k8s_str().into(),
                        table: c.table,
                    })
                    .set(c.rules as i64);
            }
            self.rules_counted = Some(Instant::now());
        }
    }

    /// `/status` after a successful sync.
    pub(super) fn record_status(&mut self, plan: &SyncPlan, stats: SyncStats, now: SystemTime) {
        let graph = &plan.graph;
        let mut st = self.shared.status();
        st.last_sync = Some(now);
        if plan.full {
            st.last_full_sync = Some(now);
        }
        st.last_stats = Some(stats);
        st.syncs += 1;
        st.consecutive_failures = 0;
        st.graph = Some(graph.clone());
        // `/rules` asks the backend to render the applied ruleset when
        // requested: the whole text (~6 MB of nft at 10,000 Services,
        // ~170 MB of iptables at 50,000) costs more than an incremental
        // sync.
        st.rules = None;
        st.warnings = graph.warnings.iter().map(ToString::to_string).collect();
    }

    /// A failed sync: the next one is full; metrics, log and `/status`.
    pub(super) fn record_failure(&mut self, plan: SyncPlan, e: String) {
        self.need_full = true;
        let shared = self.shared.clone();
        let m = &shared.metrics;
        let label = crate::metrics::SyncLabel {
            sync: plan.kind().into(),
        };
        m.sync_failures.get_or_create(&label).inc();
        // The sync of every family failed (and is retried whole).
        for fl in &Self::family_labels(&plan) {
            match self.mode {
                ProxyMode::Nftables => {
                    m.nftables_sync_failures.get_or_create(fl).inc();
                }
                ProxyMode::Iptables => {
                    m.iptables_restore_failures.get_or_create(fl).inc();
                    if !plan.full {
                        m.iptables_partial_restore_failures.get_or_create(fl).inc();
                    }
                }
            }
        }
        tracing::error!(backend = %self.kind, sync = plan.kind(), error = %e,
            "sync failed; the previous rules stay, the next sync is full");
        let mut st = self.shared.status();
        // What the failed sync tried to apply, for /graph.
        st.graph = Some(plan.graph);
        st.failures += 1;
        st.consecutive_failures += 1;
        st.last_error = Some((SystemTime::now(), e));
    }
}
