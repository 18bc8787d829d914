//! `snapshot.create` (S80): an internal snapshot of a guest, its filesystems frozen
//! through the guest agent when it answers (see `node::snapshots`).
//!
//! The API records the snapshot (`creating`) with this operation, which holds the guest:
//! snapshot work on one guest is exclusive, and anything else asked of the guest meanwhile
//! answers 409 naming this operation (S83). `take` (node; undo: delete the snapshot) takes
//! it; `record` (controller) marks it `ready` with the guest state it holds and whether it
//! was quiesced. An operation that does not succeed forgets the record.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::{guest_of, node_of, StepError};
use crate::controller::store::{self as st, StoreError, Tx};
use crate::model::{NodeAction, OpState, SnapshotReport};

/// Stored payload of every snapshot kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub snapshot_id: String,
}

super::steps! {
    pub enum Step {
        Take = StepDef::node("take", "taking the snapshot").undoable().weight(4),
        Record = StepDef::controller("record", "recording"),
    }
}

/// `snapshot.create`: take an internal snapshot of a guest, its filesystems frozen through the agent when it answers (S80, S83).
pub struct SnapshotCreate;

impl Kind for SnapshotCreate {
    const NAME: &'static str = "snapshot.create";
    const DESCRIPTION: &'static str = "Take an internal snapshot of a guest, its filesystems frozen through the agent when it answers (S80, S83).";
    type Payload = SnapshotRef;
    type Step = Step;

    async fn on_finish(
        tx: &mut Tx<'_>,
        p: &mut SnapshotRef,
        _guest: Option<&str>,
        state: OpState,
    ) -> Result<(), StoreError> {
        if state != OpState::Succeeded {
            st::forget_snapshot(tx, &p.snapshot_id).await?;
        }
        Ok(())
    }

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &SnapshotRef,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        let node = node_of(&g)?;
        let action = |undo| {
            let (guest_id, name) = (g.id.clone(), p.snapshot_id.clone());
            if undo {
                NodeAction::DeleteSnapshot { guest_id, name }
            } else {
                NodeAction::CreateSnapshot { guest_id, name }
            }
        };
        Ok(match (step, undo) {
            (Step::Take, undo) => Effect::Node {
                node,
                action: action(undo),
            },
            (Step::Record, false) => {
                let taken: SnapshotReport = cx
                    .op
                    .report(Step::Take.name())?
                    .ok_or_else(|| StepError::Permanent("the node reported no snapshot".into()))?;
                st::snapshot_taken(cx.tx, &p.snapshot_id, &taken.vm_state, taken.quiesced).await?;
                Effect::Done
            }
            (Step::Record, true) => Effect::Done,
        })
    }
}
