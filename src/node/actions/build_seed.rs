//! Writes a guest's NoCloud seed from its init plan (atomically).

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    path: &str,
    init: &InitInput,
    replace: bool,
) -> Result<StepOutcome, ActionError> {
    inside(&cx.s.storage_dir, path)?;
    // The write is atomic (rename), so replacing is as idempotent as creating.
    if replace || !Path::new(path).exists() {
        // Secrets only where the guest reads them from this seed (InitPlan::for_seed).
        let plan = cx.plans.get(&cx.s.scripts, init)?.for_seed(replace);
        write_seed(cx.renderer, &plan, path).await?;
    }
    Ok(ok(None))
}

/// Renders and writes a seed ISO (atomically).
async fn write_seed(renderer: &Renderer, plan: &InitPlan, path: &str) -> Result<(), ActionError> {
    let docs =
        render_seed(renderer, plan).map_err(|e| ActionError::failed("rendering the seed", e))?;
    write_seed_iso(&docs, Path::new(path))
        .await
        .map_err(|e| ActionError::retry("writing the seed", e))
}
