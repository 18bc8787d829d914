//! Snapshot actions on a node: internal qcow2 snapshots through libvirt.
//!
//! Internal snapshots keep everything in the guest's qcow2 files (disks; memory too when
//! the guest runs, so a revert returns it running exactly where it was). They were
//! chosen over external overlays on measured figures (docs/ARCHITECTURE.md): their time
//! follows the allocated data and the guest's memory, not the disk's size, and libvirt
//! 9.0 cannot revert external snapshots at all.
//!
//! Taking one looks first (a re-run job finds it taken). With the guest agent answering,
//! the guest's filesystems are frozen for the moment of the snapshot and thawed right
//! after, whatever happened; a re-run also thaws a guest an earlier attempt left frozen.

use super::actions::ActionError;
use super::hypervisor::{DomState, Hypervisor};
use crate::model::{SnapshotReport, StepOutcome};

fn taken(vm_state: DomState, quiesced: bool) -> Result<StepOutcome, ActionError> {
    let report = SnapshotReport {
        vm_state: vm_state.as_str().to_string(),
        quiesced,
    };
    StepOutcome::reported(None, None, &report)
        .map_err(|e| ActionError::failed("encoding the report", e))
}

fn done(state: Option<DomState>) -> StepOutcome {
    StepOutcome::Ok {
        guest_state: state.map(|s| s.as_str().to_string()),
        domain_xml: None,
        output: None,
    }
}

pub async fn create(
    hv: &dyn Hypervisor,
    guest: &str,
    name: &str,
) -> Result<StepOutcome, ActionError> {
    let state = hv
        .state(guest)
        .await?
        .ok_or_else(|| ActionError::Permanent(format!("domain {guest} is not defined here")))?;
    let running = state == DomState::Running;
    if hv.has_snapshot(guest, name).await? {
        if running {
            super::agent::thaw_if_frozen(hv, guest).await;
        }
        return taken(state, false);
    }
    let frozen = running && super::agent::freeze(hv, guest).await;
    let took = hv.create_snapshot(guest, name).await;
    if frozen {
        super::agent::thaw_if_frozen(hv, guest).await;
    }
    took.map_err(|e| ActionError::failed("taking the snapshot", e))?;
    taken(state, frozen)
}

pub async fn revert(
    hv: &dyn Hypervisor,
    guest: &str,
    name: &str,
) -> Result<StepOutcome, ActionError> {
    if !hv.has_snapshot(guest, name).await? {
        return Err(ActionError::Permanent(format!(
            "the guest has no snapshot {name} on this node"
        )));
    }
    hv.revert_snapshot(guest, name)
        .await
        .map_err(|e| ActionError::failed("reverting", e))?;
    let state = hv.state(guest).await?;
    Ok(done(state))
}

pub async fn delete(
    hv: &dyn Hypervisor,
    guest: &str,
    name: &str,
) -> Result<StepOutcome, ActionError> {
    if hv.state(guest).await?.is_some() && hv.has_snapshot(guest, name).await? {
        hv.delete_snapshot(guest, name)
            .await
            .map_err(|e| ActionError::failed("deleting the snapshot", e))?;
    }
    Ok(done(None))
}
