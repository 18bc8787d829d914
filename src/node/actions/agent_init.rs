//! An init plan delivered through the guest agent (images without cloud-init).

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    init: &InitInput,
    wait_secs: u64,
) -> Result<StepOutcome, ActionError> {
    let plan = cx.plans.get(&cx.s.scripts, init)?;
    if plan.delivery != Delivery::Agent {
        // cloud-init applies the seed at first boot.
        return Ok(ok(None));
    }
    let batches = [AgentBatch {
        id: "init".into(),
        actions: plan.agent_actions(),
        script: None,
    }];
    let report = crate::node::agent::run(cx.hv, guest_id, &batches, wait_secs).await?;
    agent_outcome(report, true)
}
