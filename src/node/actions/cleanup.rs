//! Runs a node's cleanup list: removals only.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    items: &[CleanupItem],
) -> Result<StepOutcome, ActionError> {
    // Only removals, each by the guest's uuid or a path inside the disk-image
    // directory (checked by the action itself): a cleanup list cannot be turned
    // into anything else.
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let r = match &item.action {
            NodeAction::Destroy { .. }
            | NodeAction::Undefine { .. }
            | NodeAction::RemoveFile { .. } => Box::pin(super::dispatch(cx, &item.action))
                .await
                .map(|_| ()),
            other => Err(ActionError::Permanent(format!(
                "{} is not a cleanup action",
                other.name()
            ))),
        };
        results.push(CleanupResult {
            id: item.id,
            error: r.err().map(|e| crate::chain::chain(&e)),
        });
    }
    Ok(StepOutcome::Ok {
        guest_state: None,
        domain_xml: None,
        output: Some(
            serde_json::to_value(CleanupReport { results })
                .map_err(|e| ActionError::failed("encoding the report", e))?,
        ),
    })
}
