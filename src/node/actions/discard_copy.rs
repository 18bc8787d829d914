//! Removes a copy of a guest that must not run on this node: a migration's target
//! copies after it failed, or the source's after it succeeded. A domain that runs here is
//! never touched: the step fails, because it would be the guest's only running copy.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    paths: &[String],
) -> Result<StepOutcome, ActionError> {
    for p in paths {
        inside(&cx.s.storage_dir, p)?;
    }
    match cx.hv.state(guest_id).await? {
        None => {}
        Some(DomState::Shutoff) => ignore_gone(cx.hv.undefine(guest_id).await)?,
        Some(st) => {
            return Err(ActionError::Permanent(format!(
                "guest {guest_id} is {} on this node: its copy here stays",
                st.as_str()
            )))
        }
    }
    for p in paths {
        remove_file::run(cx, p).await?;
    }
    Ok(ok(None))
}
