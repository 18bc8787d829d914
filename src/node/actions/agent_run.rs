//! Boot jobs through the guest agent: each batch's script evaluated here, then run.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    batches: &[AgentBatch],
    wait_secs: u64,
    strict: bool,
) -> Result<StepOutcome, ActionError> {
    // Boot jobs' scripts are evaluated here; one that fails fails its own job.
    let mut refused = Vec::new();
    let mut runnable = Vec::with_capacity(batches.len());
    for b in batches {
        match &b.script {
            None => runnable.push(b.clone()),
            Some(sc) => match cx
                .s
                .scripts
                .actions(&sc.name, &sc.source, &sc.facts, &sc.params)
            {
                Ok(actions) => runnable.push(AgentBatch {
                    id: b.id.clone(),
                    actions,
                    script: None,
                }),
                Err(e) => refused.push(BatchReport {
                    id: b.id.clone(),
                    ok: false,
                    error: Some(e.to_string()),
                    results: Vec::new(),
                }),
            },
        }
    }
    let mut report = if runnable.is_empty() {
        AgentReport::default()
    } else {
        crate::node::agent::run(cx.hv, guest_id, &runnable, wait_secs).await?
    };
    report.batches.extend(refused);
    agent_outcome(report, strict)
}
