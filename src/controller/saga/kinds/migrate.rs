//! `guest.migrate` (S65, S76, S96): a running guest moves to another node, live.
//!
//! 1. `reserve` (controller; undo: give back): the target is the node asked for, or the
//!    one placement picks among the others (memory, vCPUs, the guest's bridge). A VNC
//!    port is leased in the target's range, each disk gets its path there (the same path
//!    when both nodes name the same shared storage), and the guest turns `migrating`:
//!    what its nodes report no longer moves its state, and the guest's lock (held by
//!    this operation) answers every other request 409 naming it.
//! 2. `prepare` (target node; undo: `discard_copy`, which never touches a domain
//!    that runs there): the system disk as an overlay on the template (fetched when the
//!    target lacks it), each data disk empty at its size, the seed rebuilt from the
//!    record. Nothing with shared storage.
//! 3. `migrate` (source node; the pivot): libvirt's live migration, with its figures as
//!    progress (`node::migrate`). A cancel aborts libvirt's job and the guest stays
//!    where it was; the step's result decides, because a migration that finished before
//!    the abort landed cannot be unwound. After it, the operation only goes forward.
//! 4. `switch` (controller): the guest's record moves to the target (node, VNC port,
//!    disk paths) and the source's VNC port is given back.
//! 5. `release` (source node): the source's copies of the disks and seed are removed
//!    (not with shared storage) and any definition left there is undefined.
//!
//! Snapshots are refused at the request: they live inside the system disk, and a
//! storage migration copies only the disk's current state.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::alloc;
use crate::controller::placement::{self, PlaceError};
use crate::controller::saga::initplan::init_input;
use crate::controller::saga::steps::{facts_of, guest_of, node_of, StepError};
use crate::controller::store::{self as st, leases, GuestRow, OpRow, StoreError, Tx};
use crate::model::{
    GuestState, MigrationTarget, MigrationTuning, NodeAction, NodeFacts, SubStep, TemplateSource,
};

/// Stored payload: what was asked, then what `reserve` chose.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// The node asked for; None: placement chooses.
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub tuning: MigrationTuning,
    #[serde(default)]
    pub chosen: Option<Chosen>,
}

/// What `reserve` chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    pub from: String,
    pub to: String,
    pub old_vnc_port: Option<u16>,
    pub vnc_port: u16,
    /// Each disk: its record's id, its path on the source, its path on the target.
    pub disks: Vec<(String, String, String)>,
    pub shared_storage: bool,
}

super::steps! {
    pub enum Step {
        Reserve = StepDef::controller("reserve", "choosing the target and reserving its port").undoable(),
        Prepare = StepDef::node("prepare", "preparing the disks on the target").undoable().weight(3).lease_secs(900),
        Migrate = StepDef::node("migrate", "migrating").weight(20).lease_secs(3600).interruptible().pivot(),
        Switch = StepDef::controller("switch", "recording the guest on its new node"),
        Release = StepDef::node("release", "removing the source's copies"),
    }
}

/// `guest.migrate`: move a running guest to another node, live, with its disks.
pub struct Migrate;

impl Kind for Migrate {
    const NAME: &'static str = "guest.migrate";
    const DESCRIPTION: &'static str = "Move a running guest to another node, live: its disks copied unless the storage is shared, its progress from libvirt's job statistics (S65).";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        _p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        Ok(match (step, undo) {
            (Step::Reserve, false) => {
                reserve(cx, &g).await?;
                Effect::Done
            }
            (Step::Reserve, true) => {
                unreserve(cx.tx, cx.op, &g).await?;
                Effect::Done
            }
            (Step::Prepare, undo) => {
                let c = chosen(cx.op)?;
                if c.shared_storage {
                    return Ok(Effect::Done);
                }
                let action = if undo {
                    NodeAction::DiscardCopy {
                        guest_id: g.id.clone(),
                        paths: c.disks.iter().map(|d| d.2.clone()).collect(),
                    }
                } else {
                    prepare(cx.tx, &g, &c).await?
                };
                Effect::Node { node: c.to, action }
            }
            (Step::Migrate, false) => {
                let p = payload(cx.op)?;
                let c = chosen(cx.op)?;
                let facts = facts_of(cx.tx, &c.to).await?;
                Effect::Node {
                    node: c.from.clone(),
                    action: NodeAction::Migrate {
                        guest_id: g.id.clone(),
                        to: Box::new(target(&c, &facts)?),
                        paths: c.disks.iter().map(|d| (d.1.clone(), d.2.clone())).collect(),
                        vnc_port: c.vnc_port,
                        tuning: p.tuning,
                    },
                }
            }
            (Step::Switch, false) => {
                switch(cx.tx, &g, &chosen(cx.op)?).await?;
                Effect::Done
            }
            (Step::Release, false) => release(&g, &chosen(cx.op)?),
            (Step::Migrate | Step::Switch | Step::Release, true) => Effect::Done,
        })
    }

    async fn on_finish(
        tx: &mut Tx<'_>,
        _p: &mut Payload,
        guest: Option<&str>,
        _state: crate::model::OpState,
    ) -> Result<(), StoreError> {
        // However it ended, the guest runs somewhere: its node's reports take over.
        leave_migrating(tx, guest, GuestState::Running).await
    }
}

