//! Moving a guest (S65, S96): `POST /guests/{id}/migrate` runs `guest.migrate` for a
//! running guest (live, see `saga::kinds::migrate`) and `guest.migrate_cold` for a
//! stopped one (its files copied whole, snapshots included, see
//! `saga::kinds::migrate_cold`).
//!
//! Administrators only: a migration chooses among nodes, which only they see. The
//! request is checked before anything starts, each refusal a 4xx that changes nothing:
//! the guest runs or is shut off; a running one has no snapshots (they live inside its
//! system disk, which a live storage migration copies only as it is now: shut it down
//! to move it with them); and the target exists and can take it (the same choice the
//! operation makes: not its own node, online, the guest's bridge, memory and vCPUs). A
//! guest busy with another operation answers 409 naming it, and while it migrates every
//! other request on it answers 409 naming the migration.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::access;
use super::error::{ApiResult, Error};
use super::guests::{submit, OpResponse};
use super::{AppState, Auth};
use crate::controller::saga::kinds::{migrate, Request};
use crate::controller::store::{GuestRow, Requester};
use crate::model::{GuestState, MigrationTuning};

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct MigrateGuest {
    /// The node to move to (its id); left out: placement picks among the other nodes.
    pub node_id: Option<String>,
    /// MiB/s the migration may use; left out: the source node's `migration_rate_mib`,
    /// else unlimited.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000")))]
    pub bandwidth_mib: Option<u64>,
    /// Slow the guest's vCPUs down while it dirties memory faster than the link copies
    /// it, so the copy converges (the guest runs slower for a while).
    #[oai(default)]
    pub auto_converge: bool,
    /// After three pre-copy passes, switch to post-copy: the guest runs on the target
    /// at once and pulls the rest of its memory (it always converges, but a network
    /// failure during that phase loses the guest).
    #[oai(default)]
    pub postcopy: bool,
}

pub struct MigrateApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl MigrateApi {
    /// Move a guest to another node: a running one live (`guest.migrate`), a stopped
    /// one cold, with its snapshots (`guest.migrate_cold`).
    ///
    /// Live: its disks are copied with its memory unless both nodes name the same shared
    /// storage; its IP, MAC, data disks, seed and I/O limits move with it, and its VNC
    /// port is taken from the target's range. The operation's progress carries
    /// libvirt's figures (`migration`: percent, bytes, dirty rate, pass, expected
    /// downtime, ETA). Cancelling it aborts the migration and the guest stays where it
    /// was; once the guest runs on the target, the operation only goes forward.
    ///
    /// Cold: its files (system disk with its internal snapshots, data disks, seed) are
    /// copied through the target's libvirt, its progress the bytes copied; then it is
    /// defined there with its snapshots and stays shut off. The tuning fields do not
    /// apply.
    #[oai(
        path = "/guests/:id/migrate",
        method = "post",
        operation_id = "guest_migrate"
    )]
    async fn migrate(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<MigrateGuest>,
    ) -> ApiResult<OpResponse> {
        access::admin(&auth.0, "migrate guests")?;
        let g = access::guest(&state, &auth.0, &id).await?;
        let b = body.0;
        check_guest(&state, &g).await?;
        if let Some(n) = &b.node_id {
            if state.store.node(n).await?.is_none() {
                return Err(Error::NotFound {
                    what: "node",
                    id: n.clone(),
                }
                .into());
            }
        }
        // The operation's own choice, made now on the current state; nothing is kept.
        let mut tx = state.store.begin().await?;
        let chosen = migrate::choose(&mut tx, &state.thresholds, &g, b.node_id.as_deref()).await;
        drop(tx);
        if let Err(e) = chosen {
            return Err(conflict(&e.message()).into());
        }
        let p = migrate::Payload {
            node_id: b.node_id,
            tuning: MigrationTuning {
                bandwidth_mib: b.bandwidth_mib,
                auto_converge: b.auto_converge,
                postcopy: b.postcopy,
            },
            chosen: None,
        };
        let req = if g.state == GuestState::Shutoff {
            Request::GuestMigrateCold(p)
        } else {
            Request::GuestMigrate(p)
        };
        Ok(submit(&state, &req, &g.id, Requester::user(&auth.0.user)).await?)
    }
}

/// A guest that can move: on a node; running without snapshots, or shut off.
async fn check_guest(state: &AppState, g: &GuestRow) -> Result<(), Error> {
    if let Some(holder) = &g.lock_op {
        // What holds it says more than the state it put the guest in.
        return Err(conflict(&format!(
            "guest {} is busy with operation {holder}; wait for it or cancel it",
            g.name
        )));
    }
    if g.node_id.is_none() {
        return Err(conflict(&format!("guest {} has no node yet", g.name)));
    }
    if g.state == GuestState::Shutoff {
        return Ok(());
    }
    if g.state != GuestState::Running {
        return Err(conflict(&format!(
            "guest {} is {}: a guest migrates running (live) or shut off (cold)",
            g.name, g.state
        )));
    }
    let snapshots = state.store.snapshots_of(&g.id).await?;
    if !snapshots.is_empty() {
        return Err(conflict(&format!(
            "guest {} has {} snapshot(s): they live inside its system disk, and a migration \
             copies only the disk's current state; shut it down to move it with them (cold), or \
             delete them",
            g.name,
            snapshots.len()
        )));
    }
    Ok(())
}

fn conflict(message: &str) -> Error {
    Error::Conflict {
        message: message.to_string(),
        details: None,
    }
}
