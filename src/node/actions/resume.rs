//! Resumes a paused domain.

use super::*;

pub(super) async fn run(cx: &mut Cx<'_>, guest_id: &str) -> Result<StepOutcome, ActionError> {
    match require(cx.hv, guest_id).await? {
        DomState::Running => {}
        DomState::Paused => cx.hv.resume(guest_id).await?,
        other => {
            return Err(ActionError::Permanent(format!(
                "cannot resume a guest that is {}",
                other.as_str()
            )))
        }
    }
    Ok(ok(cx.hv.state(guest_id).await?))
}
