//! A system disk copied from another node names that node's template image as its
//! backing file. Here it is pointed at this node's copy of the template (fetched first
//! when missing): `qemu-img rebase -u` rewrites only the header, since both images hold
//! the same bytes (a template's image never changes under its id). A re-run finds the
//! header already right.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    path: &str,
    template_path: &str,
    template: Option<&TemplateSource>,
) -> Result<StepOutcome, ActionError> {
    inside(&cx.s.storage_dir, path)?;
    let backing = backing_image(cx.s, template_path, template, &|_, _| {}).await?;
    let current = {
        let p = path.to_string();
        tokio::task::spawn_blocking(move || crate::node::qcow2::backing_of(Path::new(&p)))
            .await
            .map_err(|e| ActionError::retry("reading the disk", e))?
            .map_err(|e| ActionError::failed("reading the disk", e))?
    };
    if current.as_deref() == Some(backing.as_str()) {
        return Ok(ok(None));
    }
    let out = tokio::process::Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b", &backing, path])
        .output()
        .await
        .map_err(|e| ActionError::retry("running qemu-img rebase", e))?;
    if !out.status.success() {
        return Err(ActionError::Permanent(format!(
            "qemu-img rebase of {path}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(ok(None))
}
