//! `snapshot.revert` (S80): a guest returns to one of its snapshots: its disks, and its
//! memory and running state when the snapshot holds them. `revert` (node) has no undo: a
//! revert that failed left the guest as it was, and one that succeeded is what was asked.
//! The guest's state follows the node's report.

use super::snapshot_create::SnapshotRef;
use super::{Ctx, Effect};
use crate::controller::saga::steps::{guest_of, node_of, StepError};
use crate::model::NodeAction;

super::steps! {
    pub enum Step {
        Revert = "revert",
    }
}

pub async fn run(
    cx: &mut Ctx<'_, '_>,
    p: &SnapshotRef,
    _step: Step,
    undo: bool,
) -> Result<Effect, StepError> {
    if undo {
        return Ok(Effect::Done);
    }
    let g = guest_of(cx.tx, cx.op).await?;
    let node = node_of(&g)?;
    Ok(Effect::Node {
        node,
        action: NodeAction::RevertSnapshot {
            guest_id: g.id,
            name: p.snapshot_id.clone(),
        },
    })
}
