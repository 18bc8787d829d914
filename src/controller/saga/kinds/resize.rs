//! `guest.resize` (S75): a stopped guest's vCPUs and memory change.
//!
//! 1. `check` (controller): the guest's node must have room for what it grows by, judged
//!    as placement judges a new guest (memory and vCPU capacity with over-commit, load);
//!    a refusal fails the operation naming the node and the reason.
//! 2. `redefine` (node; undo: back to the old sizes): the domain's definition gets the
//!    new `<vcpu>` and memory. The node refuses a guest that runs.
//! 3. `record` (controller): the guest's record, which placement counts, follows.
//!
//! Live resizing (vCPU hot-plug, balloon) needs a maximum in the definition from the
//! guest's creation; corral defines guests without one, so resizing waits for a
//! shutdown (the API answers 409 for a running guest).

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect};
use crate::controller::placement::{self, PlaceError};
use crate::controller::saga::steps::{guest_of, node_of, StepError};
use crate::controller::store as st;
use crate::model::NodeAction;

/// Stored payload: the new sizes, and the old ones for the undo.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub cpus: u32,
    pub memory_mib: u32,
    pub old_cpus: u32,
    pub old_memory_mib: u32,
}

super::steps! {
    pub enum Step {
        Check = "check",
        Redefine = "redefine",
        Record = "record",
    }
}

pub async fn run(
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
                Err(e) => return Err(StepError::Permanent(e.to_string())),
            }
        }
        (Step::Redefine, undo) => {
            let (cpus, memory_mib) = if undo {
                (p.old_cpus, p.old_memory_mib)
            } else {
                (p.cpus, p.memory_mib)
            };
            Effect::Node {
                node,
                action: NodeAction::ResizeDomain {
                    guest_id: g.id,
                    cpus,
                    memory_mib,
                },
            }
        }
        (Step::Record, false) => {
            st::set_guest_size(cx.tx, &g.id, p.cpus, p.memory_mib).await?;
            Effect::Done
        }
        (Step::Check | Step::Record, true) => Effect::Done,
    })
}
