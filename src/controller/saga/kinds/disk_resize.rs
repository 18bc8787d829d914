//! `disk.resize` (S08): a data disk grows, live through QEMU when it is attached to a
//! running guest (the guest sees the new size at once), on the file otherwise. The API
//! refuses a size that is not larger.
//!
//! `grow` (node) has no undo: a disk is never shrunk, and a grown disk is still whole.
//! `record` (controller) keeps the new size.

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
    pub size_mib: u64,
}

super::steps! {
    pub enum Step {
        Grow = StepDef::node("grow", "growing the disk").weight(3),
        Record = StepDef::controller("record", "recording"),
    }
}

/// `disk.resize`: grow a data disk: live when its guest runs, on the file otherwise (S08).
pub struct DiskResize;

impl Kind for DiskResize {
    const NAME: &'static str = "disk.resize";
    const DESCRIPTION: &'static str =
        "Grow a data disk: live when its guest runs, on the file otherwise (S08).";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        if undo {
            return Ok(Effect::Done);
        }
        let d = disk_of(cx.tx, &p.disk_id).await?;
        Ok(match step {
            Step::Grow => Effect::Node {
                node: d.node_id,
                action: NodeAction::GrowDisk {
                    path: d.path,
                    size_mib: p.size_mib,
                    attached: d.guest_id.zip(d.target),
                },
            },
            Step::Record => {
                st::set_disk_size(cx.tx, &d.id, p.size_mib as i64).await?;
                Effect::Done
            }
        })
    }
}
