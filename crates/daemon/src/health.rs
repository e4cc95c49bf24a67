//! Proxy health (`/healthz`, `/livez`) with kube-proxy's semantics
//! (upstream pkg/proxy/healthcheck/proxy_health.go), and the per-service
//! health-check node port answers (pkg/proxy/healthcheck/service_health.go).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use kproxy_graph::IpFamily;
use serde_json::{Value, json};

/// Per-family health state.
#[derive(Debug, Clone, Default)]
struct FamilyState {
    /// The last successful sync.
    last_updated: Option<SystemTime>,
    /// The oldest change not yet synced.
    oldest_pending: Option<SystemTime>,
}

/// kube-proxy's `ProxyHealthServer` state.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    timeout: Duration,
    families: BTreeMap<IpFamily, FamilyState>,
    /// The Node is known, not being deleted, not tainted for deletion.
    pub node_eligible: bool,
}

/// One evaluation of the health state.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// The proxy is healthy (every synced family is within the timeout).
    pub healthy: bool,
    /// The JSON body.
    pub body: Value,
}

fn rfc3339(t: SystemTime) -> String {
    match k8s_openapi::jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.to_string(),
        Err(_) => "0001-01-01T00:00:00Z".to_string(),
    }
}

/// Go's zero `time.Time`, which kube-proxy prints when nothing synced yet.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

impl ProxyHealth {
    /// A new state; `timeout` is 2 x syncPeriod.
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            timeout,
            families: BTreeMap::new(),
            node_eligible: false,
        }
    }

    /// A change arrived for these families (kube-proxy's `QueuedUpdate`):
    /// only the oldest pending change counts.
    pub fn queued(&mut self, families: &[IpFamily], now: SystemTime) {
        for f in families {
            let st = self.families.entry(*f).or_default();
            st.oldest_pending.get_or_insert(now);
        }
    }

    /// A sync of these families succeeded (`Updated`).
    pub fn updated(&mut self, families: &[IpFamily], now: SystemTime) {
        for f in families {
            let st = self.families.entry(*f).or_default();
            st.last_updated = Some(now);
            st.oldest_pending = None;
        }
    }

    /// Evaluate (`Health()`). A family that never synced is not evaluated,
    /// so a starting proxy is healthy.
    fn evaluate(&self, now: SystemTime) -> (bool, Option<SystemTime>, Value) {
        let mut healthy = true;
        let mut latest: Option<SystemTime> = None;
        let mut status = serde_json::Map::new();
        for (family, st) in &self.families {
            let Some(last) = st.last_updated else {
                continue;
            };
            latest = Some(latest.map_or(last, |l| l.max(last)));
            let fam_healthy = match st.oldest_pending {
                Some(p) => now <= p + self.timeout,
                None => true,
            };
            healthy &= fam_healthy;
            status.insert(
                family.as_k8s_str().to_string(),
                json!({"lastUpdated": rfc3339(last), "healthy": fam_healthy}),
            );
        }
        (healthy, latest, Value::Object(status))
    }

    /// `/livez`: proxy health only.
    pub fn livez(&self, now: SystemTime) -> HealthReport {
        self.report(now, false)
    }

    /// `/healthz`: proxy health and node eligibility.
    pub fn healthz(&self, now: SystemTime) -> HealthReport {
        self.report(now, true)
    }

    /// The proxy's own health (for health-check node ports).
    pub fn proxy_healthy(&self, now: SystemTime) -> bool {
        self.evaluate(now).0
    }

    fn report(&self, now: SystemTime, with_node: bool) -> HealthReport {
        let (healthy, latest, status) = self.evaluate(now);
        // Like kube-proxy: when healthy, lastUpdated is "now" (older
        // releases meant "the sync loop ran", and clients depend on it).
        let last = if healthy {
            rfc3339(now)
        } else {
            latest
                .map(rfc3339)
                .unwrap_or_else(|| GO_ZERO_TIME.to_string())
        };
        let mut body = json!({
            "lastUpdated": last,
            "currentTime": rfc3339(now),
            "healthy": healthy,
            "status": status,
        });
        let ok = if with_node {
            body["nodeEligible"] = Value::Bool(self.node_eligible);
            healthy && self.node_eligible
        } else {
            healthy
        };
        HealthReport { healthy: ok, body }
    }
}

/// The answer of a health-check node port (kube-proxy's service health
/// server): 200 with at least one ready local endpoint and a healthy proxy,
/// else 503; the body and the `X-Load-Balancing-Endpoint-Weight` header
/// carry the local endpoint count.
pub fn service_health_body(
    namespace: &str,
    name: &str,
    local: usize,
    proxy_healthy: bool,
) -> (u16, String) {
    let code = if local > 0 && proxy_healthy { 200 } else { 503 };
    let body = json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": local,
        "serviceProxyHealthy": proxy_healthy,
    });
    (code, body.to_string())
}

/// The `/healthz` and `/livez` listener's handler: a copy of the small
/// health state, evaluated without any lock held.
pub fn handler(shared: std::sync::Arc<crate::state::Shared>) -> crate::http::Handler {
    use crate::http::Reply;
    use crate::metrics::CodeLabel;
    crate::http::handler(move |path: &str| {
        let now = SystemTime::now();
        let health = shared.health().clone();
        let (report, counter) = match path {
            "/healthz" => (health.healthz(now), &shared.metrics.healthz_total),
            "/livez" => (health.livez(now), &shared.metrics.livez_total),
            _ => return Reply::text(404, "404 page not found\n"),
        };
        let code: u16 = if report.healthy { 200 } else { 503 };
        counter
            .get_or_create(&CodeLabel {
                code: code.to_string(),
            })
            .inc();
        Reply::json(code, report.body.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_health_semantics() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = ProxyHealth::new(Duration::from_secs(60));
        // Never synced: healthy (not evaluated), but the node is unknown.
        assert!(h.livez(t0).healthy);
        assert!(!h.healthz(t0).healthy);
        h.node_eligible = true;
        assert!(h.healthz(t0).healthy);
        // Synced, then a change pending for longer than the timeout.
        h.updated(&[IpFamily::V4], t0);
        h.queued(&[IpFamily::V4], t0 + Duration::from_secs(1));
        h.queued(&[IpFamily::V4], t0 + Duration::from_secs(50));
        assert!(h.livez(t0 + Duration::from_secs(61)).healthy);
        let r = h.livez(t0 + Duration::from_secs(62));
        assert!(!r.healthy, "oldest pending change counts");
        assert_eq!(r.body["status"]["IPv4"]["healthy"], false);
        assert_eq!(r.body["lastUpdated"], rfc3339(t0));
        assert!(r.body.get("nodeEligible").is_none());
        h.updated(&[IpFamily::V4], t0 + Duration::from_secs(63));
        let r = h.healthz(t0 + Duration::from_secs(64));
        assert!(r.healthy);
        assert_eq!(r.body["lastUpdated"], rfc3339(t0 + Duration::from_secs(64)));
        assert_eq!(r.body["nodeEligible"], true);
    }

    #[test]
    fn service_health_answers() {
        let (code, body) = service_health_body("ns", "svc", 2, true);
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(v["service"]["name"], "svc");
        assert_eq!(service_health_body("ns", "svc", 0, true).0, 503);
        assert_eq!(service_health_body("ns", "svc", 3, false).0, 503);
    }
}
