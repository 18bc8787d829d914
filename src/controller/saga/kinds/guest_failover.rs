//! `guest.failover` (S74): an HA guest whose node was fenced starts on another node,
//! from its disks on shared storage. Started by `node.failover`, one per guest, after
//! the fence was confirmed, never before.
//!
//! 1. `reserve` (controller; undo: give back): the guest is still recorded on the fenced
//!    node and `unknown`; the target is the node asked for or the one placement picks
//!    among the online nodes that see the same shared storage (same `shared_storage`
//!    name and `storage_dir`), with the memory, vCPUs and bridge; a VNC port is leased
//!    there and the guest turns `migrating` (its lock answers every other request 409).
//! 2. `define` (target node; undo: undefine there, never touching the disks, which are
//!    the guest's only ones): the definition rendered from the record, its HA mark
//!    included, with each attached data disk and its I/O limits.
//! 3. `start` (target node; the pivot): once it runs there, nothing unwinds.
//! 4. `switch` (controller): the record moves (node, VNC port, disks), the fenced node's
//!    port is given back, and the fenced node's cleanup list gets the old definition
//!    (destroy, undefine; its disks are shared and stay), which runs first thing when
//!    that node returns, so it never starts the old copy.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::alloc;
use crate::controller::placement::{self, PlaceError};
use crate::controller::saga::steps::{domain_spec, facts_of, guest_bridge, guest_of, StepError};
use crate::controller::store::{self as st, events, ha, leases, GuestRow, OpRow, StoreError, Tx};
use crate::model::{GuestState, NodeAction, SubStep};

/// Stored payload: the fenced node, the node asked for, then what `reserve` chose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub from: String,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub chosen: Option<Chosen>,
}

/// What `reserve` chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    pub to: String,
    pub vnc_port: u16,
    pub old_vnc_port: Option<u16>,
}

super::steps! {
    pub enum Step {
        Reserve = StepDef::controller("reserve", "choosing a node and reserving its port").undoable(),
        Define = StepDef::node("define", "defining the guest on its new node").undoable().weight(2),
        Start = StepDef::node("start", "starting it there").weight(3).pivot(),
        Switch = StepDef::controller("switch", "recording the guest on its new node"),
    }
}

/// `guest.failover`: restart an HA guest of a fenced node on another node.
pub struct GuestFailover;

impl Kind for GuestFailover {
    const NAME: &'static str = "guest.failover";
    const DESCRIPTION: &'static str = "Restart an HA guest of a fenced node on another node that sees the same shared storage (S74).";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        Ok(match (step, undo) {
            (Step::Reserve, false) => {
                reserve(cx, p, &g).await?;
                Effect::Done
            }
            (Step::Reserve, true) => {
                if let Some(c) = chosen_of(cx.op)? {
                    leases::release_vnc(cx.tx, &c.to, i64::from(c.vnc_port), &g.id).await?;
                }
                if g.state == GuestState::Migrating {
                    st::set_guest_state(cx.tx, &g.id, GuestState::Unknown).await?;
                }
                Effect::Done
            }
            (Step::Define, false) => define(cx.tx, &g, &chosen(cx.op)?).await?,
            (Step::Define, true) => Effect::Node {
                node: chosen(cx.op)?.to,
                action: NodeAction::Undefine { guest_id: g.id },
            },
            (Step::Start, false) => Effect::Node {
                node: chosen(cx.op)?.to,
                action: NodeAction::Start { guest_id: g.id },
            },
            (Step::Switch, false) => {
                switch(cx.tx, cx.op, p, &g, &chosen(cx.op)?).await?;
                Effect::Done
            }
            (Step::Start | Step::Switch, true) => Effect::Done,
        })
    }

    async fn on_finish(
        tx: &mut Tx<'_>,
        _p: &mut Payload,
        guest: Option<&str>,
        _state: crate::model::OpState,
    ) -> Result<(), StoreError> {
        // Not restarted: it is still the fenced node's, state unknown.
        super::migrate::leave_migrating(tx, guest, GuestState::Unknown).await
    }
}

fn payload(op: &OpRow) -> Result<Payload, StepError> {
    serde_json::from_str(&op.payload)
        .map_err(|e| StepError::failed("payload of guest.failover is corrupt", e))
}

fn chosen_of(op: &OpRow) -> Result<Option<Chosen>, StepError> {
    Ok(payload(op)?.chosen)
}

fn chosen(op: &OpRow) -> Result<Chosen, StepError> {
    chosen_of(op)?
        .ok_or_else(|| StepError::Permanent("the guest's new node was never chosen".into()))
}

