//! `guest.create`: place, allocate, build the guest on its node, record it.
//!
//! 1. `place` (controller): choose the node (`controller::placement`); undo forgets it.
//! 2. `allocate` (controller): IP, VNC port, MAC under unique constraints, and the disk
//!    records; undo releases them, or keeps them marked for cleanup when a node-side undo
//!    before it could not complete (the node may still use them).
//! 3. `build` (node): one job of five sub-steps, each idempotent and each reported as
//!    progress when it ends: create the system disk, build the init seed, define the
//!    domain, start it, and (images without cloud-init) apply the init plan through the
//!    guest agent. One job instead of five saves four round trips through the
//!    controller's single writer per guest. A failure at any sub-step fails the step,
//!    and its undo removes everything the sub-steps may have made (stop, undefine by the
//!    guest's uuid, remove both recorded files), whichever of them ran.
//! 4. `finish` (controller): the guest reads `running`.
//!
//! On finish: cancelled before anything existed, the record goes; failed, it reads
//! `error` (the user deletes it); succeeded, its boot jobs are due.

use super::{Ctx, Effect, Kind, NoPayload, StepDef};
use crate::controller::alloc;
use crate::controller::saga::initplan::init_input;
use crate::controller::saga::steps::{
    disk_path, domain_spec, facts_of, guest_of, seed_path, system_disk_path, StepEnv, StepError,
};
use crate::controller::store::{self as st, events, GuestRow, OpRow, StoreError, Tx};
use crate::model::{new_id, now_ms, GuestState, NodeAction, OpState, SubStep, TemplateSource};

super::steps! {
    pub enum Step {
        Place = StepDef::controller("place", "placing").undoable(),
        Allocate = StepDef::controller("allocate", "allocating IP, VNC port and MAC").undoable(),
        Build = StepDef::node("build", "building the guest").undoable().weight(12),
        Finish = StepDef::controller("finish", "recording"),
    }
}

/// How long the agent delivery waits for the guest agent to answer.
const AGENT_WAIT_SECS: u64 = 600;

/// `guest.create`: place, allocate, build the disk and seed, define and start a new guest.
pub struct Create;

impl Kind for Create {
    const NAME: &'static str = "guest.create";
    const DESCRIPTION: &'static str =
        "Place, allocate, build the disk and seed, define and start a new guest.";
    const BOOTS_GUEST: bool = true;
    type Payload = NoPayload;
    type Step = Step;

    async fn on_finish(
        tx: &mut Tx<'_>,
        _p: &mut NoPayload,
        guest: Option<&str>,
        state: OpState,
    ) -> Result<(), StoreError> {
        match guest {
            Some(g) => end(tx, g, state).await,
            None => Ok(()),
        }
    }

    async fn run(
        cx: &mut Ctx<'_, '_>,
        _p: &NoPayload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        Ok(match (step, undo) {
            (Step::Place, false) => {
                let node = place(cx.tx, cx.env, cx.op, &g).await?;
                st::set_guest_node(cx.tx, &g.id, Some(&node)).await?;
                cx.op.node_id = Some(node);
                Effect::Done
            }
            (Step::Place, true) => {
                if !cx.keep_leases {
                    st::set_guest_node(cx.tx, &g.id, None).await?;
                }
                Effect::Done
            }
            (Step::Allocate, false) => {
                allocate(cx.tx, cx.env, &g).await?;
                Effect::Done
            }
            (Step::Allocate, true) => {
                release(cx.tx, &g.id, cx.keep_leases).await?;
                Effect::Done
            }
            (Step::Build, false) => match &g.node_id {
                Some(node) => Effect::Node {
                    node: node.clone(),
                    action: build(cx.tx, &g, node).await?,
                },
                // The guest never got a node: nothing exists anywhere to act on.
                None => Effect::Done,
            },
            (Step::Build, true) => match &g.node_id {
                Some(node) => Effect::Node {
                    node: node.clone(),
                    action: unbuild(cx.tx, &g).await?,
                },
                None => Effect::Done,
            },
            (Step::Finish, false) => {
                st::finish_creating(cx.tx, &g.id).await?;
                Effect::Done
            }
            (Step::Finish, true) => Effect::Done,
        })
    }
}

