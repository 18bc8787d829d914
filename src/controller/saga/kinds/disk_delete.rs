//! `disk.delete` (S04): a detached data disk and its file go. The API refuses a disk that
//! is attached.
//!
//! `remove_file` (node) removes the file (a no-op when it is gone); `forget` (controller)
//! removes the record. Neither has an undo: a half-deleted disk is finished, not restored.

use super::disk_create::{disk_of, DiskRef};
use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::StepError;
use crate::controller::store as st;
use crate::model::NodeAction;

super::steps! {
    pub enum Step {
        RemoveFile = StepDef::node("remove_file", "removing the disk file").weight(3),
        Forget = StepDef::controller("forget", "forgetting the disk"),
    }
}

/// `disk.delete`: delete a detached data disk and its file (S04).
pub struct DiskDelete;

impl Kind for DiskDelete {
    const NAME: &'static str = "disk.delete";
    const DESCRIPTION: &'static str = "Delete a detached data disk and its file (S04).";
    type Payload = DiskRef;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &DiskRef,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        if undo {
            return Ok(Effect::Done);
        }
        let d = disk_of(cx.tx, &p.disk_id).await?;
        Ok(match step {
            Step::RemoveFile => Effect::Node {
                node: d.node_id,
                action: NodeAction::RemoveFile { path: d.path },
            },
            Step::Forget => {
                st::forget_disk(cx.tx, &d.id).await?;
                Effect::Done
            }
        })
    }
}
