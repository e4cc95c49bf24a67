//! The differential check: for every probe, what kproxy's tracer
//! (`kproxy_trace::predict`) says the node's ruleset does to the connection
//! must agree with what the kernel did.
//!
//! After each sync the node namespace's ruleset is dumped the way the
//! kernel prints it back ([`dump_ruleset`]: `ip{,6}tables-<flavour>-save`,
//! or `nft list table` for every `ip` / `ip6` table), together with the
//! namespace's addresses ([`node_addresses`]). Each probe's attempts are
//! then compared with the prediction ([`compare`]): every attempt must be a
//! predicted result (the same endpoint, the same masquerading; refused or
//! unreachable for REJECT, a timeout for DROP, the sink or the node's own
//! listener for "not handled"), and every predicted result likely enough
//! to be seen in that many attempts must have been seen.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use kproxy_graph::{BackendKind, Protocol};
use kproxy_trace::{Outcome, OutcomePart, Verdict as TVerdict};

use crate::runner::NODE_LOCAL;
use crate::scenario::BackendName;
use crate::topo::Ns;
use crate::wire::{Attempt, Proto};

/// A predicted result that is missed in `n` attempts with at most this
/// probability must be seen ((1-p)^n): the same order as the harness's
/// own endpoint counts (2e-6 .. 2e-5), with room for products of several
/// random branches.
pub const MISS_PROBABILITY: f64 = 1e-4;

/// The ruleset of one step, as the kernel printed it back.
#[derive(Debug, Clone)]
pub struct StepRules {
    /// The backend whose tools dumped it.
    pub backend: BackendKind,
    /// `iptables-save` text of both families (with `# IPv4` / `# IPv6`
    /// headers), or `nft list table` text.
    pub text: String,
    /// Every address of the node namespace (loopback included).
    pub node_ips: Vec<IpAddr>,
}

/// The tracer's backend kind for a harness backend.
pub fn backend_kind(b: BackendName) -> BackendKind {
    match b {
        BackendName::IptablesLegacy => BackendKind::IptablesLegacy,
        BackendName::IptablesNft => BackendKind::IptablesNft,
        BackendName::Nftables => BackendKind::Nftables,
    }
}

/// The protocol as the tracer names it.
pub fn protocol(p: Proto) -> Protocol {
    match p {
        Proto::Tcp => Protocol::Tcp,
        Proto::Udp => Protocol::Udp,
        Proto::Sctp => Protocol::Sctp,
    }
}

/// Dump the node namespace's ruleset with the backend's own tools (one
/// call per step, not per probe).
pub fn dump_ruleset(
    node: &Ns,
    backend: BackendName,
    xtables_lock: &Path,
) -> Result<String, String> {
    let err = |e: crate::HarnessError| e.to_string();
    let mut dump = String::new();
    match backend {
        BackendName::Nftables => {
            // Every ip / ip6 table (kproxy's are `ip kproxy` and `ip6
            // kproxy`): the kernel runs them all, so the tracer reads them
            // all. Other families would act on the packets too and are not
            // modelled: an error, not a silent omission.
            let tables = node.exec(&["nft", "list", "tables"]).map_err(err)?;
            for line in tables.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                match w.as_slice() {
                    ["table", fam @ ("ip" | "ip6"), name] => {
                        dump.push_str(
                            &node
                                .exec(&["nft", "list", "table", fam, name])
                                .map_err(err)?,
                        );
                        dump.push('\n');
                    }
                    [] => {}
                    _ => {
                        return Err(format!(
                            "the node has a table the tracer check does not read: {line}"
                        ));
                    }
                }
            }
        }
        BackendName::IptablesLegacy | BackendName::IptablesNft => {
            let flavour = if backend == BackendName::IptablesLegacy {
                "legacy"
            } else {
                "nft"
            };
            let lock = format!("XTABLES_LOCKFILE={}", xtables_lock.display());
            for (fam, six) in [("IPv4", ""), ("IPv6", "6")] {
                let save = format!("ip{six}tables-{flavour}-save");
                dump.push_str(&format!("# {fam}: {save}\n"));
                dump.push_str(&node.exec(&["env", &lock, &save]).map_err(err)?);
            }
        }
    }
    Ok(dump)
}

