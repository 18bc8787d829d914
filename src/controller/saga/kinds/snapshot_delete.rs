//! `snapshot.delete` (S80): a snapshot goes. `delete` (node) removes it (a no-op when it
//! is gone); `forget` (controller) removes the record. Neither has an undo.

use super::snapshot_create::SnapshotRef;
use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::{guest_of, StepError};
use crate::controller::store as st;
use crate::model::NodeAction;

super::steps! {
    pub enum Step {
        Delete = StepDef::node("delete", "deleting the snapshot").weight(3),
        Forget = StepDef::controller("forget", "forgetting it"),
    }
}

/// `snapshot.delete`: delete a snapshot of a guest (S80).
pub struct SnapshotDelete;

impl Kind for SnapshotDelete {
    const NAME: &'static str = "snapshot.delete";
    const DESCRIPTION: &'static str = "Delete a snapshot of a guest (S80).";
    type Payload = SnapshotRef;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &SnapshotRef,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        if undo {
            return Ok(Effect::Done);
        }
        let g = guest_of(cx.tx, cx.op).await?;
        Ok(match step {
            Step::Delete => match g.node_id.clone() {
                Some(node) => Effect::Node {
                    node,
                    action: NodeAction::DeleteSnapshot {
                        guest_id: g.id,
                        name: p.snapshot_id.clone(),
                    },
                },
                None => Effect::Done,
            },
            Step::Forget => {
                st::forget_snapshot(cx.tx, &p.snapshot_id).await?;
                Effect::Done
            }
        })
    }
}
