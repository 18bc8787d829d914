//! Forces the domain off; one already off or gone is fine.

use super::*;

pub(super) async fn run(cx: &mut Cx<'_>, guest_id: &str) -> Result<StepOutcome, ActionError> {
    match cx.hv.state(guest_id).await? {
        None | Some(DomState::Shutoff) => {}
        Some(_) => ignore_gone(cx.hv.destroy(guest_id).await)?,
    }
    let st = cx.hv.state(guest_id).await?;
    Ok(ok(st))
}
