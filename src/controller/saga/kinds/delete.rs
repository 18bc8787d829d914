//! `guest.delete`: stop the domain, undefine it, remove its disk and seed, then the record
//! and its leases. No step has an undo: a delete that fails half-way leaves the guest in
//! `error`, and deleting it again finishes the job (every node action is idempotent).

use super::{Ctx, Effect, Kind, NoPayload, StepDef};
use crate::controller::alloc;
use crate::controller::saga::steps::{disk_path, guest_of, StepError};
use crate::controller::store::{self as st, StoreError, Tx};
use crate::model::{NodeAction, OpState};

super::steps! {
    pub enum Step {
        Destroy = StepDef::node("destroy", "stopping").weight(2),
        Undefine = StepDef::node("undefine", "undefining the domain"),
        RemoveDisk = StepDef::node("remove_disk", "removing the system disk"),
        RemoveSeed = StepDef::node("remove_seed", "removing the init seed"),
        Release = StepDef::controller("release", "returning IP, VNC port and MAC"),
    }
}

/// `guest.delete`: stop and remove a guest, its disk and seed, and return its IP, VNC port and MAC.
pub struct Delete;

impl Kind for Delete {
    const NAME: &'static str = "guest.delete";
    const DESCRIPTION: &'static str =
        "Stop and remove a guest, its disk and seed, and return its IP, VNC port and MAC.";
    type Payload = NoPayload;
    type Step = Step;

    async fn on_finish(
        tx: &mut Tx<'_>,
        _p: &mut NoPayload,
        guest: Option<&str>,
        state: OpState,
    ) -> Result<(), StoreError> {
        match guest {
            Some(g) => end(tx, g, state).await,
            None => Ok(()),
        }
    }

    async fn run(
        cx: &mut Ctx<'_, '_>,
        _p: &NoPayload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        if undo {
            // Nothing a delete did can be put back; the saga never asks (no step has an undo).
            return Ok(Effect::Done);
        }
        let Some(node) = g.node_id.clone() else {
            // Never placed: only the record and its leases exist.
            if step == Step::Release {
                release(cx.tx, &g.id).await?;
            }
            return Ok(Effect::Done);
        };
        let disks = st::disks_of_in(cx.tx, &g.id).await?;
        let action = match step {
            Step::Destroy => NodeAction::Destroy { guest_id: g.id },
            Step::Undefine => NodeAction::Undefine { guest_id: g.id },
            Step::RemoveDisk => match disk_path(&disks, "system") {
                Some(path) => NodeAction::RemoveFile { path },
                None => return Ok(Effect::Done),
            },
            Step::RemoveSeed => match disk_path(&disks, "seed") {
                Some(path) => NodeAction::RemoveFile { path },
                None => return Ok(Effect::Done),
            },
            Step::Release => {
                release(cx.tx, &g.id).await?;
                return Ok(Effect::Done);
            }
        };
        Ok(Effect::Node { node, action })
    }
}

async fn release(tx: &mut Tx<'_>, guest: &str) -> Result<(), StepError> {
    alloc::release_all(tx, guest).await?;
    st::delete_guest(tx, guest).await?;
    Ok(())
}

async fn end(tx: &mut Tx<'_>, guest: &str, state: OpState) -> Result<(), StoreError> {
    if state == OpState::Failed {
        super::create::set_error(tx, guest).await?;
    }
    Ok(())
}
