//! ACPI shutdown, waiting until the domain is off.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    timeout_secs: u64,
) -> Result<StepOutcome, ActionError> {
    if require(cx.hv, guest_id).await? == DomState::Shutoff {
        return Ok(ok(Some(DomState::Shutoff)));
    }
    cx.hv.shutdown(guest_id).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        let st = cx.hv.state(guest_id).await?;
        if matches!(st, None | Some(DomState::Shutoff)) {
            return Ok(ok(st));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ActionError::Permanent(format!(
                "the guest did not power off within {timeout_secs} s of the ACPI request; use poweroff to force it"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
