//! ACPI reboot, or a forced reset (`hard`), of a running domain.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    hard: bool,
) -> Result<StepOutcome, ActionError> {
    if require(cx.hv, guest_id).await? != DomState::Running {
        return Err(ActionError::Permanent("the guest is not running".into()));
    }
    if hard {
        cx.hv.reset(guest_id).await?;
    } else {
        cx.hv.reboot(guest_id).await?;
    }
    Ok(ok(cx.hv.state(guest_id).await?))
}
