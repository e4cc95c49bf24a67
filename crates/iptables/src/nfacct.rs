//! kube-proxy's nfacct counters ([`NFACCT_COUNTERS`]), created over
//! nfnetlink_acct before the first restore that matches them, as
//! kube-proxy's `NewProxier` does with its nfacct runner.

use crate::generate::NFACCT_COUNTERS;

/// Create both counters (unless they exist) in network namespace `netns`
/// (`None`: this process's). `false`, with one warning, when either cannot
/// be created (the kernel has no nfnetlink_acct): the rules are then
/// written without `-m nfacct`, and the two metrics are not exported.
pub fn ensure_counters(netns: Option<&str>) -> bool {
    let sock = kproxy_netlink::NfSocket::open_in(netns);
    let result = sock.and_then(|mut s| {
        NFACCT_COUNTERS
            .iter()
            .try_for_each(|c| kproxy_netlink::acct::ensure(&mut s, c))
    });
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e,
                "cannot create the nfacct counters (does the kernel have nfnetlink_acct?): the rules go without -m nfacct and kube-proxy's nfacct metrics are not available");
            false
        }
    }
}