async fn reserve(cx: &mut Ctx<'_, '_>, p: &Payload, g: &GuestRow) -> Result<(), StepError> {
    if chosen_of(cx.op)?.is_some() {
        return Ok(()); // an earlier run of this step chose
    }
    if g.node_id.as_deref() != Some(p.from.as_str()) || g.state != GuestState::Unknown {
        return Err(StepError::Permanent(format!(
            "guest {} is {} on node {}: only an unknown guest of fenced node {} restarts",
            g.name,
            g.state,
            g.node_id.as_deref().unwrap_or("none"),
            p.from
        )));
    }
    let to = target(cx, p, g).await?;
    let facts = facts_of(cx.tx, &to).await?;
    let (vmin, vmax) = facts
        .vnc_ports
        .unwrap_or((cx.env.vnc_port_min, cx.env.vnc_port_max));
    let vnc_port = alloc::allocate_vnc(cx.tx, &to, vmin, vmax, &g.id).await?;
    let mut full = payload(cx.op)?;
    full.chosen = Some(Chosen {
        to,
        vnc_port,
        old_vnc_port: g.vnc_port.map(|v| v as u16),
    });
    cx.op.payload = serde_json::to_string(&full).map_err(StoreError::from)?;
    // The operation's node is where its node steps go: not the fenced one, which the
    // engine would wait for.
    cx.op.node_id = full.chosen.as_ref().map(|c| c.to.clone());
    st::set_guest_state(cx.tx, &g.id, GuestState::Migrating).await?;
    ha::set_reason_in(cx.tx, &g.id, None).await?;
    Ok(())
}

/// The node asked for, or placement's pick, among the online nodes that see the same
/// shared storage as the fenced one.
async fn target(cx: &mut Ctx<'_, '_>, p: &Payload, g: &GuestRow) -> Result<String, StepError> {
    let from = facts_of(cx.tx, &p.from).await?;
    let Some(share) = from.shared_storage.clone() else {
        return Err(StepError::Permanent(format!(
            "guest {}'s disks are on node {}'s local storage: only a guest on shared storage \
             restarts elsewhere",
            g.name, p.from
        )));
    };
    let mut candidates = Vec::new();
    for c in super::create::candidates(cx.tx).await? {
        if c.id == p.from {
            continue;
        }
        let f = facts_of(cx.tx, &c.id).await?;
        if f.shared_storage.as_deref() == Some(share.as_str()) && f.storage_dir == from.storage_dir
        {
            candidates.push(c);
        }
    }
    if candidates.is_empty() {
        return Err(StepError::Permanent(format!(
            "no other node sees shared storage {share} at {}",
            from.storage_dir
        )));
    }
    let bridge = guest_bridge(cx.tx, g).await?;
    let need = placement::Need {
        memory_mib: g.memory_mib.max(0) as u64,
        cpus: g.cpus.max(0) as u64,
        bridge: bridge.as_deref(),
    };
    match placement::place(&candidates, need, p.to.as_deref(), &cx.env.thresholds) {
        Ok(n) => Ok(n),
        Err(PlaceError::Refused(r)) => {
            let why: Vec<String> = r
                .into_iter()
                .map(|r| format!("node {}: {}", r.node, r.reason))
                .collect();
            Err(StepError::Permanent(format!(
                "no node can take guest {}: {}",
                g.name,
                why.join("; ")
            )))
        }
        Err(e) => Err(StepError::failed("choosing the node", e)),
    }
}

/// The definition from the record on the new node, with its data disks.
async fn define(tx: &mut Tx<'_>, g: &GuestRow, c: &Chosen) -> Result<Effect, StepError> {
    let mut spec = domain_spec(tx, g, &c.to, g.bandwidth()).await?;
    spec.vnc_port = c.vnc_port;
    spec.ha = true;
    let mut steps = vec![SubStep {
        stage: "defining the domain".into(),
        action: NodeAction::Define {
            spec: Box::new(spec),
        },
    }];
    for d in st::data_disks_of_in(tx, &g.id).await? {
        let Some(target) = d.target.clone() else {
            continue;
        };
        steps.push(SubStep {
            stage: format!("attaching disk {}", d.name),
            action: NodeAction::AttachDisk {
                guest_id: g.id.clone(),
                path: d.path.clone(),
                target,
                limits: d.limits(),
            },
        });
    }
    Ok(Effect::Node {
        node: c.to.clone(),
        action: NodeAction::Sequence { steps },
    })
}

/// The record follows the guest; the fenced node's definition goes on its cleanup list.
async fn switch(
    tx: &mut Tx<'_>,
    op: &OpRow,
    p: &Payload,
    g: &GuestRow,
    c: &Chosen,
) -> Result<(), StepError> {
    if g.node_id.as_deref() == Some(c.to.as_str()) {
        return Ok(()); // already switched
    }
    st::move_guest(tx, &g.id, &c.to, c.vnc_port).await?;
    for d in st::disks_of_in(tx, &g.id).await? {
        st::move_disk(tx, &d.id, &c.to, &d.path).await?;
    }
    if let Some(old) = c.old_vnc_port {
        leases::release_vnc(tx, &p.from, i64::from(old), &g.id).await?;
    }
    st::set_guest_state(tx, &g.id, GuestState::Running).await?;
    ha::set_reason_in(tx, &g.id, None).await?;
    let why = format!("restarted on node {} by HA", c.to);
    let gone = NodeAction::Sequence {
        steps: [
            NodeAction::Destroy {
                guest_id: g.id.clone(),
            },
            NodeAction::Undefine {
                guest_id: g.id.clone(),
            },
        ]
        .into_iter()
        .map(|action| SubStep {
            stage: "removing the old copy".into(),
            action,
        })
        .collect(),
    };
    st::add_cleanup(tx, &p.from, Some(&g.id), Some(&op.id), &gone, &why).await?;
    events::append(
        tx,
        "guest.failed_over",
        &g.id,
        &serde_json::json!({"guest_id": g.id, "from": p.from, "to": c.to}),
    )
    .await?;
    Ok(())
}
