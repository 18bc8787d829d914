//! Sets a one-time VNC password on the running domain, expiring by itself.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    vnc_port: u16,
    password: &str,
    valid_until_ms: i64,
) -> Result<StepOutcome, ActionError> {
    // Only what the controller makes (alphanumeric) goes into the XML.
    if password.is_empty() || !password.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(ActionError::Permanent(
            "a console password must be letters and digits".into(),
        ));
    }
    if require(cx.hv, guest_id).await? != DomState::Running {
        return Err(ActionError::Permanent(
            "the guest is not running: its console opens once it runs".into(),
        ));
    }
    // libvirt reads `passwdValidTo` as UTC `YYYY-MM-DDTHH:MM:SS`.
    let until: String = crate::model::rfc3339(valid_until_ms)
        .chars()
        .take(19)
        .collect();
    let xml = format!(
        "<graphics type='vnc' port='{vnc_port}' autoport='no' listen='{}' \
         passwd='{password}' passwdValidTo='{until}'/>",
        cx.s.vnc_listen
    );
    cx.hv
        .update_graphics_live(guest_id, &xml)
        .await
        .map_err(|e| ActionError::failed("setting the console password", e))?;
    Ok(ok(None))
}
