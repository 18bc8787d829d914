//! Detaches a data disk: released by the running domain, and out of its definition. The work is in `node::disks`, which the disk actions share.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    guest_id: &str,
    path: &str,
    target: &str,
) -> Result<StepOutcome, ActionError> {
    inside(&cx.s.storage_dir, path)?;
    crate::node::disks::detach(cx.hv, guest_id, path, target).await
}
