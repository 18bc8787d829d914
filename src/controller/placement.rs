//! Placement: which node takes a new guest (S24, S27, S50, S51, S92).
//!
//! Pure logic over a snapshot of candidate nodes, so it is unit-tested without I/O. The
//! saga's `place` step builds the snapshot inside its transaction, counting the guests
//! already placed — including those of the same batch placed a moment earlier — so a batch
//! spreads lightest-first instead of piling onto one stale "best" node.
//!
//! Filters, each refusal naming the node and the reason: online; accepts automatically
//! placed guests (unless the node was chosen by hand); memory after placement within the
//! node's capacity (physical × its memory over-commit ratio) and below the memory
//! threshold; vCPUs within cores × its CPU over-commit ratio; load per core below the load
//! threshold. Score: most memory left, then fewest guests, then node id.
//!
//! Placement plugins ([`place_with`]) see the nodes that passed the filters: a veto removes
//! a node (its reason joins the refusals), scores order the rest, and the built-in order
//! breaks ties. A node chosen by hand is not put to the plugins: the operator decided.

/// Thresholds from the controller's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Highest share of a node's (over-committed) memory guests may use, in percent.
    pub max_memory_pct: f64,
    /// Highest 1-minute load average per core at which a node still takes guests.
    pub max_load_per_cpu: f64,
}

/// One node as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub online: bool,
    pub accept_auto: bool,
    pub cpus: u32,
    pub memory_mib: u64,
    pub load1: f64,
    pub cpu_overcommit: f64,
    pub memory_overcommit: f64,
    /// Memory and vCPUs of the guests already placed there.
    pub used_memory_mib: u64,
    pub used_vcpus: u64,
    pub guests: u64,
    /// Bridges the node has; None when it does not say (simulated or older nodes).
    pub bridges: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub node: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlaceError {
    #[error("no node is registered")]
    NoNodes,
    #[error("node {0} is not registered")]
    UnknownNode(String),
    #[error("no node can take this guest: {}", .0.iter().map(|r| format!("{}: {}", r.node, r.reason)).collect::<Vec<_>>().join("; "))]
    Refused(Vec<Refusal>),
    /// A placement plugin failed; its error names it.
    #[error(transparent)]
    Plugin(crate::controller::plugins::PluginError),
}

/// What placement plugins think of one eligible node.
#[derive(Debug, Clone, PartialEq)]
pub enum Opinion {
    /// Added to the node's rank; higher wins.
    Score(f64),
    /// The node is refused, with the reason (naming the plugin).
    Veto(String),
}

fn check(
    c: &Candidate,
    memory_mib: u64,
    cpus: u64,
    bridge: Option<&str>,
    by_hand: bool,
    t: &Thresholds,
) -> Result<u64, String> {
    if !c.online {
        return Err("offline".into());
    }
    if let (Some(b), Some(have)) = (bridge, &c.bridges) {
        if !have.iter().any(|h| h == b) {
            return Err(format!("has no bridge {b} (the guest's network)"));
        }
    }
    if !by_hand && !c.accept_auto {
        return Err("does not accept automatically placed guests".into());
    }
    let capacity = (c.memory_mib as f64 * c.memory_overcommit * t.max_memory_pct / 100.0) as u64;
    let after = c.used_memory_mib + memory_mib;
    if after > capacity {
        return Err(format!(
            "memory {after} MiB after placement exceeds {capacity} MiB ({}% of {} MiB × {})",
            t.max_memory_pct, c.memory_mib, c.memory_overcommit
        ));
    }
    let vcpu_cap = (f64::from(c.cpus) * c.cpu_overcommit) as u64;
    if c.used_vcpus + cpus > vcpu_cap {
        return Err(format!(
            "{} vCPUs after placement exceed {vcpu_cap} ({} cores × {})",
            c.used_vcpus + cpus,
            c.cpus,
            c.cpu_overcommit
        ));
    }
    let load = c.load1 / f64::from(c.cpus.max(1));
    if load > t.max_load_per_cpu {
        return Err(format!(
            "load {load:.2} per core is above {}",
            t.max_load_per_cpu
        ));
    }
    Ok(capacity - after)
}

/// What the guest needs.
#[derive(Debug, Clone, Copy)]
pub struct Need<'a> {
    pub memory_mib: u64,
    pub cpus: u64,
    /// The bridge of the guest's network, when its pool names one.
    pub bridge: Option<&'a str>,
}

