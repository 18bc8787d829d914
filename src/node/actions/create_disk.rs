//! A system disk: a linked clone of the template (fetched first when this node lacks it).

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    path: &str,
    template_path: &str,
    template: Option<&TemplateSource>,
) -> Result<StepOutcome, ActionError> {
    inside(&cx.s.storage_dir, path)?;
    let backing = backing_image(cx.s, template_path, template, &|_, _| {}).await?;
    create_disk(path, &backing).await?;
    Ok(ok(None))
}

/// A linked clone of the template (a qcow2 overlay naming it as backing file, written
/// in-process, see `node::qcow2`): instant whatever the template's size.
async fn create_disk(path: &str, template: &str) -> Result<(), ActionError> {
    let (path, template) = (path.to_string(), template.to_string());
    tokio::task::spawn_blocking(move || create_disk_blocking(&path, &template))
        .await
        .map_err(|e| ActionError::retry("creating the disk", e))?
}

fn create_disk_blocking(path: &str, template: &str) -> Result<(), ActionError> {
    use crate::node::qcow2;
    let permanent = |e: qcow2::Qcow2Error| ActionError::failed("reading the template", e);
    if !Path::new(template).exists() {
        return Err(ActionError::Permanent(format!(
            "template image {template} does not exist on this node"
        )));
    }
    if Path::new(path).exists() {
        if qcow2::backing_of(Path::new(path))
            .map_err(permanent)?
            .as_deref()
            == Some(template)
        {
            return Ok(());
        }
        return Err(ActionError::Permanent(format!(
            "{path} exists and is not a clone of {template}"
        )));
    }
    let transient = |what: &str, e: std::io::Error| ActionError::retry(what, e);
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| transient(&format!("creating {}", dir.display()), e))?;
    }
    let size = qcow2::virtual_size(Path::new(template)).map_err(permanent)?;
    let image = qcow2::overlay(template, size).map_err(permanent)?;
    let tmp = crate::node::staged(path);
    let written = crate::modes::write_private(Path::new(&tmp), &image).and_then(|()| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)?
            .set_len(qcow2::overlay_len(size))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(transient(&format!("writing {tmp}"), e));
    }
    std::fs::rename(&tmp, path).map_err(|e| transient(&format!("renaming {tmp}"), e))
}
