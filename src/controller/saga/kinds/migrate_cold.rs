//! `guest.migrate_cold` (S65, S96): a stopped guest moves to another node, with its
//! snapshots.
//!
//! 1. `reserve` (controller; undo: give back): as `guest.migrate` chooses (the node
//!    asked for, or placement), for a guest that is shut off; it turns `migrating`, and
//!    its lock answers every other request 409 naming this operation.
//! 2. `copy` (source node; undo: `discard_copy` on the target, which removes the
//!    target's definition and files): each file is uploaded through the target's
//!    libvirt, whole, so the qcow2 files carry their internal snapshots; then the
//!    definition and the snapshots' metadata are defined there (`node::cold`). Its bytes
//!    are the operation's progress; a cancel stops it between chunks.
//! 3. `rebase` (target node; the pivot): the system disk is pointed at the target's copy
//!    of its template, fetched when the target lacks it. After it, the operation only
//!    goes forward: the target's copy is the guest.
//! 4. `switch` (controller): the record moves to the target (node, VNC port, paths).
//! 5. `release` (source node): the source's definition, snapshots' metadata and files
//!    go.
//!
//! With shared storage nothing is copied or rebased: only the definition moves.

use super::migrate::{self, Chosen, Payload};
use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::{facts_of, guest_of, StepError};
use crate::controller::store::{self as st, GuestRow, StoreError, Tx};
use crate::model::{GuestState, NodeAction, TemplateSource};

super::steps! {
    pub enum Step {
        Reserve = StepDef::controller("reserve", "choosing the target and reserving its port").undoable(),
        Copy = StepDef::node("copy", "copying the disks").undoable().weight(20).lease_secs(3600).interruptible(),
        Rebase = StepDef::node("rebase", "attaching the system disk to the target's template").weight(2).lease_secs(900).pivot(),
        Switch = StepDef::controller("switch", "recording the guest on its new node"),
        Release = StepDef::node("release", "removing the source's copies"),
    }
}

/// `guest.migrate_cold`: move a stopped guest to another node, with its snapshots.
pub struct MigrateCold;

impl Kind for MigrateCold {
    const NAME: &'static str = "guest.migrate_cold";
    const DESCRIPTION: &'static str = "Move a stopped guest to another node: its files copied through the target's libvirt (snapshots included), then defined there.";
    type Payload = Payload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        _p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        Ok(match (step, undo) {
            (Step::Reserve, false) => {
                migrate::reserve_for(cx, &g, GuestState::Shutoff).await?;
                Effect::Done
            }
            (Step::Reserve, true) => {
                migrate::unreserve_to(cx.tx, cx.op, &g, GuestState::Shutoff).await?;
                Effect::Done
            }
            (Step::Copy, false) => {
                let c = migrate::chosen(cx.op)?;
                let facts = facts_of(cx.tx, &c.to).await?;
                Effect::Node {
                    node: c.from.clone(),
                    action: NodeAction::CopyOut {
                        guest_id: g.id.clone(),
                        to: Box::new(migrate::target(&c, &facts)?),
                        paths: c.disks.iter().map(|d| (d.1.clone(), d.2.clone())).collect(),
                        vnc_port: c.vnc_port,
                    },
                }
            }
            (Step::Copy, true) => {
                let c = migrate::chosen(cx.op)?;
                let paths = if c.shared_storage {
                    vec![]
                } else {
                    c.disks.iter().map(|d| d.2.clone()).collect()
                };
                Effect::Node {
                    node: c.to,
                    action: NodeAction::DiscardCopy {
                        guest_id: g.id.clone(),
                        paths,
                    },
                }
            }
            (Step::Rebase, false) => rebase(cx.tx, &g, &migrate::chosen(cx.op)?).await?,
            (Step::Switch, false) => {
                let c = migrate::chosen(cx.op)?;
                migrate::switch_to(cx.tx, &g, &c, GuestState::Shutoff).await?;
                Effect::Done
            }
            (Step::Release, false) => migrate::release(&g, &migrate::chosen(cx.op)?),
            (Step::Rebase | Step::Switch | Step::Release, true) => Effect::Done,
        })
    }

    async fn on_finish(
        tx: &mut Tx<'_>,
        _p: &mut Payload,
        guest: Option<&str>,
        _state: crate::model::OpState,
    ) -> Result<(), StoreError> {
        // However it ended, the guest is shut off somewhere.
        migrate::leave_migrating(tx, guest, GuestState::Shutoff).await
    }
}

/// The target's system disk on the target's template (nothing with shared storage).
async fn rebase(tx: &mut Tx<'_>, g: &GuestRow, c: &Chosen) -> Result<Effect, StepError> {
    if c.shared_storage {
        return Ok(Effect::Done);
    }
    let system = st::disks_of_in(tx, &g.id)
        .await?
        .into_iter()
        .find(|d| d.kind == "system")
        .ok_or_else(|| StepError::Permanent(format!("guest {} has no system disk", g.name)))?;
    let path = c
        .disks
        .iter()
        .find(|d| d.0 == system.id)
        .map(|d| d.2.clone())
        .ok_or_else(|| StepError::Permanent("the system disk has no path on the target".into()))?;
    Ok(Effect::Node {
        node: c.to.clone(),
        action: NodeAction::Rebase {
            path,
            template_path: g.template_path.clone(),
            template: Some(TemplateSource {
                id: g.template_id.clone(),
                sha256: st::template_sha256_in(tx, &g.template_id).await?,
            }),
        },
    })
}
