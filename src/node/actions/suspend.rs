//! Pauses the domain's vCPUs.

use super::*;

pub(super) async fn run(cx: &mut Cx<'_>, guest_id: &str) -> Result<StepOutcome, ActionError> {
    match require(cx.hv, guest_id).await? {
        DomState::Paused => {}
        DomState::Running => cx.hv.suspend(guest_id).await?,
        other => {
            return Err(ActionError::Permanent(format!(
                "cannot suspend a guest that is {}",
                other.as_str()
            )))
        }
    }
    Ok(ok(cx.hv.state(guest_id).await?))
}
