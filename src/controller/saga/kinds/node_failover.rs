//! `node.failover` (S74): a node offline for longer than `ha_after_secs` is fenced, and
//! its HA guests restart on other nodes. Started by the engine's sweep (never by hand),
//! once per time the node goes offline, and again every `ha_after_secs` while a fence
//! fails.
//!
//! 1. `fence` (controller): the node's fence command runs (`controller::fence`, outside
//!    any transaction; the step waits for it). A node that came back meanwhile ends the
//!    failover with nothing done. No command, or one that fails or times out, fails the
//!    failover, and each HA guest of the node stays `unknown` with that reason: without a
//!    confirmed fence nothing restarts, because the node might still run them.
//!    Confirmed: the node is recorded fenced.
//! 2. `restart` (controller): one `guest.failover` per HA guest of the node, all at once
//!    (each is a define and a start); the step runs again at each sweep until every one
//!    has ended. It succeeds when every HA guest runs elsewhere; otherwise it fails
//!    naming each guest that did not restart and why, and that guest keeps the reason.
//!    Guests without HA stay `unknown`, and say the node was fenced.
//! 3. `report` (controller): fails the failover when the fence or a restart failed. The
//!    steps before record the reasons and succeed, because a failing step keeps nothing
//!    it wrote.

use serde::{Deserialize, Serialize};

use super::guest_failover;
use super::{Ctx, Effect, Kind, Request, StepDef};
use crate::controller::fence::FenceState;
use crate::controller::saga::launch::{create_op, LaunchError, Target};
use crate::controller::saga::steps::StepError;
use crate::controller::store::{self as st, events, ha, OpRow, StoreError};
use crate::model::OpState;

/// Stored payload: how the fence went, and each HA guest's restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub fenced: bool,
    /// Why nothing was done (the node came back).
    #[serde(default)]
    pub skipped: Option<String>,
    #[serde(default)]
    pub started: bool,
    /// Why the failover fails (the fence, or guests that did not restart); reported by
    /// the last step, so that the reasons written on the guests stay.
    #[serde(default)]
    pub failed: Option<String>,
    #[serde(default)]
    pub restarts: Vec<Restart>,
}

/// One HA guest's restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    pub guest_id: String,
    pub guest: String,
    #[serde(default)]
    pub op_id: Option<String>,
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
}

super::steps! {
    pub enum Step {
        Fence = StepDef::controller("fence", "fencing the node"),
        Restart = StepDef::controller("restart", "restarting its HA guests elsewhere").weight(10),
        Report = StepDef::controller("report", "reporting"),
    }
}

/// `node.failover`: fence an offline node and restart its HA guests elsewhere.
pub struct NodeFailover;

impl Kind for NodeFailover {
    const NAME: &'static str = "node.failover";
    const DESCRIPTION: &'static str = "Fence a node that stayed offline and restart its HA guests on other nodes, each as its own guest.failover (S74).";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        _p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        if undo {
            return Ok(Effect::Done);
        }
        let node = cx.op.node_id.clone().unwrap_or_default();
        let mut p = payload(cx.op)?;
        let busy = p.skipped.is_some() || p.failed.is_some();
        let r = match step {
            Step::Fence if !p.fenced && !busy => fence(cx, &node, &mut p).await,
            Step::Restart if !busy => restart(cx, &node, &mut p).await,
            // A step that fails keeps nothing it wrote: the guests' reasons were written
            // by the steps before, which succeeded.
            Step::Report => match &p.failed {
                Some(why) => Err(StepError::Permanent(why.clone())),
                None => Ok(()),
            },
            _ => Ok(()),
        };
        save(cx.op, &p)?;
        r.map(|()| Effect::Done)
    }
}

fn payload(op: &OpRow) -> Result<Payload, StepError> {
    serde_json::from_str(&op.payload)
        .map_err(|e| StepError::failed("payload of node.failover is corrupt", e))
}

fn save(op: &mut OpRow, p: &Payload) -> Result<(), StepError> {
    op.payload = serde_json::to_string(p).map_err(StoreError::from)?;
    Ok(())
}

