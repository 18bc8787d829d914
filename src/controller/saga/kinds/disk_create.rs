//! `disk.create` (S04, S05): a new, empty data disk on a node.
//!
//! The API records the disk (`creating`, locked by this operation) and picks its node and
//! path in the node's disk-image directory. `create_volume` (node) writes the qcow2 file
//! (undo: remove it); `record` (controller) marks the disk `ready`. An operation that does
//! not succeed forgets the record: its file was removed by the undo, or sits on the node's
//! cleanup list when the node could not be reached.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::StepError;
use crate::controller::store::{self as st, StoreError, Tx};
use crate::model::{NodeAction, OpState};

/// Stored payload of every disk kind but attach and resize: the disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskRef {
    pub disk_id: String,
}

super::steps! {
    pub enum Step {
        CreateVolume = StepDef::node("create_volume", "creating the disk file").undoable().weight(3),
        Record = StepDef::controller("record", "recording"),
    }
}

/// The disk an operation works on.
pub async fn disk_of(tx: &mut Tx<'_>, id: &str) -> Result<st::DataDiskRow, StepError> {
    st::data_disk_in(tx, id)
        .await?
        .ok_or_else(|| StepError::Permanent(format!("disk {id} no longer exists")))
}

/// `disk.create`: create an empty data disk on a node (S04, S05).
pub struct DiskCreate;

impl Kind for DiskCreate {
    const NAME: &'static str = "disk.create";
    const DESCRIPTION: &'static str = "Create an empty data disk on a node (S04, S05).";
    type Payload = DiskRef;
    type Step = Step;

    async fn on_finish(
        tx: &mut Tx<'_>,
        p: &mut DiskRef,
        _guest: Option<&str>,
        state: OpState,
    ) -> Result<(), StoreError> {
        if state != OpState::Succeeded {
            st::forget_disk(tx, &p.disk_id).await?;
        }
        Ok(())
    }

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &DiskRef,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let d = disk_of(cx.tx, &p.disk_id).await?;
        let node = d.node_id.clone();
        Ok(match (step, undo) {
            (Step::CreateVolume, false) => Effect::Node {
                node,
                action: NodeAction::CreateVolume {
                    path: d.path,
                    size_mib: d.size_mib.max(1) as u64,
                },
            },
            (Step::CreateVolume, true) => Effect::Node {
                node,
                action: NodeAction::RemoveFile { path: d.path },
            },
            (Step::Record, false) => {
                st::set_disk_state(cx.tx, &d.id, "ready").await?;
                Effect::Done
            }
            (Step::Record, true) => Effect::Done,
        })
    }
}
