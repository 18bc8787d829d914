//! `disk.set_limits` (S06): a data disk's I/O limits change, and stay changed across
//! restarts (JimV lost them).
//!
//! 1. `apply` (node; undo: the old limits): only when the disk is attached. A running
//!    guest gets them live through QEMU and in its definition; a stopped one in its
//!    definition. A detached disk has no domain to change: its limits are rendered when
//!    it is next attached.
//! 2. `record` (controller): the disk's record keeps them, which is what attaching reads.

use serde::{Deserialize, Serialize};

use super::disk_create::disk_of;
use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::StepError;
use crate::controller::store as st;
use crate::model::{IoTune, NodeAction};

/// Stored payload: the new limits (None: unlimited) and the old ones for the undo.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub disk_id: String,
    pub limits: Option<IoTune>,
    pub old_limits: Option<IoTune>,
}

super::steps! {
    pub enum Step {
        Apply = StepDef::node("apply", "applying the limits").undoable().weight(2),
        Record = StepDef::controller("record", "recording"),
    }
}

/// `disk.set_limits`: change a data disk's I/O limits: live when its guest runs, in the definition otherwise; kept across restarts.
pub struct DiskSetLimits;

impl Kind for DiskSetLimits {
    const NAME: &'static str = "disk.set_limits";
    const DESCRIPTION: &'static str = "Change a data disk's I/O limits: live when its guest runs, in the definition otherwise; kept across restarts.";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let d = disk_of(cx.tx, &p.disk_id).await?;
        Ok(match (step, undo) {
            (Step::Apply, undo) => match (d.guest_id, d.target) {
                (Some(guest_id), Some(target)) => Effect::Node {
                    node: d.node_id,
                    action: NodeAction::SetDiskLimits {
                        guest_id,
                        path: d.path,
                        target,
                        limits: if undo { &p.old_limits } else { &p.limits }.clone(),
                    },
                },
                _ => Effect::Done,
            },
            (Step::Record, false) => {
                st::set_disk_limits(cx.tx, &d.id, p.limits.as_ref()).await?;
                Effect::Done
            }
            (Step::Record, true) => Effect::Done,
        })
    }
}