/// The build job: disk, seed, domain, start, agent delivery.
async fn build(tx: &mut Tx<'_>, g: &GuestRow, node: &str) -> Result<NodeAction, StepError> {
    let disks = st::disks_of_in(tx, &g.id).await?;
    let init = Box::new(init_input(tx, g, None).await?);
    let sub = |stage: &str, action: NodeAction| SubStep {
        stage: stage.into(),
        action,
    };
    Ok(NodeAction::Sequence {
        steps: vec![
            sub(
                "creating the system disk",
                NodeAction::CreateDisk {
                    path: disk_path(&disks, "system")
                        .ok_or_else(|| StepError::Permanent("no system disk recorded".into()))?,
                    template_path: g.template_path.clone(),
                    template: Some(TemplateSource {
                        id: g.template_id.clone(),
                        sha256: st::template_sha256_in(tx, &g.template_id).await?,
                    }),
                },
            ),
            sub(
                "building the init seed",
                NodeAction::BuildSeed {
                    path: disk_path(&disks, "seed")
                        .ok_or_else(|| StepError::Permanent("no seed recorded".into()))?,
                    init: init.clone(),
                    replace: false,
                },
            ),
            sub(
                "defining the domain",
                NodeAction::Define {
                    spec: Box::new(domain_spec(tx, g, node, g.bandwidth()).await?),
                },
            ),
            sub(
                "starting",
                NodeAction::Start {
                    guest_id: g.id.clone(),
                },
            ),
            sub(
                "applying the init plan through the guest agent",
                NodeAction::AgentInit {
                    guest_id: g.id.clone(),
                    init,
                    wait_secs: AGENT_WAIT_SECS,
                },
            ),
        ],
    })
}

/// The build's undo: whatever of it exists goes, in reverse order. Each removal is a no-op
/// when its object is already gone, so it fits a build that stopped anywhere.
async fn unbuild(tx: &mut Tx<'_>, g: &GuestRow) -> Result<NodeAction, StepError> {
    let disks = st::disks_of_in(tx, &g.id).await?;
    let sub = |stage: &str, action: NodeAction| SubStep {
        stage: stage.into(),
        action,
    };
    let mut steps = vec![
        sub(
            "stopping the domain",
            NodeAction::Destroy {
                guest_id: g.id.clone(),
            },
        ),
        sub(
            "undefining the domain",
            NodeAction::Undefine {
                guest_id: g.id.clone(),
            },
        ),
    ];
    for (kind, stage) in [
        ("seed", "removing the init seed"),
        ("system", "removing the system disk"),
    ] {
        if let Some(path) = disk_path(&disks, kind) {
            steps.push(sub(stage, NodeAction::RemoveFile { path }));
        }
    }
    Ok(NodeAction::Sequence { steps })
}

/// Returns a guest's leases and forgets its allocation, or, with `keep`, leaves them held
/// and marked for cleanup: the janitor frees them once the node confirms its leftovers
/// are gone.
pub async fn release(tx: &mut Tx<'_>, guest: &str, keep: bool) -> Result<(), StepError> {
    if keep {
        alloc::mark_for_cleanup(tx, guest).await?;
    } else {
        alloc::release_all(tx, guest).await?;
        st::clear_guest_allocation(tx, guest).await?;
    }
    Ok(())
}

async fn end(tx: &mut Tx<'_>, guest: &str, state: OpState) -> Result<(), StoreError> {
    match state {
        OpState::Cancelled => {
            if !alloc::held_for_cleanup(tx, guest).await? {
                // Cancelled before it existed anywhere: nothing to keep.
                st::delete_guest(tx, guest).await?;
                return Ok(());
            }
            set_error(tx, guest).await
        }
        OpState::Failed => set_error(tx, guest).await,
        _ => Ok(()),
    }
}

pub async fn set_error(tx: &mut Tx<'_>, guest: &str) -> Result<(), StoreError> {
    if st::set_guest_state(tx, guest, GuestState::Error).await? {
        events::append(
            tx,
            "guest.state",
            guest,
            &serde_json::json!({"guest_id": guest, "state": "error"}),
        )
        .await?;
    }
    Ok(())
}

/// Every node as placement sees it: its facts and what its guests already use.
pub async fn candidates(
    tx: &mut Tx<'_>,
) -> Result<Vec<crate::controller::placement::Candidate>, StepError> {
    use crate::model::NodeFacts;
    Ok(st::node_loads(tx)
        .await?
        .into_iter()
        .map(|n| {
            let f: NodeFacts = serde_json::from_str(&n.facts).unwrap_or_default();
            crate::controller::placement::Candidate {
                id: n.id,
                online: n.online,
                accept_auto: n.accept_auto,
                cpus: f.cpus.max(1),
                memory_mib: f.memory_mib,
                load1: f.load1,
                cpu_overcommit: f.cpu_overcommit.unwrap_or(16.0),
                memory_overcommit: f.memory_overcommit.unwrap_or(1.0),
                used_memory_mib: n.used_memory_mib.max(0) as u64,
                used_vcpus: n.used_vcpus.max(0) as u64,
                guests: n.guests.max(0) as u64,
                // Nodes that list their bridges are held to them.
                bridges: (!f.bridges.is_empty()).then_some(f.bridges),
            }
        })
        .collect())
}

