//! One rule: its words (after `-A CHAIN`) to a [`Rule`] of kproxy's
//! matches and targets ([`parse_rule`]), in either spelling kproxy reads.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use kproxy_graph::Protocol;

use crate::ir::{Addr, AddrTypeDir, Match, Recent, Rule, Target};

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else {
        s.parse()
    };
    r.map_err(|_| format!("bad number {s:?}"))
}

fn parse_mark(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v)?, parse_u32(m)?)),
        None => Ok((parse_u32(s)?, u32::MAX)),
    }
}

fn parse_addr(s: &str) -> Result<Addr, String> {
    if s.contains('/') {
        s.parse::<IpNet>()
            .map(Addr::Net)
            .map_err(|_| format!("bad address {s:?}"))
    } else {
        s.parse::<IpAddr>()
            .map(Addr::Ip)
            .map_err(|_| format!("bad address {s:?}"))
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" | "6" => Ok(Protocol::Tcp),
        "udp" | "17" => Ok(Protocol::Udp),
        "sctp" | "132" => Ok(Protocol::Sctp),
        _ => Err(format!("unsupported protocol {s:?}")),
    }
}

#[derive(Default)]
struct RecentBuilder {
    name: Option<String>,
    set: bool,
    rcheck: bool,
    seconds: Option<u32>,
    reap: bool,
}

/// Parse a rule's words (after `-A CHAIN`).
pub fn parse_rule(words: &[String]) -> Result<Rule, String> {
    let mut rule = Rule::default();
    let mut negate = false;
    let mut recent: Option<RecentBuilder> = None;
    // Where `-m recent` appeared, so kproxy's own text parses back in order.
    let mut recent_pos = 0usize;
    let mut target: Option<String> = None;
    let mut i = 0;
    let next = |i: &mut usize| -> Result<&String, String> {
        *i += 1;
        words
            .get(*i)
            .ok_or_else(|| format!("{} needs a value", words[*i - 1]))
    };
    while i < words.len() {
        let w = words[i].as_str();
        let was_negated = std::mem::take(&mut negate);
        // Only these options carry a `!` in kproxy's rules; a negation
        // anywhere else must not be read as the plain match.
        if was_negated
            && !matches!(
                w,
                "-s" | "--source"
                    | "-d"
                    | "--destination"
                    | "-i"
                    | "--in-interface"
                    | "--ctstate"
                    | "--mark"
            )
        {
            return Err(format!("unsupported negation of {w}"));
        }
        match w {
            "!" => negate = true,
            "-s" | "--source" => rule.matches.push(Match::Source {
                negated: was_negated,
                addr: parse_addr(next(&mut i)?)?,
            }),
            "-d" | "--destination" => rule.matches.push(Match::Destination {
                negated: was_negated,
                addr: parse_addr(next(&mut i)?)?,
            }),
            "-i" | "--in-interface" => rule.matches.push(Match::InInterface {
                negated: was_negated,
                name: next(&mut i)?.clone(),
            }),
            "-p" | "--protocol" => {
                if was_negated {
                    return Err("negated protocol unsupported".into());
                }
                rule.matches
                    .push(Match::Protocol(parse_protocol(next(&mut i)?)?));
            }
            "-m" | "--match" => {
                let m = next(&mut i)?;
                match m.as_str() {
                    // Implied by `-p`; kproxy always writes both.
                    "tcp" | "udp" | "sctp" | "comment" | "addrtype" | "conntrack" | "mark"
                    | "statistic" | "nfacct" => {}
                    "recent" => {
                        recent = Some(RecentBuilder::default());
                        recent_pos = rule.matches.len();
                    }
                    other => return Err(format!("unsupported match module {other:?}")),
                }
            }
            "--comment" => rule.matches.push(Match::Comment(next(&mut i)?.clone())),
            "--nfacct-name" => rule.matches.push(Match::Nfacct(next(&mut i)?.clone())),
            "--dport" | "--destination-port" => {
                let v = next(&mut i)?;
                rule.matches.push(Match::DestPort(
                    v.parse().map_err(|_| format!("bad port {v:?}"))?,
                ));
            }
            "--src-type" | "--dst-type" => rule.matches.push(Match::AddrType {
                dir: if w == "--src-type" {
                    AddrTypeDir::Src
                } else {
                    AddrTypeDir::Dst
                },
                kind: next(&mut i)?.clone(),
            }),
            "--ctstate" => rule.matches.push(Match::Conntrack {
                negated: was_negated,
                states: next(&mut i)?.clone(),
            }),
            "--mark" => {
                let (value, mask) = parse_mark(next(&mut i)?)?;
                rule.matches.push(Match::Mark {
                    negated: was_negated,
                    value,
                    mask,
                });
            }
            "--mode" => {
                let m = next(&mut i)?;
                if m != "random" {
                    return Err(format!("unsupported statistic mode {m:?}"));
                }
            }
            "--probability" => {
                let v = next(&mut i)?;
                let p: f64 = v.parse().map_err(|_| format!("bad probability {v:?}"))?;
                if !(p > 0.0 && p <= 1.0) {
                    return Err(format!("bad probability {v:?}"));
                }
                // The kernel keeps a 31-bit fraction, so the saved value is
                // approximate; 1/p rounds back to kube-proxy's n.
                let n = (1.0 / p).round();
                rule.matches.push(Match::Statistic {
                    one_in: n.min(f64::from(u32::MAX)) as u32,
                });
            }
            "--name" | "--set" | "--rcheck" | "--seconds" | "--reap" | "--mask" | "--rsource" => {
                let r = recent
                    .as_mut()
                    .ok_or_else(|| format!("{w} outside -m recent"))?;
                match w {
                    "--name" => r.name = Some(next(&mut i)?.clone()),
                    "--set" => r.set = true,
                    "--rcheck" => r.rcheck = true,
                    "--seconds" => {
                        let v = next(&mut i)?;
                        r.seconds = Some(v.parse().map_err(|_| format!("bad seconds {v:?}"))?);
                    }
                    "--reap" => r.reap = true,
                    "--mask" => {
                        // Only the default full mask is kproxy's.
                        let v = next(&mut i)?;
                        if v != "255.255.255.255" && v != "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                        {
                            return Err(format!("unsupported recent mask {v:?}"));
                        }
                    }
                    _ => {}
                }
            }
            "-c" => {
                // Counters: `-c PKTS BYTES`.
                next(&mut i)?;
                next(&mut i)?;
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                if w.starts_with("-g") || w == "--goto" {
                    return Err("goto unsupported".into());
                }
                target = Some(next(&mut i)?.clone());
                let t = parse_target(target.as_deref().unwrap_or(""), &words[i + 1..])?;
                rule.target = Some(t);
                i = words.len();
                continue;
            }
            other => return Err(format!("unsupported option {other:?}")),
        }
        i += 1;
    }
    if let Some(r) = recent {
        let name = r.name.ok_or("recent without --name")?;
        let m = if r.set && !r.rcheck {
            Recent::Set { name }
        } else if r.rcheck && r.reap && !r.set {
            Recent::Check {
                name,
                seconds: r.seconds.ok_or("recent --rcheck without --seconds")?,
            }
        } else {
            return Err("unsupported recent form".into());
        };
        rule.matches
            .insert(recent_pos.min(rule.matches.len()), Match::Recent(m));
    }
    let _ = target;
    Ok(rule)
}