/// A guest still `migrating` when its move ended is `state` again; what its node
/// reports takes over from there.
pub(super) async fn leave_migrating(
    tx: &mut Tx<'_>,
    guest: Option<&str>,
    state: GuestState,
) -> Result<(), StoreError> {
    if let Some(g) = guest {
        if let Some(row) = st::guest_in(tx, g).await? {
            if row.state == GuestState::Migrating {
                st::set_guest_state(tx, g, state).await?;
            }
        }
    }
    Ok(())
}

pub(super) fn payload(op: &OpRow) -> Result<Payload, StepError> {
    serde_json::from_str(&op.payload)
        .map_err(|e| StepError::failed("payload of guest.migrate is corrupt", e))
}

pub(super) fn chosen(op: &OpRow) -> Result<Chosen, StepError> {
    payload(op)?
        .chosen
        .ok_or_else(|| StepError::Permanent("the migration's target was never chosen".into()))
}

/// The target as the source's agent reaches it.
pub(super) fn target(c: &Chosen, f: &NodeFacts) -> Result<MigrationTarget, StepError> {
    let (Some(uri), Some(address)) = (f.migration_uri.clone(), f.migration_address.clone()) else {
        return Err(StepError::Permanent(format!(
            "node {} runs an agent too old to take migrated guests",
            c.to
        )));
    };
    Ok(MigrationTarget {
        node_id: c.to.clone(),
        libvirt_uri: uri,
        address,
        vnc_listen: f.address.clone(),
        shared_storage: c.shared_storage,
    })
}

/// Chooses the target, leases its VNC port and names the disks' paths there.
async fn reserve(cx: &mut Ctx<'_, '_>, g: &GuestRow) -> Result<(), StepError> {
    reserve_for(cx, g, GuestState::Running).await
}

/// [`reserve`] for a guest that must be in state `want` (shut off for a cold migration).
pub(super) async fn reserve_for(
    cx: &mut Ctx<'_, '_>,
    g: &GuestRow,
    want: GuestState,
) -> Result<(), StepError> {
    let mut p = payload(cx.op)?;
    if p.chosen.is_some() {
        return Ok(()); // an earlier run of this step chose
    }
    if g.state != want {
        return Err(StepError::Permanent(format!(
            "guest {} is {}: this migration takes a guest that is {want}",
            g.name, g.state
        )));
    }
    let from = node_of(g)?;
    let to = choose(cx.tx, &cx.env.thresholds, g, p.node_id.as_deref()).await?;
    let (src, dst) = (facts_of(cx.tx, &from).await?, facts_of(cx.tx, &to).await?);
    let shared = src.shared_storage.is_some()
        && src.shared_storage == dst.shared_storage
        && src.storage_dir == dst.storage_dir;
    let (vmin, vmax) = dst
        .vnc_ports
        .unwrap_or((cx.env.vnc_port_min, cx.env.vnc_port_max));
    let vnc_port = alloc::allocate_vnc(cx.tx, &to, vmin, vmax, &g.id).await?;
    let mut disks = Vec::new();
    for d in st::disks_of_in(cx.tx, &g.id).await? {
        let there = if shared {
            d.path.clone()
        } else {
            moved_path(&d.path, &dst.storage_dir)?
        };
        disks.push((d.id, d.path, there));
    }
    p.chosen = Some(Chosen {
        from,
        to,
        old_vnc_port: g.vnc_port.map(|v| v as u16),
        vnc_port,
        disks,
        shared_storage: shared,
    });
    cx.op.payload = serde_json::to_string(&p).map_err(StoreError::from)?;
    st::set_guest_state(cx.tx, &g.id, GuestState::Migrating).await?;
    Ok(())
}

/// The node asked for, checked; or the best other node placement finds. The API asks
/// it too, so that a target that cannot be is refused before anything starts.
pub async fn choose(
    tx: &mut Tx<'_>,
    thresholds: &placement::Thresholds,
    g: &GuestRow,
    asked: Option<&str>,
) -> Result<String, StepError> {
    let from = node_of(g)?;
    if asked == Some(from.as_str()) {
        return Err(StepError::Permanent(format!(
            "guest {} is already on node {from}",
            g.name
        )));
    }
    let bridge = crate::controller::saga::steps::guest_bridge(tx, g).await?;
    let candidates: Vec<placement::Candidate> = super::create::candidates(tx)
        .await?
        .into_iter()
        .filter(|c| c.id != from)
        .collect();
    if candidates.is_empty() {
        return Err(StepError::Permanent(format!(
            "guest {} is on the only node: there is nowhere to move it",
            g.name
        )));
    }
    let need = placement::Need {
        memory_mib: g.memory_mib.max(0) as u64,
        cpus: g.cpus.max(0) as u64,
        bridge: bridge.as_deref(),
    };
    let to = match placement::place(&candidates, need, asked, thresholds) {
        Ok(n) => n,
        Err(PlaceError::Refused(r)) => {
            let why: Vec<String> = r
                .into_iter()
                .map(|r| format!("node {}: {}", r.node, r.reason))
                .collect();
            return Err(StepError::Permanent(format!(
                "no node can take guest {}: {}",
                g.name,
                why.join("; ")
            )));
        }
        Err(e) => return Err(StepError::failed("choosing the target", e)),
    };
    let facts = facts_of(tx, &to).await?;
    if facts.migration_uri.is_none() {
        return Err(StepError::Permanent(format!(
            "node {to} runs an agent too old to take migrated guests"
        )));
    }
    Ok(to)
}

