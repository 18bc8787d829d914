//! Applies a NIC's new limits: live when the domain runs, and in its definition.

use super::*;

pub(super) async fn run(cx: &mut Cx<'_>, spec: &DomainSpec) -> Result<StepOutcome, ActionError> {
    bridge_allowed(cx.s, &spec.bridge)?;
    let xml = cx
        .renderer
        .render(
            "interface.xml",
            minijinja::context! { spec => crate::render::val(spec) },
        )
        .map_err(|e| ActionError::failed("rendering the interface XML", e))?;
    let live = require(cx.hv, &spec.guest_id).await? == DomState::Running;
    cx.hv
        .update_device(&spec.guest_id, &xml, live)
        .await
        .map_err(|e| ActionError::failed("updating the interface", e))?;
    Ok(StepOutcome::Ok {
        guest_state: None,
        domain_xml: Some(cx.hv.xml(&spec.guest_id).await?),
        output: None,
    })
}