/// Every address of the node namespace (`ip -o addr show`), loopback
/// included: the tracer's `addrtype LOCAL` / `fib daddr type local`.
pub fn node_addresses(node: &Ns) -> Result<Vec<IpAddr>, String> {
    let out = node
        .ip(&["-o", "addr", "show"])
        .map_err(|e| e.to_string())?;
    Ok(parse_addresses(&out))
}

fn parse_addresses(out: &str) -> Vec<IpAddr> {
    let mut ips = Vec::new();
    for line in out.lines() {
        let mut w = line.split_whitespace();
        while let Some(t) = w.next() {
            if (t == "inet" || t == "inet6")
                && let Some(ip) = w
                    .next()
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                && !ips.contains(&ip)
            {
                ips.push(ip);
            }
        }
    }
    ips
}

/// How much of the comparison applies to a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Every attempt predicted, every likely prediction seen.
    Full,
    /// Every attempt predicted only: the tracer cannot know which of the
    /// predicted results the kernel keeps choosing (session affinity, one
    /// conntrack flow reused through a fixed source port).
    SubsetOnly,
}

/// What one attempt showed, in the tracer's terms.
fn matches(a: &Attempt, target: SocketAddr, p: &OutcomePart) -> bool {
    match a {
        Attempt::Answer {
            label,
            reached,
            from,
            local,
        } => {
            let untouched = label == "sink" || label == NODE_LOCAL;
            if p.verdict != TVerdict::Accept {
                return false;
            }
            match p.dnat {
                // Not handled: the sink or the node answered, or the
                // destination itself (a pod reached directly).
                None => untouched || *reached == target,
                Some(d) => {
                    !untouched
                        && *reached == d
                        && local.is_none_or(|l| (from.ip() != l.ip()) == p.masquerade)
                }
            }
        }
        Attempt::Refused | Attempt::Unreachable { .. } => p.verdict == TVerdict::Reject,
        Attempt::Timeout => p.verdict == TVerdict::Drop,
        Attempt::Http { .. } | Attempt::Error { .. } => false,
    }
}

/// An attempt in the tracer's words (`DNAT to 10.0.0.1:80, masqueraded`).
fn seen(a: &Attempt, target: SocketAddr) -> String {
    match a {
        Attempt::Answer {
            label,
            reached,
            from,
            local,
        } => {
            if label == "sink" || label == NODE_LOCAL || *reached == target {
                format!("not handled ({label} answered)")
            } else {
                let m = match local {
                    Some(l) if l.ip() != from.ip() => ", masqueraded",
                    Some(_) => ", not masqueraded",
                    None => "",
                };
                format!("DNAT to {reached}{m}")
            }
        }
        Attempt::Refused => "REJECT (refused)".into(),
        Attempt::Unreachable { error } => format!("REJECT ({error})"),
        Attempt::Timeout => "DROP (timeout)".into(),
        Attempt::Http { status, .. } => format!("HTTP {status}"),
        Attempt::Error { error } => format!("error ({error})"),
    }
}