/// `release`: the source's copies go (only its definition with shared storage).
pub(super) fn release(g: &GuestRow, c: &Chosen) -> Effect {
    let paths = if c.shared_storage {
        vec![]
    } else {
        c.disks.iter().map(|d| d.1.clone()).collect()
    };
    Effect::Node {
        node: c.from.clone(),
        action: NodeAction::DiscardCopy {
            guest_id: g.id.clone(),
            paths,
        },
    }
}

/// `path`'s file in the target's disk-image directory.
fn moved_path(path: &str, storage_dir: &str) -> Result<String, StepError> {
    let name = std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| StepError::Permanent(format!("disk path {path} has no file name")))?;
    Ok(format!("{}/{name}", storage_dir.trim_end_matches('/')))
}

async fn unreserve(tx: &mut Tx<'_>, op: &OpRow, g: &GuestRow) -> Result<(), StepError> {
    unreserve_to(tx, op, g, GuestState::Running).await
}

/// Gives the target's port back; the guest is `was` again where it was (its node's
/// reports take over again).
pub(super) async fn unreserve_to(
    tx: &mut Tx<'_>,
    op: &OpRow,
    g: &GuestRow,
    was: GuestState,
) -> Result<(), StepError> {
    if let Some(c) = payload(op)?.chosen {
        leases::release_vnc(tx, &c.to, i64::from(c.vnc_port), &g.id).await?;
    }
    if g.state == GuestState::Migrating {
        st::set_guest_state(tx, &g.id, was).await?;
    }
    Ok(())
}

/// The target's copies, made before the migration: disks to copy into, and the seed.
async fn prepare(tx: &mut Tx<'_>, g: &GuestRow, c: &Chosen) -> Result<NodeAction, StepError> {
    let data: std::collections::HashMap<String, i64> = st::data_disks_of_in(tx, &g.id)
        .await?
        .into_iter()
        .map(|d| (d.id, d.size_mib))
        .collect();
    let kinds: std::collections::HashMap<String, String> = st::disks_of_in(tx, &g.id)
        .await?
        .into_iter()
        .map(|d| (d.id, d.kind))
        .collect();
    let mut steps = Vec::new();
    for (id, _, there) in &c.disks {
        let action = match kinds.get(id).map(String::as_str) {
            Some("system") => NodeAction::CreateDisk {
                path: there.clone(),
                template_path: g.template_path.clone(),
                template: Some(TemplateSource {
                    id: g.template_id.clone(),
                    sha256: st::template_sha256_in(tx, &g.template_id).await?,
                }),
            },
            Some("seed") => NodeAction::BuildSeed {
                path: there.clone(),
                init: Box::new(init_input(tx, g, None).await?),
                replace: true,
            },
            _ => NodeAction::CreateVolume {
                path: there.clone(),
                size_mib: data.get(id).copied().unwrap_or(0).max(1) as u64,
            },
        };
        steps.push(SubStep {
            stage: "preparing a disk on the target".into(),
            action,
        });
    }
    Ok(NodeAction::Sequence { steps })
}

/// The record follows the guest: node, VNC port, disk paths.
async fn switch(tx: &mut Tx<'_>, g: &GuestRow, c: &Chosen) -> Result<(), StepError> {
    switch_to(tx, g, c, GuestState::Running).await
}

/// [`switch`], the guest `now` on its new node.
pub(super) async fn switch_to(
    tx: &mut Tx<'_>,
    g: &GuestRow,
    c: &Chosen,
    now: GuestState,
) -> Result<(), StepError> {
    if g.node_id.as_deref() == Some(c.to.as_str()) {
        return Ok(()); // already switched
    }
    st::move_guest(tx, &g.id, &c.to, c.vnc_port).await?;
    for (id, _, there) in &c.disks {
        st::move_disk(tx, id, &c.to, there).await?;
    }
    if let Some(old) = c.old_vnc_port {
        leases::release_vnc(tx, &c.from, i64::from(old), &g.id).await?;
    }
    st::set_guest_state(tx, &g.id, now).await?;
    crate::controller::store::events::append(
        tx,
        "guest.migrated",
        &g.id,
        &serde_json::json!({"guest_id": g.id, "from": c.from, "to": c.to}),
    )
    .await?;
    Ok(())
}
