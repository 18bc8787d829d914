//! Grows a data disk: live when its domain runs, on the file otherwise. The work is in `node::disks`, which the disk actions share.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    path: &str,
    size_mib: u64,
    attached: Option<&(String, String)>,
) -> Result<StepOutcome, ActionError> {
    inside(&cx.s.storage_dir, path)?;
    crate::node::disks::grow(cx.hv, path, size_mib, attached).await
}