/// Runs the fence and waits for it; a failure names itself on every HA guest.
async fn fence(cx: &mut Ctx<'_, '_>, node: &str, p: &mut Payload) -> Result<(), StepError> {
    let Some(n) = st::node_in(cx.tx, node).await? else {
        return Err(StepError::Permanent(format!("node {node} is gone")));
    };
    if n.online {
        p.skipped = Some(format!("node {node} came back online: nothing to restart"));
        return Ok(());
    }
    let address = n.node_facts().address;
    let state = match n.fence() {
        Some(argv) => cx
            .env
            .fencer
            .poll(&cx.op.id, node, &address, argv.as_slice()),
        None => FenceState::Failed("the node has no fence command".into()),
    };
    match state {
        FenceState::Running => Err(StepError::Waiting(format!(
            "fencing node {node}: waiting for its fence command"
        ))),
        FenceState::Confirmed => {
            p.fenced = true;
            ha::set_fenced_in(cx.tx, node).await?;
            let (_, others) = ha::guests_on_in(cx.tx, node).await?;
            let why = format!(
                "node {node} was fenced (powered off) at {}; without HA the guest waits for \
                 its node",
                crate::model::rfc3339(crate::model::now_ms())
            );
            for g in others {
                ha::set_reason_in(cx.tx, &g.id, Some(&why)).await?;
            }
            events::append(
                cx.tx,
                "node.fenced",
                node,
                &serde_json::json!({"node_id": node}),
            )
            .await?;
            Ok(())
        }
        FenceState::Failed(e) => {
            let why = format!(
                "node {node} is offline and its fence failed ({e}): HA restarts a guest only \
                 once its node is confirmed off"
            );
            let (ha_guests, _) = ha::guests_on_in(cx.tx, node).await?;
            for g in ha_guests {
                ha::set_reason_in(cx.tx, &g.id, Some(&why)).await?;
            }
            p.failed = Some(why);
            Ok(())
        }
    }
}

/// Starts the restarts, records those that ended; waits while any runs.
async fn restart(cx: &mut Ctx<'_, '_>, node: &str, p: &mut Payload) -> Result<(), StepError> {
    if !p.started {
        let (ha_guests, _) = ha::guests_on_in(cx.tx, node).await?;
        for g in ha_guests
            .into_iter()
            .filter(|g| g.state == crate::model::GuestState::Unknown)
        {
            let mut r = Restart {
                guest_id: g.id.clone(),
                guest: g.name.clone(),
                op_id: None,
                outcome: None,
                error: None,
            };
            match start_one(cx, node, &g.id).await {
                Ok(id) => r.op_id = Some(id),
                Err(why) => {
                    r.outcome = Some("failed".into());
                    r.error = Some(why);
                }
            }
            p.restarts.push(r);
        }
        p.started = true;
    }
    let mut running = 0;
    for r in p.restarts.iter_mut().filter(|r| r.outcome.is_none()) {
        let Some(id) = r.op_id.clone() else { continue };
        match st::op_in(cx.tx, &id).await? {
            Some(child) if child.op_state().is_terminal() => {
                r.outcome = Some(child.op_state().as_str().to_string());
                r.error = child.error.clone();
            }
            Some(_) => running += 1,
            None => {
                r.outcome = Some("failed".into());
                r.error = Some(format!("operation {id} is gone"));
            }
        }
    }
    if running > 0 {
        return Err(StepError::Waiting(format!(
            "{running} of {} HA guest(s) still restarting",
            p.restarts.len()
        )));
    }
    let failed: Vec<&Restart> = p
        .restarts
        .iter()
        .filter(|r| r.outcome.as_deref() != Some(OpState::Succeeded.as_str()))
        .collect();
    for r in &failed {
        let why = format!(
            "HA could not restart it: {}",
            r.error.as_deref().unwrap_or("unknown error")
        );
        ha::set_reason_in(cx.tx, &r.guest_id, Some(&why)).await?;
    }
    if failed.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = failed
        .iter()
        .map(|r| format!("{}: {}", r.guest, r.error.as_deref().unwrap_or("failed")))
        .collect();
    p.failed = Some(format!(
        "{} of {} HA guest(s) did not restart: {}",
        failed.len(),
        p.restarts.len(),
        names.join("; ")
    ));
    Ok(())
}

/// Starts guest `g`'s restart; why not, when it cannot start.
async fn start_one(cx: &mut Ctx<'_, '_>, node: &str, g: &str) -> Result<String, String> {
    let req = Request::GuestFailover(guest_failover::Payload {
        from: node.to_string(),
        to: None,
        chosen: None,
    });
    let by = st::Requester {
        id: cx.op.requested_by_id.as_deref(),
        name: &cx.op.requested_by,
    };
    match create_op(&cx.env.catalog, cx.tx, &req, Target::Guest(g), by, true).await {
        Ok(op) => Ok(op.id),
        Err(LaunchError::Store(e)) => Err(format!("starting its restart: {e}")),
        Err(e) => Err(e.to_string()),
    }
}
