//! `disk.detach` (S06): a data disk leaves its guest, live when the guest runs (the guest
//! releases the device) and from its definition; the disk stays, free for another guest
//! on the node.
//!
//! `detach` (node; undo: attach again) changes the domain; `record` (controller) clears
//! the disk's guest and device.

use super::disk_create::{disk_of, DiskRef};
use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::StepError;
use crate::controller::store as st;
use crate::model::NodeAction;

super::steps! {
    pub enum Step {
        Detach = StepDef::node("detach", "detaching the disk").undoable().weight(3),
        Record = StepDef::controller("record", "recording"),
    }
}

/// `disk.detach`: detach a data disk from its guest: released by the running guest, and out of its definition (S06).
pub struct DiskDetach;

impl Kind for DiskDetach {
    const NAME: &'static str = "disk.detach";
    const DESCRIPTION: &'static str = "Detach a data disk from its guest: released by the running guest, and out of its definition (S06).";
    type Payload = DiskRef;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &DiskRef,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let d = disk_of(cx.tx, &p.disk_id).await?;
        let guest = cx
            .op
            .guest_id
            .clone()
            .ok_or_else(|| StepError::Permanent("a detach names its guest".into()))?;
        let target = d
            .target
            .clone()
            .ok_or_else(|| StepError::Permanent(format!("disk {} is not attached", d.name)))?;
        let limits = d.limits();
        Ok(match (step, undo) {
            (Step::Detach, false) => Effect::Node {
                node: d.node_id,
                action: NodeAction::DetachDisk {
                    guest_id: guest,
                    path: d.path,
                    target,
                },
            },
            (Step::Detach, true) => Effect::Node {
                node: d.node_id,
                action: NodeAction::AttachDisk {
                    guest_id: guest,
                    path: d.path,
                    target,
                    limits,
                },
            },
            (Step::Record, false) => {
                st::set_disk_attachment(cx.tx, &d.id, None, None).await?;
                Effect::Done
            }
            (Step::Record, true) => Effect::Done,
        })
    }
}
