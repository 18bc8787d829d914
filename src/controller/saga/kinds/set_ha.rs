//! `guest.set_ha` (S74): a guest's HA flag. `mark` (node) sets or clears the HA mark in
//! the domain's metadata, live and in its definition: what a self-fencing node stops
//! (`node::selffence`). Then `record` (controller) keeps the flag, which the controller's
//! failover reads. The mark comes first, so that a guest recorded HA always carries it.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::{guest_of, StepError};
use crate::controller::store::ha;
use crate::model::NodeAction;

/// Stored payload: the flag asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub on: bool,
}

super::steps! {
    pub enum Step {
        Mark = StepDef::node("mark", "marking the domain"),
        Record = StepDef::controller("record", "recording"),
    }
}

/// `guest.set_ha`: turn a guest's HA on or off (S74).
pub struct SetHa;

impl Kind for SetHa {
    const NAME: &'static str = "guest.set_ha";
    const DESCRIPTION: &'static str = "Turn a guest's HA on or off: restarted on another node when its node is fenced, stopped by its node when that node fences itself (S74).";
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
        let g = guest_of(cx.tx, cx.op).await?;
        Ok(match step {
            Step::Mark => match g.node_id.clone() {
                Some(node) => Effect::Node {
                    node,
                    action: NodeAction::SetHa {
                        guest_id: g.id.clone(),
                        on: p.on,
                    },
                },
                None => Effect::Done,
            },
            Step::Record => {
                ha::set_ha_in(cx.tx, &g.id, p.on).await?;
                Effect::Done
            }
        })
    }
}