/// Compare a prediction for `target` with the attempts the kernel answered.
/// `Err` says how they disagree.
pub fn compare(
    predicted: &Outcome,
    target: SocketAddr,
    attempts: &[Attempt],
    depth: Depth,
) -> Result<(), String> {
    if attempts.is_empty() {
        return Err("no attempts to compare".into());
    }
    let mut hit = vec![0usize; predicted.parts.len()];
    for a in attempts {
        let Some(i) = predicted.parts.iter().position(|p| matches(a, target, p)) else {
            let race = if matches!(a, Attempt::Timeout)
                && predicted
                    .parts
                    .iter()
                    .any(|p| p.verdict == TVerdict::Reject)
            {
                " (a REJECT's ICMP error can race connect() on a veth and be lost)"
            } else {
                ""
            };
            return Err(format!(
                "the kernel did {} which the tracer does not predict{race}",
                seen(a, target)
            ));
        };
        hit[i] += 1;
    }
    if depth == Depth::Full {
        let n = attempts.len() as i32;
        for (p, h) in predicted.parts.iter().zip(&hit) {
            if *h == 0 && (1.0 - p.probability).powi(n) < MISS_PROBABILITY {
                let one = Outcome {
                    parts: vec![OutcomePart {
                        probability: 1.0,
                        ..p.clone()
                    }],
                };
                return Err(format!(
                    "the tracer predicts {one} with probability {}, never seen in {n} attempts",
                    kproxy_trace::format_percent(p.probability)
                ));
            }
        }
    }
    Ok(())
}

