//! `guest.set_bandwidth` (S54): the NIC's new limits through libvirt's device update, live
//! and in the definition (node), then the record (controller).

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::{domain_spec, guest_of, StepError};
use crate::controller::store::{self as st, StoreError};
use crate::model::NodeAction;

/// Stored payload: the new limits (None: unlimited).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub bandwidth: Option<crate::model::Bandwidth>,
}

super::steps! {
    pub enum Step {
        UpdateInterface = StepDef::node("update_interface", "applying the limits").weight(3),
        RecordBandwidth = StepDef::controller("record_bandwidth", "recording"),
    }
}

/// `guest.set_bandwidth`: change a guest's NIC traffic limits: live when it runs, and in its definition (S54).
pub struct SetBandwidth;

impl Kind for SetBandwidth {
    const NAME: &'static str = "guest.set_bandwidth";
    const DESCRIPTION: &'static str =
        "Change a guest's NIC traffic limits: live when it runs, and in its definition (S54).";
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
        match step {
            Step::UpdateInterface => {
                let Some(node) = g.node_id.clone() else {
                    return Ok(Effect::Done);
                };
                let spec = domain_spec(cx.tx, &g, &node, p.bandwidth.clone()).await?;
                Ok(Effect::Node {
                    node,
                    action: NodeAction::UpdateInterface {
                        spec: Box::new(spec),
                    },
                })
            }
            Step::RecordBandwidth => {
                let json = p
                    .bandwidth
                    .as_ref()
                    .map(serde_json::to_string)
                    .transpose()
                    .map_err(StoreError::from)?;
                st::set_guest_bandwidth(cx.tx, &g.id, json.as_deref()).await?;
                Ok(Effect::Done)
            }
        }
    }
}
