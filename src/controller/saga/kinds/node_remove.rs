//! `node.remove` (S35, S58): removes a node's record; with `delete_guests`, its guests'
//! records, disks and leases too.
//!
//! The node is offline (or online without guests). Operations still holding its guests
//! are ended first: the step asks each to cancel and waits until they are
//! over; against an offline node a cancel abandons the waiting step, records what may be
//! left on the node in its cleanup list and unwinds what the controller can. With
//! `delete_guests` the guests' leases are freed and the event lists the files left on the
//! node, which are also on its cleanup list should it ever return under the same id.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::alloc;
use crate::controller::saga::steps::StepError;
use crate::controller::store::{self as st, events, GuestRow, Tx};
use crate::model::NodeAction;

/// Stored payload: what happens to the records of the node's guests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Delete the guests' records (and disk records, leases) with the node; otherwise keep
    /// them, reading `unknown`, ready for the node's return under the same id.
    pub delete_guests: bool,
}

super::steps! {
    pub enum Step {
        RemoveNode = StepDef::controller("remove_node", "removing the node"),
    }
}

/// `node.remove`: remove a node (S35): offline, or online without guests; its guests' records and disks are kept or deleted with it (S58).
pub struct NodeRemove;

impl Kind for NodeRemove {
    const NAME: &'static str = "node.remove";
    const DESCRIPTION: &'static str = "Remove a node (S35): offline, or online without guests; its guests' records and disks are kept or deleted with it (S58).";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        match (step, undo) {
            (Step::RemoveNode, false) => remove_node(cx, p).await.map(|_| Effect::Done),
            (Step::RemoveNode, true) => Ok(Effect::Done),
        }
    }
}

/// The step: refuses an online node with guests, waits for the operations holding its
/// guests to end, deletes the guests' records when asked, then the node's, with a
/// `node.state` event listing the files left on the node.
async fn remove_node(cx: &mut Ctx<'_, '_>, p: &Payload) -> Result<(), StepError> {
    let tx = &mut *cx.tx;
    let node = cx.op.node_id.clone().unwrap_or_default();
    let Some((online, _)) = st::node_liveness_in(tx, &node).await? else {
        return Err(StepError::Permanent(format!(
            "node {node} is not registered"
        )));
    };
    let guests = st::guests_of_node_in(tx, &node).await?;
    if online && !guests.is_empty() {
        return Err(StepError::Permanent(format!(
            "node {node} is online with {} guest(s): delete or move them first, or stop the node",
            guests.len()
        )));
    }
    end_guest_operations(tx, &node, &guests).await?;
    if p.delete_guests {
        for g in &guests {
            delete_guest(tx, &node, &cx.op.id, g).await?;
        }
    }
    let left_files = files_left_on(tx, &node).await?;
    st::delete_node(tx, &node).await?;
    events::append(
        tx,
        "node.state",
        &node,
        &serde_json::json!({"node_id": node, "removed": true, "guests_deleted": p.delete_guests,
                            "guests": guests.len(), "files_left_on_node": left_files}),
    )
    .await?;
    Ok(())
}

/// Ends the operations that hold the node's guests: asks each to abandon and waits
/// (`StepError::Waiting`). They finish on their own (an offline node's steps are
/// abandoned) and the step runs again; `Ok` once none holds a guest.
async fn end_guest_operations(
    tx: &mut Tx<'_>,
    node: &str,
    guests: &[GuestRow],
) -> Result<(), StepError> {
    let busy: Vec<String> = guests.iter().filter_map(|g| g.lock_op.clone()).collect();
    if busy.is_empty() {
        return Ok(());
    }
    let reason = format!("node {node} is being removed");
    for op in &busy {
        st::request_abandon(tx, op, &reason).await?;
    }
    Err(StepError::Waiting(format!(
        "waiting for {} operation(s) on the node's guests to end",
        busy.len()
    )))
}

/// Deletes guest `g`'s records and frees its leases; its disks and its domain stay on
/// `node`'s cleanup list (by operation `op`), should the node return under the same id.
async fn delete_guest(
    tx: &mut Tx<'_>,
    node: &str,
    op: &str,
    g: &GuestRow,
) -> Result<(), StepError> {
    const WHY: &str = "the node was removed with its guests";
    for d in st::disks_of_in(tx, &g.id).await? {
        let action = NodeAction::RemoveFile {
            path: d.path.clone(),
        };
        st::add_cleanup(tx, node, Some(&g.id), Some(op), &action, WHY).await?;
    }
    let action = NodeAction::Undefine {
        guest_id: g.id.clone(),
    };
    st::add_cleanup(tx, node, Some(&g.id), Some(op), &action, WHY).await?;
    alloc::release_all(tx, &g.id).await?;
    st::delete_guest(tx, &g.id).await?;
    events::append(
        tx,
        "guest.state",
        &g.id,
        &serde_json::json!({"guest_id": g.id, "state": "deleted"}),
    )
    .await?;
    Ok(())
}

/// Every file listed for removal on `node`: the deleted guests' files and what earlier
/// operations (abandoned when the node went away) left there.
async fn files_left_on(tx: &mut Tx<'_>, node: &str) -> Result<Vec<String>, StepError> {
    let mut left_files = Vec::new();
    for item in st::cleanup_of_node_in(tx, node).await? {
        if let Ok(NodeAction::RemoveFile { path }) = item.node_action() {
            left_files.push(path);
        }
    }
    Ok(left_files)
}
