//! `kproxy-bench conntrack-cleanup`: the time to find and delete stale UDP
//! conntrack entries over ctnetlink, as the daemon's cleanup does after a
//! sync (kproxy-netlink's `conntrack::dump` of the family's UDP flows,
//! a stale test per flow, `conntrack::delete` of the stale ones).
//!
//! Each repeat creates, in a fresh network namespace, `stale` flows to a
//! service whose endpoint is gone and `kept` flows to its serving
//! endpoint, then times the dump, the test and the deletes. It checks that
//! exactly the kept flows remain. Prints each repeat and the medians with
//! min and max.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kproxy_netlink::conntrack::{self, Flow, IPPROTO_UDP, Tuple};
use kproxy_netlink::{Family, NfSocket};

use crate::results::Summary;
use crate::sys;

const SERVICE: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 50);
const GONE: Ipv4Addr = Ipv4Addr::new(10, 180, 0, 9);
const SERVING: Ipv4Addr = Ipv4Addr::new(10, 180, 0, 1);

fn flow(i: u32, reply_src: Ipv4Addr) -> Flow {
    // Distinct clients; ports spread so that tuples never repeat.
    let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
    let sport = 1024 + (i % 60000) as u16;
    Flow {
        proto: IPPROTO_UDP,
        orig: Tuple {
            src: client,
            dst: IpAddr::V4(SERVICE),
            sport,
            dport: 53,
        },
        reply: Tuple {
            src: IpAddr::V4(reply_src),
            dst: client,
            sport: 5353,
            dport: sport,
        },
        zone: 0,
        id: None,
    }
}

/// One repeat's phases.
struct Phases {
    dump: Duration,
    delete: Duration,
    total: Duration,
}

/// A fresh namespace holding the flows, and a socket in it.
fn populated(stale: usize, kept: usize) -> anyhow::Result<(sys::Ns, NfSocket)> {
    let ns = sys::Ns::new()?;
    let mut sock = NfSocket::open_in_netns(ns.name())?;
    let mut flows: Vec<Flow> = (0..stale as u32).map(|i| flow(i, GONE)).collect();
    flows.extend((stale as u32..(stale + kept) as u32).map(|i| flow(i, SERVING)));
    let created = conntrack::create(&mut sock, Family::Ip, &flows, 600)
        .context("creating the flows (is nf_conntrack available?)")?;
    if created != flows.len() as u64 {
        bail!("created {created} of {} flows", flows.len());
    }
    Ok((ns, sock))
}

/// The same cleanup as kproxy did it before ctnetlink, for comparison:
/// `conntrack -L` of the family's UDP flows, then one `conntrack -D` per
/// (service, stale reply source) (one here: every stale flow has the
/// same gone endpoint).
fn once_with_tool(stale: usize, kept: usize) -> anyhow::Result<Duration> {
    let (ns, mut sock) = populated(stale, kept)?;
    let start = Instant::now();
    let listed = ns.exec(&["conntrack", "-L", "-p", "udp", "-f", "ipv4"])?;
    let _ = ns.exec(&[
        "conntrack",
        "-D",
        "-p",
        "udp",
        "-f",
        "ipv4",
        "--orig-dst",
        &SERVICE.to_string(),
        "--orig-port-dst",
        "53",
        "--reply-src",
        &GONE.to_string(),
        "--reply-port-src",
        "5353",
    ])?;
    let took = start.elapsed();
    let mut left = 0usize;
    conntrack::dump(&mut sock, Family::Ip, IPPROTO_UDP, |_| left += 1)?;
    if listed.lines().count() != stale + kept || left != kept {
        bail!(
            "conntrack listed {} flows and left {left}, expected {} and {kept}",
            listed.lines().count(),
            stale + kept
        );
    }
    Ok(took)
}

fn once(stale: usize, kept: usize) -> anyhow::Result<Phases> {
    let (_ns, mut sock) = populated(stale, kept)?;
    let serving = IpAddr::V4(SERVING);
    let service = IpAddr::V4(SERVICE);
    let start = Instant::now();
    let mut found = Vec::new();
    conntrack::dump(&mut sock, Family::Ip, IPPROTO_UDP, |f| {
        if f.orig.dst == service && f.orig.dport == 53 && f.reply.src != serving {
            found.push(*f);
        }
    })?;
    let dumped = start.elapsed();
    let d = conntrack::delete(&mut sock, Family::Ip, &found, |_| {})?;
    let total = start.elapsed();
    if d.deleted != stale as u64 || found.len() != stale {
        bail!(
            "found {} stale flows and deleted {} ({} gone, {} refused), expected {stale}",
            found.len(),
            d.deleted,
            d.gone,
            d.failed
        );
    }
    let mut left = 0usize;
    conntrack::dump(&mut sock, Family::Ip, IPPROTO_UDP, |_| left += 1)?;
    if left != kept {
        bail!("{left} flows left, expected {kept}");
    }
    Ok(Phases {
        dump: dumped,
        delete: total - dumped,
        total,
    })
}

/// Measure `repeats` cleanups of `stale` stale flows among `stale + kept`
/// (and, with `tool`, as many with the `conntrack` tool, alternating).
pub fn run(stale: usize, kept: usize, repeats: usize, tool: bool) -> anyhow::Result<()> {
    let mut dump = Vec::new();
    let mut delete = Vec::new();
    let mut total = Vec::new();
    let mut by_tool = Vec::new();
    for r in 0..repeats {
        let p = once(stale, kept)?;
        println!(
            "repeat {r}: dump + test {:.1} ms, delete {:.1} ms, total {:.1} ms",
            p.dump.as_secs_f64() * 1e3,
            p.delete.as_secs_f64() * 1e3,
            p.total.as_secs_f64() * 1e3
        );
        dump.push(p.dump.as_secs_f64());
        delete.push(p.delete.as_secs_f64());
        total.push(p.total.as_secs_f64());
        if tool {
            let t = once_with_tool(stale, kept)?;
            println!(
                "repeat {r}: conntrack -L and -D {:.1} ms",
                t.as_secs_f64() * 1e3
            );
            by_tool.push(t.as_secs_f64());
        }
    }
    for (what, samples) in [
        ("dump + test", &dump),
        ("delete", &delete),
        ("total", &total),
        ("conntrack tool (-L, -D)", &by_tool),
    ] {
        if let Some(s) = Summary::of(samples) {
            println!(
                "{what}: median {:.1} ms (min {:.1}, max {:.1}, n {}) for {stale} stale of {} UDP flows",
                s.median * 1e3,
                s.min * 1e3,
                s.max * 1e3,
                s.n,
                stale + kept
            );
        }
    }
    Ok(())
}
