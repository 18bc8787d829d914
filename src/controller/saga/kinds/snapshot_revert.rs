//! `snapshot.revert` (S80): a guest returns to one of its snapshots: its disks, and its
//! memory and running state when the snapshot holds them. `revert` (node) has no undo: a
//! revert that failed left the guest as it was, and one that succeeded is what was asked.
//! The guest's state follows the node's report.

use super::snapshot_create::SnapshotRef;
use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::{guest_of, node_of, StepError};
use crate::model::NodeAction;

super::steps! {
    pub enum Step {
        Revert = StepDef::node("revert", "reverting"),
    }
}

/// `snapshot.revert`: return a guest to one of its snapshots (S80).
pub struct SnapshotRevert;

impl Kind for SnapshotRevert {
    const NAME: &'static str = "snapshot.revert";
    const DESCRIPTION: &'static str = "Return a guest to one of its snapshots (S80).";
    type Payload = SnapshotRef;
    type Step = Step;

    async fn run(
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
}
