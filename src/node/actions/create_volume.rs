//! Creates an empty data disk file. The work is in `node::disks`, which the disk actions share.

use super::*;

pub(super) async fn run(
    cx: &mut Cx<'_>,
    path: &str,
    size_mib: u64,
) -> Result<StepOutcome, ActionError> {
    inside(&cx.s.storage_dir, path)?;
    crate::node::disks::create_volume(path, size_mib).await
}
