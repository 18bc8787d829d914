//! Attaches a data disk: hot-plugged when the domain runs, and in its definition. The work is in `node::disks`, which the disk actions share.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    path: &str,
    target: &str,
    limits: Option<&IoTune>,
) -> Result<StepOutcome, ActionError> {
    inside(&cx.s.storage_dir, path)?;
    crate::node::disks::attach(cx.hv, guest_id, path, target, limits).await
}
