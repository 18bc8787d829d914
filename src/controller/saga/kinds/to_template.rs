//! `template.from_guest` (S43): a guest's system disk, or one of its snapshots, flattened
//! into a new template.
//!
//! The API checks the name is free and the guest shut off (or the snapshot ready), and
//! picks the image's path in the first template directory. `convert` (node; undo: remove
//! the image) runs `qemu-img convert`, reporting its percent as the operation's progress,
//! and answers the image's SHA-256 and size; `record` (controller) registers the template
//! with them, private to the caller. The operation holds the guest, so nothing changes
//! its disk meanwhile.
//!
//! The image is written on the guest's node: into the controller's template directory
//! when the node shares it, otherwise into the node's cache, from which the node sends
//! it to the controller (`node::publish`) before it reports. Either way the template's
//! image is then in the controller's template directory, where every node fetches it.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::{disk_path, guest_of, node_of, StepError};
use crate::controller::store::{self as st, TemplateRow};
use crate::model::{now_ms, ConvertReport, NodeAction};

/// Stored payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub template_id: String,
    pub name: String,
    pub path: String,
    pub os_type: String,
    pub min_memory_mib: i64,
    pub os_init_profile: Option<String>,
    /// Flatten this snapshot instead of the disk as it is.
    pub snapshot_id: Option<String>,
    pub owner_id: Option<String>,
}

super::steps! {
    pub enum Step {
        Convert = StepDef::node("convert", "converting the disk").undoable().weight(9).lease_secs(3600).interruptible(),
        Record = StepDef::controller("record", "registering the template"),
    }
}

/// `template.from_guest`: flatten a guest's disk, or one of its snapshots, into a new template with its checksum (S43).
pub struct ToTemplate;

impl Kind for ToTemplate {
    const NAME: &'static str = "template.from_guest";
    const DESCRIPTION: &'static str = "Flatten a guest's disk, or one of its snapshots, into a new template with its checksum (S43).";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        let node = node_of(&g)?;
        Ok(match (step, undo) {
            (Step::Convert, false) => {
                let disks = st::disks_of_in(cx.tx, &g.id).await?;
                let source = disk_path(&disks, "system")
                    .ok_or_else(|| StepError::Permanent("the guest has no system disk".into()))?;
                Effect::Node {
                    node,
                    action: NodeAction::ConvertImage {
                        source,
                        snapshot: p.snapshot_id.clone(),
                        dest: p.path.clone(),
                    },
                }
            }
            (Step::Convert, true) => {
                // The image is in the controller's template directory (written there by
                // a node that shares it, or sent by one that does not): removed here.
                // A node's cached copy goes at its next sweep.
                match std::fs::remove_file(&p.path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StepError::failed("removing the image", e)),
                }
                Effect::Done
            }
            (Step::Record, false) => {
                let image: ConvertReport = cx
                    .op
                    .report(Step::Convert.name())?
                    .ok_or_else(|| StepError::Permanent("the node reported no image".into()))?;
                let row = TemplateRow {
                    id: p.template_id.clone(),
                    name: p.name.clone(),
                    path: p.path.clone(),
                    os_type: p.os_type.clone(),
                    min_memory_mib: p.min_memory_mib,
                    created_at: now_ms(),
                    os_init_profile: p.os_init_profile.clone(),
                    owner_id: p.owner_id.clone(),
                    public: false,
                    sha256: Some(image.sha256),
                    size_bytes: i64::try_from(image.size_bytes).ok(),
                    description: None,
                };
                st::insert_template_in(cx.tx, &row).await.map_err(|e| {
                    if e.is_unique_violation() {
                        StepError::Permanent(format!(
                            "a template named {} appeared meanwhile",
                            p.name
                        ))
                    } else {
                        e.into()
                    }
                })?;
                Effect::Done
            }
            (Step::Record, true) => Effect::Done,
        })
    }
}
