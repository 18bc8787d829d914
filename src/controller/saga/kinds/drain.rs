//! `node.drain` (S65): every guest leaves a node, for maintenance.
//!
//! 1. `close` (controller; undo: the node's previous setting): the node stops taking
//!    automatically placed guests.
//! 2. `plan` (controller; the pivot): each guest on the node gets a target, chosen as
//!    placement chooses, counting the guests already planned there; a guest that cannot
//!    move is named with the reason (stopped, snapshots, busy, no node can take it).
//!    After it the drain only goes forward: the node stays closed whatever happens.
//! 3. `move` (controller): one `guest.migrate` per guest (`guest.migrate_cold` for a
//!    stopped one), each its own operation, at
//!    most [`AT_ONCE`] at a time; the step runs again at each sweep until every one has
//!    ended. A cancel of the drain cancels the migrations that have not ended (each
//!    leaves its guest where it was) and starts no more. The drain succeeds when every
//!    guest moved; otherwise it fails, naming each guest that did not move and why.

use serde::{Deserialize, Serialize};

use super::migrate;
use super::{Ctx, Effect, Kind, Request, StepDef};
use crate::controller::placement::{self, Candidate, PlaceError};
use crate::controller::saga::launch::{create_op, LaunchError, Target};
use crate::controller::saga::steps::{guest_bridge, StepError};
use crate::controller::store::{self as st, GuestRow, OpRow, StoreError, Tx};
use crate::model::{GuestState, MigrationTuning, OpState};

/// Migrations a drain runs at once: each one saturates the link it uses.
pub const AT_ONCE: usize = 2;

/// Stored payload: the plan, and how each guest's move went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Whether the node took automatic placement before the drain.
    #[serde(default)]
    pub accepted_auto: Option<bool>,
    #[serde(default)]
    pub planned: bool,
    #[serde(default)]
    pub moves: Vec<Move>,
    /// Guests that cannot move, with the reason.
    #[serde(default)]
    pub unmovable: Vec<Unmovable>,
    #[serde(default)]
    pub cancelled: bool,
}

/// One guest's move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Move {
    pub guest_id: String,
    pub guest: String,
    pub to: String,
    /// Its `guest.migrate` once started.
    #[serde(default)]
    pub op_id: Option<String>,
    /// How it ended: `succeeded`, `failed`, `cancelled`; None while it runs.
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unmovable {
    pub guest_id: String,
    pub guest: String,
    pub reason: String,
}

super::steps! {
    pub enum Step {
        Close = StepDef::controller("close", "closing the node to new guests").undoable(),
        Plan = StepDef::controller("plan", "choosing where each guest goes").pivot(),
        Move = StepDef::controller("move", "moving the guests").weight(20),
    }
}

/// `node.drain`: move every guest off a node, each as its own migration.
pub struct Drain;

impl Kind for Drain {
    const NAME: &'static str = "node.drain";
    const DESCRIPTION: &'static str = "Move every guest off a node, each as its own live migration; the node stops taking new guests (S65).";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        _p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let node = cx.op.node_id.clone().unwrap_or_default();
        let mut p = payload(cx.op)?;
        match (step, undo) {
            (Step::Close, false) if p.accepted_auto.is_none() => {
                p.accepted_auto = st::set_accept_auto_in(cx.tx, &node, false).await?;
            }
            (Step::Close, true) => {
                if let Some(before) = p.accepted_auto {
                    st::set_accept_auto_in(cx.tx, &node, before).await?;
                }
            }
            (Step::Plan, false) if !p.planned => {
                let guests = st::guests_of_node_in(cx.tx, &node).await?;
                (p.moves, p.unmovable) = plan(cx.tx, &cx.env.thresholds, &node, &guests).await?;
                p.planned = true;
            }
            (Step::Move, false) => {
                let waiting = advance(cx, &mut p).await?;
                save(cx.op, &p)?;
                return match waiting {
                    Some(w) => Err(StepError::Waiting(w)),
                    None => finished(&p),
                };
            }
            _ => {}
        }
        save(cx.op, &p)?;
        Ok(Effect::Done)
    }
}

fn payload(op: &OpRow) -> Result<Payload, StepError> {
    serde_json::from_str(&op.payload)
        .map_err(|e| StepError::failed("payload of node.drain is corrupt", e))
}

fn save(op: &mut OpRow, p: &Payload) -> Result<(), StepError> {
    op.payload = serde_json::to_string(p).map_err(StoreError::from)?;
    Ok(())
}

/// Why guest `g` cannot move at all, whatever the target.
async fn unmovable(tx: &mut Tx<'_>, g: &GuestRow) -> Result<Option<String>, StepError> {
    if let Some(holder) = &g.lock_op {
        return Ok(Some(format!("busy with operation {holder}")));
    }
    if g.state == GuestState::Shutoff {
        return Ok(None); // it moves cold, snapshots and all
    }
    if g.state != GuestState::Running {
        return Ok(Some(format!(
            "{}: a guest migrates running (live) or shut off (cold); wait for it to settle",
            g.state
        )));
    }
    let snapshots = st::snapshot_count_in(tx, &g.id).await?;
    if snapshots > 0 {
        return Ok(Some(format!(
            "running with {snapshots} snapshot(s), which a live migration cannot carry; \
             shut it down to move it cold"
        )));
    }
    Ok(None)
}

