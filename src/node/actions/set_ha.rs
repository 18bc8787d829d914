//! Sets or clears a domain's HA mark (in its definition, and live when it runs): what a
//! self-fencing node stops (`node::selffence`).

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    on: bool,
) -> Result<StepOutcome, ActionError> {
    if cx.hv.ha_mark(guest_id).await? != on {
        cx.hv.set_ha_mark(guest_id, on).await?;
    }
    Ok(ok(None))
}