/// Predict with the tracer and compare: `Ok(prediction)` when the kernel
/// agrees, `Err` naming both outcomes otherwise.
pub fn check(
    rules: &StepRules,
    from: IpAddr,
    target: SocketAddr,
    proto: Proto,
    attempts: &[Attempt],
    depth: Depth,
) -> Result<String, String> {
    let predicted = kproxy_trace::predict(
        rules.backend,
        &rules.text,
        &rules.node_ips,
        from,
        target,
        protocol(proto),
    )
    .map_err(|e| format!("the tracer cannot trace {from} -> {target}: {e}"))?;
    compare(&predicted, target, attempts, depth)
        .map(|()| predicted.to_string())
        .map_err(|e| format!("tracer predicts {predicted} (from {from}); {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(label: &str, reached: &str, from: &str, local: &str) -> Attempt {
        Attempt::Answer {
            label: label.into(),
            reached: reached.parse().unwrap(),
            from: from.parse().unwrap(),
            local: Some(local.parse().unwrap()),
        }
    }

    /// The seed Service's NodePort as iptables-legacy-save prints it (the
    /// parts a connection from outside takes).
    const SEED: &str = "# IPv4: iptables-legacy-save
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-EXT-WEB - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WEB - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-EXT-WEB -j KUBE-MARK-MASQ
-A KUBE-EXT-WEB -j KUBE-SVC-WEB
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m tcp --dport 30007 -j KUBE-EXT-WEB
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SEP-A -p tcp -m tcp -j DNAT --to-destination 10.244.1.5:80
-A KUBE-SEP-B -p tcp -m tcp -j DNAT --to-destination 10.244.2.4:80
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-WEB -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A
-A KUBE-SVC-WEB -j KUBE-SEP-B
COMMIT
";

    fn rules(text: &str) -> StepRules {
        StepRules {
            backend: BackendKind::IptablesLegacy,
            text: text.into(),
            node_ips: vec!["192.168.49.2".parse().unwrap()],
        }
    }

    fn both_endpoints() -> Vec<Attempt> {
        let mut v = Vec::new();
        for i in 0..15 {
            v.push(ans(
                "a",
                "10.244.1.5:80",
                "169.254.1.1:4000",
                &format!("203.0.113.2:{}", 5000 + i),
            ));
            v.push(ans(
                "b",
                "10.244.2.4:80",
                "169.254.1.1:4001",
                &format!("203.0.113.2:{}", 6000 + i),
            ));
        }
        v
    }

    const FROM: &str = "203.0.113.2";
    const TO: &str = "192.168.49.2:30007";

    fn run(text: &str, a: &[Attempt], depth: Depth) -> Result<String, String> {
        check(
            &rules(text),
            FROM.parse().unwrap(),
            TO.parse().unwrap(),
            Proto::Tcp,
            a,
            depth,
        )
    }

    #[test]
    fn the_kernel_agreeing_with_the_tracer_passes() {
        let ok = run(SEED, &both_endpoints(), Depth::Full).expect("agrees");
        assert!(
            ok.contains("10.244.1.5:80") && ok.contains("masqueraded"),
            "{ok}"
        );
    }

    /// Mutated rulesets make the same kernel observations disagree.
    #[test]
    fn a_mutated_ruleset_is_caught() {
        let a = both_endpoints();
        // One endpoint's DNAT goes elsewhere: the kernel reached one the
        // tracer does not predict.
        let moved = SEED.replace("10.244.2.4:80", "10.244.2.4:81");
        let e = run(&moved, &a, Depth::Full).expect_err("endpoint moved");
        assert!(e.contains("DNAT to 10.244.2.4:80"), "{e}");
        // No masquerading: the masquerade flags disagree.
        let unmasq = SEED.replace("-j MASQUERADE --random-fully", "-j RETURN");
        let e = run(&unmasq, &a, Depth::Full).expect_err("masquerade");
        assert!(e.contains("masqueraded"), "{e}");
        // The NodePort gone: not handled, yet endpoints answered.
        let gone = SEED.replace("--dport 30007", "--dport 30008");
        assert!(run(&gone, &a, Depth::Full).is_err());
        // A REJECT where the kernel DNATed, and a DROP for the same.
        let reject = SEED.replace(
            "-A KUBE-NODEPORTS -p tcp -m tcp --dport 30007 -j KUBE-EXT-WEB\n",
            "",
        ) + "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
             -A INPUT -p tcp -m tcp --dport 30007 -j REJECT\nCOMMIT\n";
        let e = run(&reject, &a, Depth::Full).expect_err("reject vs endpoints");
        assert!(e.contains("tracer predicts REJECT"), "{e}");
        // And back: the rules reject but the kernel answered from one
        // endpoint; refused attempts against the DNAT rules disagree.
        let r = run(&reject, &[Attempt::Refused, Attempt::Refused], Depth::Full);
        assert!(r.is_ok(), "{r:?}");
        assert!(run(SEED, &[Attempt::Refused], Depth::Full).is_err());
        assert!(run(&reject, &[Attempt::Timeout], Depth::Full).is_err());
    }

    /// With enough attempts every likely endpoint must be seen; with
    /// session affinity only the subset is checked.
    #[test]
    fn missing_endpoints_fail_unless_subset_only() {
        let only_a: Vec<Attempt> = both_endpoints().into_iter().step_by(2).collect();
        let e = run(SEED, &only_a, Depth::Full).expect_err("b never seen");
        assert!(
            e.contains("10.244.2.4:80") && e.contains("never seen"),
            "{e}"
        );
        assert!(run(SEED, &only_a, Depth::SubsetOnly).is_ok());
        // One attempt cannot be expected to see both.
        assert!(run(SEED, &only_a[..1], Depth::Full).is_ok());
    }

    #[test]
    fn unmatched_traffic_is_not_handled() {
        let sink = [ans(
            "sink",
            "10.96.0.1:80",
            "203.0.113.2:1",
            "203.0.113.2:1",
        )];
        let to: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let r = check(
            &rules(SEED),
            FROM.parse().unwrap(),
            to,
            Proto::Tcp,
            &sink,
            Depth::Full,
        );
        assert!(r.is_ok(), "{r:?}");
        let r = check(
            &rules(SEED),
            FROM.parse().unwrap(),
            to,
            Proto::Tcp,
            &[Attempt::Timeout],
            Depth::Full,
        );
        assert!(r.is_err());
    }

    #[test]
    fn addresses_parse() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   1: lo    inet6 ::1/128 scope host \\       valid_lft forever\n\
                   2: n0@if3    inet 192.168.49.2/24 scope global n0\n";
        let ips = parse_addresses(out);
        assert_eq!(
            ips,
            ["127.0.0.1", "::1", "192.168.49.2"]
                .iter()
                .map(|s| s.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        );
    }
}