/// Chooses the node (see `controller::placement`). Waiting for a node that is not there
/// yet is transient for a grace period (a fresh `corral up`, a node restarting); a node
/// that is there but cannot take the guest is a permanent refusal naming the reason.
async fn place(
    tx: &mut Tx<'_>,
    env: &StepEnv,
    op: &OpRow,
    g: &GuestRow,
) -> Result<String, StepError> {
    use crate::controller::placement::{self, Candidate, PlaceError};
    let candidates = candidates(tx).await?;
    let young = now_ms() - op.created_at < env.placement_grace_ms;
    let pool_bridge = match &g.pool_id {
        Some(p) => st::pool_in(tx, p)
            .await?
            .map(|p| p.bridge)
            .filter(|b| !b.is_empty()),
        None => None,
    };
    let need = placement::Need {
        memory_mib: g.memory_mib as u64,
        cpus: g.cpus as u64,
        bridge: pool_bridge.as_deref(),
    };
    let request = serde_json::json!({"guest_id": g.id, "name": g.name, "cpus": g.cpus,
        "memory_mib": g.memory_mib, "pool_id": g.pool_id, "template_id": g.template_id,
        "os_type": g.os_type});
    let opinions = |eligible: &[&Candidate]| plugin_opinions(&env.plugins, &request, eligible);
    match placement::place_with(
        &candidates,
        need,
        g.requested_node.as_deref(),
        &env.thresholds,
        opinions,
    ) {
        Ok(node) => Ok(node),
        Err(PlaceError::NoNodes) if young => Err(StepError::Transient(
            "waiting for a node to register".into(),
        )),
        Err(PlaceError::Refused(r)) if young && r.iter().all(|r| r.reason == "offline") => Err(
            StepError::Transient("waiting for a node to come online".into()),
        ),
        Err(e) => Err(StepError::failed("placing the guest", e)),
    }
}

/// Placement plugins' verdicts on the eligible nodes (all zero without plugins).
fn plugin_opinions(
    plugins: &crate::controller::plugins::Plugins,
    request: &serde_json::Value,
    eligible: &[&crate::controller::placement::Candidate],
) -> Result<Vec<crate::controller::placement::Opinion>, crate::controller::plugins::PluginError> {
    use crate::controller::placement::Opinion;
    use crate::controller::plugins::Verdict;
    if !plugins.has_placement() {
        return Ok(vec![Opinion::Score(0.0); eligible.len()]);
    }
    let nodes: Vec<serde_json::Value> = eligible
        .iter()
        .map(|c| {
            serde_json::json!({"id": c.id, "cpus": c.cpus, "memory_mib": c.memory_mib,
                "used_memory_mib": c.used_memory_mib, "used_vcpus": c.used_vcpus,
                // What the node has left for guests: its memory less what its guests have.
                "free_memory_mib": c.memory_mib.saturating_sub(c.used_memory_mib),
                "guests": c.guests, "load1": c.load1})
        })
        .collect();
    let verdicts = plugins.score(request, &nodes)?;
    Ok(verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Score(s) => Opinion::Score(s),
            Verdict::Veto { plugin, reason } => Opinion::Veto(format!("plugin {plugin}: {reason}")),
        })
        .collect())
}

async fn allocate(tx: &mut Tx<'_>, env: &StepEnv, g: &GuestRow) -> Result<(), StepError> {
    let node = g
        .node_id
        .clone()
        .ok_or_else(|| StepError::Permanent("guest has no node".into()))?;
    let facts = facts_of(tx, &node).await?;
    // Pools: the requested one, else every pool in name order; no pools at all means DHCP.
    let pools: Vec<st::PoolRow> = match &g.pool_id {
        Some(p) => st::pool_in(tx, p).await?.into_iter().collect(),
        None => st::pools_in(tx).await?,
    };
    let (pool_id, ip) = if pools.is_empty() {
        if g.requested_ip.is_some() {
            return Err(StepError::Permanent(
                "an IP was requested but no IP pool exists".into(),
            ));
        }
        (None, None)
    } else {
        let (pool, ip) = alloc::allocate_ip(tx, &pools, g.requested_ip.as_deref(), &g.id).await?;
        (Some(pool.id), Some(ip.to_string()))
    };
    // The node's own range when it reports one (allocation is per node).
    let (vmin, vmax) = facts
        .vnc_ports
        .unwrap_or((env.vnc_port_min, env.vnc_port_max));
    let port = alloc::allocate_vnc(tx, &node, vmin, vmax, &g.id).await?;
    let mac = alloc::allocate_mac(tx, &g.id).await?;
    st::set_guest_allocation(
        tx,
        &g.id,
        &st::Allocation {
            pool_id: pool_id.as_deref(),
            ip: ip.as_deref(),
            vnc_port: port,
            mac: &mac,
        },
    )
    .await?;
    let now = now_ms();
    for (kind, path, backing) in [
        (
            "system",
            system_disk_path(&facts.storage_dir, &g.id),
            Some(g.template_path.clone()),
        ),
        ("seed", seed_path(&facts.storage_dir, &g.id), None),
    ] {
        st::insert_disk(
            tx,
            &st::DiskRow {
                id: new_id(),
                guest_id: Some(g.id.clone()),
                node_id: node.clone(),
                path,
                kind: kind.into(),
                backing,
                created_at: now,
            },
        )
        .await?;
    }
    Ok(())
}
