//! Judging a probe's attempts against its expectation, and the wrong
//! expectations that prove a probe can fail.

use super::*;

/// A wrong version of an expectation, for proving that a probe can fail:
/// masquerading flipped, an expected endpoint dropped (or moved to another
/// port), reject and drop swapped, no-match turned into reject, another
/// HTTP status.
pub fn mutate(e: &Expect) -> Expect {
    match e {
        Expect::Endpoints(EndpointsExpect {
            endpoints,
            masquerade: Some(m),
        }) => Expect::Endpoints(EndpointsExpect {
            endpoints: endpoints.clone(),
            masquerade: Some(!m),
        }),
        Expect::Endpoints(EndpointsExpect {
            endpoints,
            masquerade: None,
        }) => {
            let mut eps = endpoints.clone();
            if eps.len() > 1 {
                eps.pop();
            } else if let Some(first) = eps.first_mut() {
                first.set_port(first.port().wrapping_add(1));
            }
            Expect::Endpoints(EndpointsExpect {
                endpoints: eps,
                masquerade: None,
            })
        }
        Expect::Simple(SimpleExpect::Reject) => Expect::Simple(SimpleExpect::Drop),
        Expect::Simple(SimpleExpect::Drop) => Expect::Simple(SimpleExpect::Reject),
        Expect::Simple(SimpleExpect::NoMatch) => Expect::Simple(SimpleExpect::Reject),
        Expect::Http(h) => Expect::Http(HttpExpect {
            http: h.http.wrapping_add(1),
            body_contains: h.body_contains.clone(),
        }),
    }
}

/// An expectation in words.
pub fn describe(e: &Expect) -> String {
    match e {
        Expect::Simple(SimpleExpect::Reject) => "reject".into(),
        Expect::Simple(SimpleExpect::Drop) => "drop".into(),
        Expect::Simple(SimpleExpect::NoMatch) => {
            "no-match (untouched: sink or node answers)".into()
        }
        Expect::Endpoints(EndpointsExpect {
            endpoints,
            masquerade,
        }) => {
            let eps: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
            let m = match masquerade {
                Some(true) => ", masqueraded",
                Some(false) => ", not masqueraded",
                None => "",
            };
            format!("endpoints [{}]{m}", eps.join(", "))
        }
        Expect::Http(HttpExpect {
            http,
            body_contains,
        }) => match body_contains {
            Some(b) => format!("HTTP {http} with {b:?}"),
            None => format!("HTTP {http}"),
        },
    }
}

/// Attempts grouped: `10.244.1.5:80 from 169.254.1.1 x12, refused x2`.
pub fn summarize(a: &[Attempt]) -> String {
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for x in a {
        let k = match x {
            Attempt::Answer {
                label,
                reached,
                from,
                local,
            } => {
                let l = local
                    .map(|l| l.ip().to_string())
                    .unwrap_or_else(|| "?".into());
                if label == "sink" || label == NODE_LOCAL {
                    format!("{label} (client {l})")
                } else {
                    format!("{reached} saw {} (client {l})", from.ip())
                }
            }
            Attempt::Http { status, body } => format!("HTTP {status} {body}"),
            Attempt::Refused => "refused".into(),
            Attempt::Unreachable { error } => format!("unreachable ({error})"),
            Attempt::Timeout => "timeout".into(),
            Attempt::Error { error } => format!("error ({error})"),
        };
        *groups.entry(k).or_default() += 1;
    }
    let v: Vec<String> = groups
        .into_iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}

/// Judge attempts against an expectation. `Err` says what is wrong.
pub fn judge(e: &Expect, sticky: bool, attempts: &[Attempt]) -> Result<(), String> {
    if attempts.is_empty() {
        return Err("no attempts were made".into());
    }
    match e {
        Expect::Simple(SimpleExpect::Reject) => {
            for a in attempts {
                if !matches!(a, Attempt::Refused | Attempt::Unreachable { .. }) {
                    return Err(format!("want every attempt rejected; got {}", one(a)));
                }
            }
            Ok(())
        }
        Expect::Simple(SimpleExpect::Drop) => {
            for a in attempts {
                if !matches!(a, Attempt::Timeout) {
                    return Err(format!(
                        "want every attempt dropped (timeout); got {}",
                        one(a)
                    ));
                }
            }
            Ok(())
        }
        Expect::Simple(SimpleExpect::NoMatch) => {
            for a in attempts {
                if !matches!(a, Attempt::Answer { label, .. } if label == "sink" || label == NODE_LOCAL)
                {
                    return Err(format!(
                        "want the sink or the node's own listener to answer (packet untouched by the proxy); got {}",
                        one(a)
                    ));
                }
            }
            Ok(())
        }
        Expect::Endpoints(ep) => judge_endpoints(ep, sticky, attempts),
        Expect::Http(h) => {
            for a in attempts {
                let ok = matches!(a, Attempt::Http { status, body }
                    if *status == h.http
                        && h.body_contains.as_ref().is_none_or(|b| body.contains(b.as_str())));
                if !ok {
                    return Err(format!("want {}; got {}", describe(e), one(a)));
                }
            }
            Ok(())
        }
    }
}

pub(super) fn one(a: &Attempt) -> String {
    summarize(std::slice::from_ref(a))
}

