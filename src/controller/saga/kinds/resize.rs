//! `guest.resize` (S75): a guest's vCPUs and memory change; a stopped guest's maxima too.
//!
//! 1. `check` (controller): the guest's node must have room for what it grows by, judged
//!    as placement judges a new guest (memory and vCPU capacity with over-commit, load);
//!    a refusal fails the operation naming the node and the reason.
//! 2. `redefine` (node; undo: back to the old sizes): a stopped domain's definition gets
//!    the new `<vcpu>` and memory; a running one moves within its maxima live (vCPU
//!    hot-plug, balloon) and in its definition, and the node onlines the new vCPUs
//!    through the guest agent.
//! 3. `record` (controller): the guest's record, which placement counts, follows.
//!
//! The maxima are set when the guest is created (`max_cpus`, `max_memory_mib`; default:
//! its size, so no live growth unless asked for, as Proxmox and Incus do) or by an
//! offline resize. The domain is defined with the maxima and QEMU reserves nothing for
//! the memory the balloon holds back, so placement counts the current size.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::placement::{self, PlaceError};
use crate::controller::saga::steps::{guest_of, node_of, StepError};
use crate::controller::store as st;
use crate::model::{GuestSize, NodeAction};

/// Stored payload: the new sizes, and the old ones for the undo. A maximum of 0 is the
/// size itself (no live growth).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub cpus: u32,
    pub memory_mib: u32,
    pub old_cpus: u32,
    pub old_memory_mib: u32,
    #[serde(default)]
    pub max_cpus: u32,
    #[serde(default)]
    pub max_memory_mib: u32,
    #[serde(default)]
    pub old_max_cpus: u32,
    #[serde(default)]
    pub old_max_memory_mib: u32,
}

impl Payload {
    pub fn new_size(&self) -> GuestSize {
        GuestSize {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            max_cpus: self.max_cpus,
            max_memory_mib: self.max_memory_mib,
        }
        .normalized()
    }

    pub fn old_size(&self) -> GuestSize {
        GuestSize {
            cpus: self.old_cpus,
            memory_mib: self.old_memory_mib,
            max_cpus: self.old_max_cpus,
            max_memory_mib: self.old_max_memory_mib,
        }
        .normalized()
    }
}

super::steps! {
    pub enum Step {
        Check = StepDef::controller("check", "checking the node's capacity"),
        Redefine = StepDef::node("redefine", "resizing (live, or in the definition)").undoable().weight(2),
        Record = StepDef::controller("record", "recording"),
    }
}

/// `guest.resize`: change a guest's vCPUs and memory within its node's capacity: any size while it is stopped, live within its maxima while it runs (S75).
pub struct Resize;

impl Kind for Resize {
    const NAME: &'static str = "guest.resize";
    const DESCRIPTION: &'static str = "Change a guest's vCPUs and memory within its node's capacity: any size while it is stopped, live within its maxima while it runs (S75).";
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
            (Step::Check, false) => {
                let candidates = super::create::candidates(cx.tx).await?;
                let need = placement::Need {
                    memory_mib: u64::from(p.memory_mib.saturating_sub(p.old_memory_mib)),
                    cpus: u64::from(p.cpus.saturating_sub(p.old_cpus)),
                    bridge: None,
                };
                match placement::place(&candidates, need, Some(&node), &cx.env.thresholds) {
                    Ok(_) => Effect::Done,
                    Err(PlaceError::Refused(r)) => {
                        let why: Vec<String> = r
                            .into_iter()
                            .map(|r| format!("node {}: {}", r.node, r.reason))
                            .collect();
                        return Err(StepError::Permanent(format!(
                            "no room for the new size: {}",
                            why.join("; ")
                        )));
                    }
                    Err(e) => return Err(StepError::failed("checking the node's capacity", e)),
                }
            }
            (Step::Redefine, undo) => {
                let size = if undo { p.old_size() } else { p.new_size() };
                Effect::Node {
                    node,
                    action: NodeAction::ResizeDomain {
                        guest_id: g.id,
                        size,
                    },
                }
            }
            (Step::Record, false) => {
                st::set_guest_size(cx.tx, &g.id, &p.new_size()).await?;
                Effect::Done
            }
            (Step::Check | Step::Record, true) => Effect::Done,
        })
    }
}
