//! `disk.attach` (S06, S20): a data disk joins a guest on the same node, live when the
//! guest runs (hot-plug) and in its definition either way, with the disk's I/O limits.
//!
//! The API checks the disk is free and on the guest's node and picks the device name.
//! `attach` (node; undo: detach) changes the domain; `record` (controller) notes the
//! guest and device on the disk. The guest's pushed definition follows (S11).

use serde::{Deserialize, Serialize};

use super::disk_create::disk_of;
use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::StepError;
use crate::controller::store as st;
use crate::model::NodeAction;

/// Stored payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub disk_id: String,
    /// The device the guest sees (`vdc`, ...).
    pub target: String,
}

super::steps! {
    pub enum Step {
        Attach = StepDef::node("attach", "attaching the disk").undoable().weight(3),
        Record = StepDef::controller("record", "recording"),
    }
}

/// `disk.attach`: attach a data disk to a guest on its node: hot-plugged when it runs, and in its definition (S06).
pub struct DiskAttach;

impl Kind for DiskAttach {
    const NAME: &'static str = "disk.attach";
    const DESCRIPTION: &'static str = "Attach a data disk to a guest on its node: hot-plugged when it runs, and in its definition (S06).";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let d = disk_of(cx.tx, &p.disk_id).await?;
        let guest = cx
            .op
            .guest_id
            .clone()
            .ok_or_else(|| StepError::Permanent("an attach names its guest".into()))?;
        let limits = d.limits();
        Ok(match (step, undo) {
            (Step::Attach, false) => Effect::Node {
                node: d.node_id,
                action: NodeAction::AttachDisk {
                    guest_id: guest,
                    path: d.path,
                    target: p.target.clone(),
                    limits,
                },
            },
            (Step::Attach, true) => Effect::Node {
                node: d.node_id,
                action: NodeAction::DetachDisk {
                    guest_id: guest,
                    path: d.path,
                    target: p.target.clone(),
                },
            },
            (Step::Record, false) => {
                st::set_disk_attachment(cx.tx, &d.id, Some(&guest), Some(&p.target)).await?;
                Effect::Done
            }
            (Step::Record, true) => Effect::Done,
        })
    }
}