pub(super) fn judge_endpoints(
    ep: &EndpointsExpect,
    sticky: bool,
    attempts: &[Attempt],
) -> Result<(), String> {
    let mut hit: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for a in attempts {
        let Attempt::Answer {
            label,
            reached,
            from,
            local,
        } = a
        else {
            return Err(format!("want an endpoint to answer; got {}", one(a)));
        };
        if label == "sink" {
            return Err(
                "want an endpoint; the sink answered (the proxy did not touch the packet)".into(),
            );
        }
        if !ep.endpoints.contains(reached) {
            return Err(format!(
                "answered by {reached}, which is not an expected endpoint"
            ));
        }
        *hit.entry(*reached).or_default() += 1;
        if let Some(m) = ep.masquerade {
            let Some(local) = local else {
                return Err("the probe did not learn its own address".into());
            };
            let masqueraded = from.ip() != local.ip();
            if masqueraded != m {
                return Err(if m {
                    format!(
                        "want masquerade; {reached} saw the client's own address {}",
                        from.ip()
                    )
                } else {
                    format!(
                        "want the client address {} preserved; {reached} saw {}",
                        local.ip(),
                        from.ip()
                    )
                });
            }
        }
    }
    if sticky {
        if hit.len() != 1 {
            return Err(format!(
                "want every connection on one endpoint (session affinity); hit {}",
                hit.keys()
                    .map(|k| k.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    } else {
        let missed: Vec<String> = ep
            .endpoints
            .iter()
            .filter(|e| !hit.contains_key(e))
            .map(|e| e.to_string())
            .collect();
        if !missed.is_empty() {
            return Err(format!(
                "{} never answered in {} connections",
                missed.join(", "),
                attempts.len()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ans(reached: &str, from: &str, local: &str) -> Attempt {
        Attempt::Answer {
            label: "x".into(),
            reached: reached.parse().unwrap(),
            from: from.parse().unwrap(),
            local: Some(local.parse().unwrap()),
        }
    }

    fn eps(v: &[&str], m: Option<bool>) -> Expect {
        Expect::Endpoints(EndpointsExpect {
            endpoints: v.iter().map(|s| s.parse().unwrap()).collect(),
            masquerade: m,
        })
    }

    #[test]
    fn endpoints_judged() {
        let a = [
            ans("10.0.0.1:80", "10.1.0.9:5000", "10.1.0.9:5000"),
            ans("10.0.0.2:80", "10.1.0.9:5001", "10.1.0.9:5001"),
        ];
        assert_eq!(
            judge(
                &eps(&["10.0.0.1:80", "10.0.0.2:80"], Some(false)),
                false,
                &a
            ),
            Ok(())
        );
        // Masquerade flipped.
        assert!(judge(&eps(&["10.0.0.1:80", "10.0.0.2:80"], Some(true)), false, &a).is_err());
        // A wrong endpoint.
        assert!(judge(&eps(&["10.0.0.1:80"], None), false, &a).is_err());
        // One expected endpoint never answered.
        assert!(
            judge(
                &eps(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None),
                false,
                &a
            )
            .is_err()
        );
        // Not sticky.
        assert!(judge(&eps(&["10.0.0.1:80", "10.0.0.2:80"], None), true, &a).is_err());
        let masq = [ans("10.0.0.1:80", "169.254.1.1:4000", "203.0.113.2:5000")];
        assert_eq!(
            judge(&eps(&["10.0.0.1:80"], Some(true)), false, &masq),
            Ok(())
        );
        assert!(judge(&eps(&["10.0.0.1:80"], Some(false)), false, &masq).is_err());
    }

    #[test]
    fn simple_outcomes_judged() {
        let refused = [Attempt::Refused];
        let timeout = [Attempt::Timeout];
        let sink = [Attempt::Answer {
            label: "sink".into(),
            reached: "169.254.2.2:7777".parse().unwrap(),
            from: "10.1.0.9:5000".parse().unwrap(),
            local: None,
        }];
        let reject = Expect::Simple(SimpleExpect::Reject);
        let drop = Expect::Simple(SimpleExpect::Drop);
        let nomatch = Expect::Simple(SimpleExpect::NoMatch);
        assert_eq!(judge(&reject, false, &refused), Ok(()));
        assert!(judge(&drop, false, &refused).is_err());
        assert_eq!(judge(&drop, false, &timeout), Ok(()));
        assert!(judge(&reject, false, &timeout).is_err());
        assert_eq!(judge(&nomatch, false, &sink), Ok(()));
        assert!(judge(&eps(&["10.0.0.1:80"], None), false, &sink).is_err());
        assert!(
            judge(
                &nomatch,
                false,
                &[ans("10.0.0.1:80", "1.1.1.1:1", "1.1.1.1:1")]
            )
            .is_err()
        );
        assert!(judge(&reject, false, &[]).is_err());
    }

    #[test]
    fn http_judged() {
        let h = |status| Attempt::Http {
            status,
            body: "{\"localEndpoints\":1}".into(),
        };
        let want = |http, body: Option<&str>| {
            Expect::Http(HttpExpect {
                http,
                body_contains: body.map(String::from),
            })
        };
        assert_eq!(judge(&want(200, None), false, &[h(200), h(200)]), Ok(()));
        assert!(judge(&want(503, None), false, &[h(200)]).is_err());
        assert!(judge(&want(200, Some("\"localEndpoints\":0")), false, &[h(200)]).is_err());
        assert!(judge(&want(200, None), false, &[Attempt::Refused]).is_err());
    }
}
