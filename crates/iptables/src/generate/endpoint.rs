//! The jumps from a service chain to its endpoint chains (kube-proxy's
//! `writeServiceToEndpointRules`).

use std::collections::HashMap;
use std::net::IpAddr;

use kproxy_graph::ServicePort;

use crate::ir::{Match, Recent, Rule};
use crate::naming::sep_chain;

use super::context::{Ctx, jump};

/// kube-proxy's `writeServiceToEndpointRules`: affinity checks first, then
/// the probabilistic branches, the last one unconditional.
pub(super) fn endpoint_rules(
    cx: &Ctx<'_>,
    sp: &ServicePort,
    name: &str,
    endpoints: &[std::sync::Arc<kproxy_graph::Endpoint>],
    seps: &HashMap<(IpAddr, u16), (String, String)>,
    rules: &mut Vec<Rule>,
) {
    let chains: Vec<(String, String)> = endpoints
        .iter()
        .map(|ep| match seps.get(&(ep.ip, ep.port)) {
            Some(pair) => pair.clone(),
            None => {
                // Not in reachable_endpoints (the graph guarantees it is);
                // hash it anyway rather than emit a dangling jump.
                let addr = ep.addr_string();
                (sep_chain(&sp.name, &addr), addr)
            }
        })
        .collect();
    if let Some(aff) = sp.session_affinity {
        for (sep, addr) in &chains {
            let mut m = cx.endpoint_comment(format!("{name} -> {addr}"));
            m.push(Match::Recent(Recent::Check {
                name: sep.clone(),
                seconds: aff.timeout_seconds,
            }));
            rules.push(Rule::new(m, jump(sep)));
        }
    }
    let n = chains.len();
    for (i, (sep, addr)) in chains.iter().enumerate() {
        let mut m = cx.endpoint_comment(format!("{name} -> {addr}"));
        if i + 1 < n {
            m.push(Match::Statistic {
                one_in: u32::try_from(n - i).unwrap_or(u32::MAX),
            });
        }
        rules.push(Rule::new(m, jump(sep)));
    }
}
