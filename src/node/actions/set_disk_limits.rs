//! Changes a data disk's I/O limits: live, and in the definition. The work is in `node::disks`, which the disk actions share.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    path: &str,
    target: &str,
    limits: Option<&IoTune>,
) -> Result<StepOutcome, ActionError> {
    inside(&cx.s.storage_dir, path)?;
    crate::node::disks::set_limits(cx.hv, guest_id, path, target, limits).await
}
