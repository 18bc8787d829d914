//! Starts the domain (resumes a paused one); a running one is left alone.

use super::*;

pub(super) async fn run(cx: &mut Cx<'_>, guest_id: &str) -> Result<StepOutcome, ActionError> {
    match settled(cx.hv, guest_id).await? {
        DomState::Running => {}
        DomState::Paused => cx.hv.resume(guest_id).await?,
        _ => cx
            .hv
            .start(guest_id)
            .await
            .map_err(|e| ActionError::failed("starting the domain", e))?,
    }
    Ok(ok(cx.hv.state(guest_id).await?))
}