/// A target for each guest that can move, counting what is planned on each node.
pub async fn plan(
    tx: &mut Tx<'_>,
    thresholds: &placement::Thresholds,
    node: &str,
    guests: &[GuestRow],
) -> Result<(Vec<Move>, Vec<Unmovable>), StepError> {
    let mut candidates: Vec<Candidate> = super::create::candidates(tx)
        .await?
        .into_iter()
        .filter(|c| c.id != node)
        .collect();
    let (mut moves, mut stay) = (Vec::new(), Vec::new());
    for g in guests {
        let mut refuse = |reason: String| {
            stay.push(Unmovable {
                guest_id: g.id.clone(),
                guest: g.name.clone(),
                reason,
            })
        };
        if let Some(why) = unmovable(tx, g).await? {
            refuse(why);
            continue;
        }
        let bridge = guest_bridge(tx, g).await?;
        let need = placement::Need {
            memory_mib: g.memory_mib.max(0) as u64,
            cpus: g.cpus.max(0) as u64,
            bridge: bridge.as_deref(),
        };
        match placement::place(&candidates, need, None, thresholds) {
            Ok(to) => {
                if let Some(c) = candidates.iter_mut().find(|c| c.id == to) {
                    c.used_memory_mib += need.memory_mib;
                    c.used_vcpus += need.cpus;
                    c.guests += 1;
                }
                moves.push(Move {
                    guest_id: g.id.clone(),
                    guest: g.name.clone(),
                    to,
                    op_id: None,
                    outcome: None,
                    error: None,
                });
            }
            Err(PlaceError::Refused(r)) if r.is_empty() => refuse("no other node is online".into()),
            Err(PlaceError::Refused(r)) => {
                let why: Vec<String> = r
                    .into_iter()
                    .map(|r| format!("node {}: {}", r.node, r.reason))
                    .collect();
                refuse(format!("no node can take it: {}", why.join("; ")))
            }
            Err(e) => return Err(StepError::failed("placing the drained guests", e)),
        }
    }
    Ok((moves, stay))
}

/// Records the migrations that ended, cancels or starts more; what it still waits for.
async fn advance(cx: &mut Ctx<'_, '_>, p: &mut Payload) -> Result<Option<String>, StepError> {
    let cancel = cx.op.cancel_requested;
    let mut running = 0;
    for m in p.moves.iter_mut().filter(|m| m.outcome.is_none()) {
        let Some(id) = m.op_id.clone() else { continue };
        let Some(child) = st::op_in(cx.tx, &id).await? else {
            m.outcome = Some("failed".into());
            m.error = Some(format!("operation {id} is gone"));
            continue;
        };
        let state = child.op_state();
        if state.is_terminal() {
            m.outcome = Some(state.as_str().to_string());
            m.error = child.error.clone();
        } else {
            if cancel && !p.cancelled {
                st::request_cancel_in(cx.tx, &id).await?;
            }
            running += 1;
        }
    }
    if cancel {
        p.cancelled = true;
        for m in p.moves.iter_mut().filter(|m| m.op_id.is_none()) {
            m.outcome = Some("cancelled".into());
            m.error = Some("the drain was cancelled before it started".into());
        }
    }
    for m in p.moves.iter_mut().filter(|m| m.op_id.is_none()) {
        if running >= AT_ONCE {
            break;
        }
        match start_move(cx, m).await {
            Ok(id) => {
                m.op_id = Some(id);
                running += 1;
            }
            Err(why) => {
                m.outcome = Some("failed".into());
                m.error = Some(why);
            }
        }
    }
    let left = p.moves.iter().filter(|m| m.outcome.is_none()).count();
    Ok((left > 0).then(|| format!("{left} of {} guest(s) still moving", p.moves.len())))
}

/// Starts guest `m`'s migration to its planned node; why not, when it cannot start.
async fn start_move(cx: &mut Ctx<'_, '_>, m: &Move) -> Result<String, String> {
    let p = migrate::Payload {
        node_id: Some(m.to.clone()),
        tuning: MigrationTuning::default(),
        chosen: None,
    };
    // Stopped since the plan, or stopped all along: it moves cold.
    let stopped = matches!(
        st::guest_in(cx.tx, &m.guest_id).await,
        Ok(Some(g)) if g.state == GuestState::Shutoff
    );
    let req = if stopped {
        Request::GuestMigrateCold(p)
    } else {
        Request::GuestMigrate(p)
    };
    let by = st::Requester {
        id: cx.op.requested_by_id.as_deref(),
        name: &cx.op.requested_by,
    };
    match create_op(
        &cx.env.catalog,
        cx.tx,
        &req,
        Target::Guest(&m.guest_id),
        by,
        true,
    )
    .await
    {
        Ok(op) => Ok(op.id),
        Err(LaunchError::Store(e)) => Err(format!("starting its migration: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// The drain's end: succeeded when every guest moved, else failed naming each that did
/// not, and why.
fn finished(p: &Payload) -> Result<Effect, StepError> {
    let mut stayed: Vec<String> = p
        .unmovable
        .iter()
        .map(|u| format!("{}: {}", u.guest, u.reason))
        .collect();
    stayed.extend(
        p.moves
            .iter()
            .filter(|m| m.outcome.as_deref() != Some(OpState::Succeeded.as_str()))
            .map(|m| {
                let why = m.error.clone().unwrap_or_else(|| "did not move".into());
                format!("{}: {why}", m.guest)
            }),
    );
    if stayed.is_empty() {
        return Ok(Effect::Done);
    }
    Err(StepError::Permanent(format!(
        "{} of {} guest(s) stay on the node: {}",
        stayed.len(),
        p.moves.len() + p.unmovable.len(),
        stayed.join("; ")
    )))
}
