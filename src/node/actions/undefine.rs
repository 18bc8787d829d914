//! Removes the domain (stopping it first); one already gone is fine.

use super::*;

pub(super) async fn run(cx: &mut Cx<'_>, guest_id: &str) -> Result<StepOutcome, ActionError> {
    match cx.hv.state(guest_id).await? {
        None => {}
        Some(st) => {
            if st != DomState::Shutoff {
                ignore_gone(cx.hv.destroy(guest_id).await)?;
            }
            ignore_gone(cx.hv.undefine(guest_id).await)?;
        }
    }
    Ok(ok(None))
}