/// Picks the node for a guest, on `requested` if given.
pub fn place(
    candidates: &[Candidate],
    need: Need<'_>,
    requested: Option<&str>,
    t: &Thresholds,
) -> Result<String, PlaceError> {
    place_with(candidates, need, requested, t, |eligible| {
        Ok(vec![Opinion::Score(0.0); eligible.len()])
    })
}

/// [`place`], with `opinions` (placement plugins) asked about the eligible nodes: one
/// opinion per node, in the order given.
pub fn place_with(
    candidates: &[Candidate],
    need: Need<'_>,
    requested: Option<&str>,
    t: &Thresholds,
    opinions: impl FnOnce(
        &[&Candidate],
    ) -> Result<Vec<Opinion>, crate::controller::plugins::PluginError>,
) -> Result<String, PlaceError> {
    let Need {
        memory_mib,
        cpus,
        bridge,
    } = need;
    if let Some(r) = requested {
        let c = candidates
            .iter()
            .find(|c| c.id == r)
            .ok_or_else(|| PlaceError::UnknownNode(r.to_string()))?;
        return check(c, memory_mib, cpus, bridge, true, t)
            .map(|_| c.id.clone())
            .map_err(|reason| {
                PlaceError::Refused(vec![Refusal {
                    node: c.id.clone(),
                    reason,
                }])
            });
    }
    if candidates.is_empty() {
        return Err(PlaceError::NoNodes);
    }
    let mut refusals = Vec::new();
    let mut eligible: Vec<(&Candidate, u64)> = Vec::new();
    for c in candidates {
        match check(c, memory_mib, cpus, bridge, false, t) {
            Ok(left) => eligible.push((c, left)),
            Err(reason) => refusals.push(Refusal {
                node: c.id.clone(),
                reason,
            }),
        }
    }
    if eligible.is_empty() {
        return Err(PlaceError::Refused(refusals));
    }
    let nodes: Vec<&Candidate> = eligible.iter().map(|(c, _)| *c).collect();
    let views = opinions(&nodes).map_err(PlaceError::Plugin)?;
    let mut best: Option<(f64, u64, std::cmp::Reverse<u64>, std::cmp::Reverse<&str>)> = None;
    for ((c, left), opinion) in eligible.iter().zip(views) {
        match opinion {
            Opinion::Veto(reason) => refusals.push(Refusal {
                node: c.id.clone(),
                reason,
            }),
            Opinion::Score(score) => {
                let key = (
                    score,
                    *left,
                    std::cmp::Reverse(c.guests),
                    std::cmp::Reverse(c.id.as_str()),
                );
                if best
                    .as_ref()
                    .is_none_or(|b| key.partial_cmp(b) == Some(std::cmp::Ordering::Greater))
                {
                    best = Some(key);
                }
            }
        }
    }
    match best {
        Some((_, _, _, std::cmp::Reverse(id))) => Ok(id.to_string()),
        None => Err(PlaceError::Refused(refusals)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::plugins::PluginError;

    const T: Thresholds = Thresholds {
        max_memory_pct: 90.0,
        max_load_per_cpu: 2.0,
    };

    fn node(id: &str) -> Candidate {
        Candidate {
            id: id.into(),
            online: true,
            accept_auto: true,
            cpus: 4,
            memory_mib: 8192,
            load1: 0.5,
            cpu_overcommit: 4.0,
            memory_overcommit: 1.0,
            used_memory_mib: 0,
            used_vcpus: 0,
            guests: 0,
            bridges: None,
        }
    }

    fn need(memory_mib: u64) -> Need<'static> {
        Need {
            memory_mib,
            cpus: 1,
            bridge: None,
        }
    }

    #[test]
    fn a_batch_spreads_lightest_first() {
        let mut nodes = vec![node("a"), node("b"), node("c")];
        nodes[0].used_memory_mib = 1024;
        let mut counts = std::collections::HashMap::new();
        for _ in 0..30 {
            let id = place(&nodes, need(256), None, &T).unwrap();
            let n = nodes.iter_mut().find(|n| n.id == id).unwrap();
            n.used_memory_mib += 256;
            n.used_vcpus += 1;
            n.guests += 1;
            *counts.entry(id).or_insert(0) += 1;
        }
        // "a" started 1 GiB (four guests) heavier: it gets about four fewer, and at the end
        // no node uses more than one guest's memory above another.
        assert_eq!(counts.values().sum::<i32>(), 30);
        assert!(
            counts["a"] + 3 <= counts["b"].min(counts["c"]),
            "{counts:?}"
        );
        let used: Vec<u64> = nodes.iter().map(|n| n.used_memory_mib).collect();
        assert!(
            used.iter().max().unwrap() - used.iter().min().unwrap() <= 256,
            "{used:?}"
        );
    }

    #[test]
    fn refusals_name_each_node_and_reason() {
        let mut nodes = vec![
            node("off"),
            node("manual"),
            node("full"),
            node("busy"),
            node("cpu"),
        ];
        nodes[0].online = false;
        nodes[1].accept_auto = false;
        nodes[2].used_memory_mib = 7300;
        nodes[3].load1 = 9.0;
        nodes[4].used_vcpus = 16;
        let PlaceError::Refused(r) = place(&nodes, need(256), None, &T).unwrap_err() else {
            panic!("expected a refusal")
        };
        let reasons: Vec<String> = r
            .iter()
            .map(|r| format!("{}: {}", r.node, r.reason))
            .collect();
        assert!(reasons[0].starts_with("off: offline"), "{reasons:?}");
        assert!(reasons[1].contains("automatically"));
        assert!(reasons[2].contains("memory"));
        assert!(reasons[3].contains("load"));
        assert!(reasons[4].contains("vCPUs"));
    }

    #[test]
    fn a_guest_goes_only_where_its_network_is() {
        let mut nodes = vec![node("a"), node("b")];
        nodes[0].bridges = Some(vec!["br-lan".into()]);
        nodes[1].bridges = Some(vec!["br-dmz".into()]);
        let n = Need {
            memory_mib: 256,
            cpus: 1,
            bridge: Some("br-dmz"),
        };
        assert_eq!(place(&nodes, n, None, &T).unwrap(), "b");
        let n = Need {
            memory_mib: 256,
            cpus: 1,
            bridge: Some("br-x"),
        };
        let err = place(&nodes, n, None, &T).unwrap_err().to_string();
        assert!(err.contains("a: has no bridge br-x"), "{err}");
    }

    #[test]
    fn a_node_chosen_by_hand_ignores_the_switch_but_not_capacity() {
        let mut nodes = vec![node("a")];
        nodes[0].accept_auto = false;
        assert_eq!(place(&nodes, need(256), Some("a"), &T).unwrap(), "a");
        assert!(matches!(
            place(&nodes, need(256), None, &T),
            Err(PlaceError::Refused(_))
        ));
        assert!(matches!(
            place(&nodes, need(9000), Some("a"), &T),
            Err(PlaceError::Refused(_))
        ));
        assert_eq!(
            place(&nodes, need(1), Some("zz"), &T),
            Err(PlaceError::UnknownNode("zz".into()))
        );
    }

    #[test]
    fn plugin_opinions_veto_and_reorder() {
        let mut nodes = vec![node("a"), node("b"), node("c")];
        nodes[1].used_memory_mib = 1024;
        nodes[2].used_memory_mib = 2048;
        let need = need(512);
        // Built in, "a" has the most memory left.
        assert_eq!(place(&nodes, need, None, &T).unwrap(), "a");
        // A plugin vetoes "a" and prefers "c".
        let got = place_with(&nodes, need, None, &T, |el| {
            Ok(el
                .iter()
                .map(|c| match c.id.as_str() {
                    "a" => Opinion::Veto("plugin p: no".into()),
                    "c" => Opinion::Score(10.0),
                    _ => Opinion::Score(1.0),
                })
                .collect())
        });
        assert_eq!(got.unwrap(), "c");
        // Every node vetoed: the refusal lists each reason.
        let e = place_with(&nodes, need, None, &T, |el| {
            Ok(el
                .iter()
                .map(|c| Opinion::Veto(format!("plugin p: not {}", c.id)))
                .collect())
        })
        .unwrap_err();
        assert!(e.to_string().contains("b: plugin p: not b"), "{e}");
        // A failing plugin fails placement with its message; a hand-picked node skips plugins.
        let boom = || PluginError::Failed {
            plugin: "p".into(),
            message: "boom".into(),
        };
        let e = place_with(&nodes, need, None, &T, |_| Err(boom())).unwrap_err();
        assert_eq!(e, PlaceError::Plugin(boom()));
        assert_eq!(e.to_string(), "plugin p: boom");
        let got = place_with(&nodes, need, Some("b"), &T, |_| Err(boom()));
        assert_eq!(got.unwrap(), "b");
    }
}
