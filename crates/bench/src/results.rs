//! Measurements as the bench records them: every figure is a list of
//! samples (repeats) summarised as median, min and max; a measurement that
//! could not be taken is recorded with the reason instead.

use std::fmt;

use serde_json::{Value, json};

/// What a group of records measures (one table in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Graph build (intake + endpoint selection) time, seconds.
    GraphBuild,
    /// Generation + render of the full ruleset, seconds.
    Render,
    /// Size of the full ruleset text, bytes.
    RenderBytes,
    /// `kproxy run --once` into an empty namespace, seconds.
    FullSyncDaemon,
    /// In-process `Backend::sync(graph, None)` into an empty namespace, seconds.
    FullSyncBackend,
    /// The loader alone on the same text into an empty namespace, seconds.
    Loader,
    /// iptables-nft only: the same text as one `--noflush` restore, seconds.
    LoaderPlain,
    /// nftables only: the loader alone on the same cluster without ClientIP
    /// affinity (no per-endpoint affinity sets), seconds.
    LoaderNoAffinity,
    /// Peak RSS of `kproxy run --once`, MiB.
    DaemonRss,
    /// Peak RSS of the loader, MiB.
    LoaderRss,
    /// Incremental sync after one endpoint change, seconds (backend only).
    IncrEndpoint,
    /// Incremental sync after adding a Service, seconds (backend only).
    IncrAdd,
    /// Incremental sync after removing a Service, seconds (backend only).
    IncrRemove,
    /// Graph rebuild + change set for one endpoint change, seconds.
    IncrGraph,
    /// Bytes sent to the kernel by the endpoint-change sync.
    IncrEndpointBytes,
    /// Bytes sent to the kernel by the add-Service sync.
    IncrAddBytes,
    /// Bytes sent to the kernel by the remove-Service sync.
    IncrRemoveBytes,
    /// Churn: change-to-kernel latency p50, seconds.
    ChurnP50,
    /// Churn: change-to-kernel latency p99, seconds.
    ChurnP99,
    /// Data plane: TCP connect latency (first packet through DNAT), median per repeat, seconds.
    ConnectLatency,
    /// Data plane: connections per second from one client.
    ConnectRate,
}

impl Metric {
    /// The unit samples are in.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::RenderBytes
            | Metric::IncrEndpointBytes
            | Metric::IncrAddBytes
            | Metric::IncrRemoveBytes => "bytes",
            Metric::DaemonRss | Metric::LoaderRss => "MiB",
            Metric::ConnectRate => "conn/s",
            _ => "s",
        }
    }

    /// Short description for tables.
    pub fn title(self) -> &'static str {
        match self {
            Metric::GraphBuild => "graph build (intake + selection)",
            Metric::Render => "generate + render full ruleset",
            Metric::RenderBytes => "full ruleset size",
            Metric::FullSyncDaemon => "full sync, `kproxy run --once` end to end",
            Metric::FullSyncBackend => "full sync, Backend::sync in process",
            Metric::Loader => "loader alone, same text (kernel floor)",
            Metric::LoaderPlain => {
                "iptables-nft: the same text as one --noflush restore (up to 1000)"
            }
            Metric::LoaderNoAffinity => "loader alone, same cluster with no ClientIP affinity",
            Metric::DaemonRss => "peak RSS, `kproxy run --once`",
            Metric::LoaderRss => "peak RSS, loader",
            Metric::IncrEndpoint => "incremental: one endpoint changed (sync)",
            Metric::IncrAdd => "incremental: one Service added (sync)",
            Metric::IncrRemove => "incremental: one Service removed (sync)",
            Metric::IncrGraph => "incremental: graph update + change set",
            Metric::IncrEndpointBytes => "bytes sent: endpoint change",
            Metric::IncrAddBytes => "bytes sent: Service added",
            Metric::IncrRemoveBytes => "bytes sent: Service removed",
            Metric::ChurnP50 => "churn: change-to-kernel p50",
            Metric::ChurnP99 => "churn: change-to-kernel p99",
            Metric::ConnectLatency => "data plane: TCP connect latency via ClusterIP",
            Metric::ConnectRate => "data plane: new connections per second",
        }
    }

    /// Stable identifier (JSON).
    pub fn id(self) -> String {
        format!("{self:?}")
    }
}

/// Median, min and max of some samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Number of samples.
    pub n: usize,
}

impl Summary {
    /// Summarise `samples`; `None` when empty.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let mid = s.len() / 2;
        let median = if s.len() % 2 == 1 {
            s[mid]
        } else {
            (s[mid - 1] + s[mid]) / 2.0
        };
        Some(Summary {
            median,
            min: s[0],
            max: s[s.len() - 1],
            n: s.len(),
        })
    }
}

/// A quantile (nearest rank) of unsorted samples.
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// One measurement: a metric of one subject at one size.
#[derive(Debug, Clone)]
pub struct Record {
    /// What was measured.
    pub metric: Metric,
    /// Who: `nftables`, `iptables-nft`, `iptables-legacy`, `kube-proxy-nft`.
    pub subject: String,
    /// Number of Services in the cluster.
    pub services: usize,
    /// The samples, in [`Metric::unit`].
    pub samples: Vec<f64>,
    /// Why it is missing or partial (timeout, not available).
    pub note: Option<String>,
}

impl Record {
    /// The summary, if any samples were taken.
    pub fn summary(&self) -> Option<Summary> {
        Summary::of(&self.samples)
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "metric": self.metric.id(),
            "unit": self.metric.unit(),
            "subject": self.subject,
            "services": self.services,
            "samples": self.samples,
            "note": self.note,
        })
    }
}

/// Format a value in its unit for humans (`12.3 ms`, `4.1 MiB`).
pub struct Human(pub f64, pub &'static str);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Human(v, unit) = *self;
        match unit {
            "s" => {
                if v >= 1.0 {
                    write!(f, "{v:.2} s")
                } else if v >= 1e-3 {
                    write!(f, "{:.1} ms", v * 1e3)
                } else {
                    write!(f, "{:.0} µs", v * 1e6)
                }
            }
            "bytes" => {
                if v >= 1048576.0 {
                    write!(f, "{:.1} MiB", v / 1048576.0)
                } else if v >= 1024.0 {
                    write!(f, "{:.1} KiB", v / 1024.0)
                } else {
                    write!(f, "{v:.0} B")
                }
            }
            "MiB" => write!(f, "{v:.0} MiB"),
            "conn/s" => write!(f, "{v:.0}/s"),
            other => write!(f, "{v:.3} {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_quantiles() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).expect("summary");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[1.0, 2.0, 3.0, 4.0]).expect("s").median, 2.5);
        assert!(Summary::of(&[]).is_none());
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(Human(0.0123, "s").to_string(), "12.3 ms");
        assert_eq!(Human(2048.0, "bytes").to_string(), "2.0 KiB");
    }
}