fn parse_target(name: &str, opts: &[String]) -> Result<Target, String> {
    let mut it = opts.iter();
    let mut opt = |want: &str| -> Result<String, String> {
        match (it.next(), it.next()) {
            (Some(o), Some(v)) if o == want => Ok(v.clone()),
            _ => Err(format!("{name}: expected {want} VALUE, got {opts:?}")),
        }
    };
    let t = match name {
        "ACCEPT" | "DROP" | "RETURN" if !opts.is_empty() => {
            return Err(format!("{name} takes no options"));
        }
        "ACCEPT" => Target::Accept,
        "DROP" => Target::Drop,
        "RETURN" => Target::Return,
        "REJECT" => {
            if !opts.is_empty() {
                let w = opt("--reject-with")?;
                if w != "icmp-port-unreachable" && w != "icmp6-port-unreachable" {
                    return Err(format!("unsupported --reject-with {w:?}"));
                }
            }
            Target::Reject
        }
        "DNAT" => {
            let v = opt("--to-destination")?;
            Target::Dnat(
                v.parse::<SocketAddr>()
                    .map_err(|_| format!("bad DNAT destination {v:?}"))?,
            )
        }
        "MASQUERADE" => match opts {
            [] => Target::Masquerade {
                random_fully: false,
            },
            [o] if o == "--random-fully" => Target::Masquerade { random_fully: true },
            _ => return Err(format!("unsupported MASQUERADE options {opts:?}")),
        },
        "MARK" => match opts {
            [o, v] if o == "--or-mark" => Target::MarkOr(parse_u32(v)?),
            [o, v] if o == "--xor-mark" => Target::MarkXor(parse_u32(v)?),
            [o, v] if o == "--set-xmark" => {
                let (value, mask) = parse_mark(v)?;
                if mask == value {
                    Target::MarkOr(value)
                } else if mask == 0 {
                    Target::MarkXor(value)
                } else {
                    Target::MarkSetX { value, mask }
                }
            }
            _ => return Err(format!("unsupported MARK options {opts:?}")),
        },
        chain if !opts.is_empty() => {
            return Err(format!(
                "unsupported target {chain:?} with options {opts:?}"
            ));
        }
        chain => Target::Jump(chain.to_string()),
    };
    Ok(t)
}
