//! Removes a file corral wrote (and its staged copy); one already gone is fine.

use super::*;

pub(super) async fn run(cx: &mut Cx<'_>, path: &str) -> Result<StepOutcome, ActionError> {
    // A template image corral was writing may be undone too.
    if !crate::config::in_dirs(&cx.s.image_dirs, path) {
        inside(&cx.s.storage_dir, path)?;
    }
    for file in [crate::node::staged(path), path.to_string()] {
        match tokio::fs::remove_file(&file).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ActionError::retry(format!("removing {file}"), e)),
        }
    }
    Ok(ok(None))
}
