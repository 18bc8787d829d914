//! Snapshots of a guest (S80, S83): `/guests/{id}/snapshots`.
//!
//! Taking, reverting and deleting are operations (`snapshot.create`, `snapshot.revert`,
//! `snapshot.delete`) that hold the guest while they run: snapshot work on one guest is
//! exclusive, and any other operation asked of the guest meanwhile answers 409 naming the
//! holder. Internal qcow2 snapshots (see `node::snapshots` and docs/ARCHITECTURE.md for
//! why): a running guest's snapshot holds its memory too, so a revert returns it running
//! exactly where it was.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::access;
use super::error::{ApiResult, Error};
use super::operations::{start_op, Target};
use super::{AppState, Auth};
use crate::controller::saga::kinds::snapshot_create::SnapshotRef;
use crate::controller::saga::kinds::Request;
use crate::controller::store::Requester;
use crate::controller::store::{self as st, GuestRow, SnapshotRow};
use crate::model::{new_id, now_ms, rfc3339};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Snapshot {
    pub id: String,
    pub guest_id: String,
    pub name: String,
    pub description: Option<String>,
    /// `creating` or `ready`.
    pub state: String,
    /// What the guest was when taken: `running` (memory included) or `shutoff`.
    pub vm_state: Option<String>,
    /// The guest's filesystems were frozen through its agent for the snapshot.
    pub quiesced: bool,
    pub created_at: String,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Unique among the guest's snapshots: 1-63 letters, digits, `.`, `_` or `-`.
    pub name: String,
    #[oai(validator(max_length = 1024))]
    pub description: Option<String>,
}

#[derive(Debug, Object)]
pub struct SnapshotAccepted {
    pub snapshot_id: String,
    pub operation_id: String,
}

#[derive(ApiResponse)]
pub enum SnapshotOp {
    /// Accepted; follow the operation at `Location`.
    #[oai(status = 202)]
    Accepted(Json<SnapshotAccepted>, #[oai(header = "Location")] String),
}

fn view(s: SnapshotRow) -> Snapshot {
    Snapshot {
        id: s.id,
        guest_id: s.guest_id,
        name: s.name,
        description: s.description,
        state: s.state.as_str().to_string(),
        vm_state: s.vm_state,
        quiesced: s.quiesced,
        created_at: rfc3339(s.created_at),
    }
}

/// A guest that exists on a node and is not being created or deleted.
fn ready(g: &GuestRow) -> Result<(), Error> {
    if g.node_id.is_none() || g.domain_xml.is_none() || g.state.owned_by_operation() {
        return Err(Error::Conflict {
            message: format!(
                "guest {} is {}; snapshots need a guest that exists on its node",
                g.name, g.state
            ),
            details: None,
        });
    }
    Ok(())
}

async fn snapshot(state: &AppState, g: &GuestRow, id: &str) -> Result<SnapshotRow, Error> {
    state
        .store
        .snapshot(&g.id, id)
        .await?
        .ok_or_else(|| Error::not_found("snapshot", id))
}

/// Starts `req` on guest `g` (holding it), first writing `insert` when given.
async fn launch(
    state: &AppState,
    by: Requester<'_>,
    g: &GuestRow,
    snapshot_id: &str,
    req: Request,
    insert: Option<SnapshotRow>,
) -> Result<SnapshotOp, Error> {
    let mut tx = state.store.begin().await?;
    let op = start_op(state, &mut tx, &req, Target::Guest(&g.id), by, true).await?;
    if let Some(s) = insert {
        st::insert_snapshot(&mut tx, &s).await?;
    }
    state.store.commit(tx).await?;
    state.waker.wake(&op.id);
    Ok(SnapshotOp::Accepted(
        Json(SnapshotAccepted {
            snapshot_id: snapshot_id.to_string(),
            operation_id: op.id.clone(),
        }),
        super::guests::op_location(&op.id),
    ))
}

pub struct SnapshotApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl SnapshotApi {
    /// The guest's snapshots, oldest first.
    #[oai(
        path = "/guests/:id/snapshots",
        method = "get",
        operation_id = "snapshot_list"
    )]
    async fn list(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Vec<Snapshot>>> {
        let g = access::guest(&state, &auth.0, &id).await?;
        Ok(Json(
            state
                .store
                .snapshots_of(&g.id)
                .await?
                .into_iter()
                .map(view)
                .collect(),
        ))
    }

    /// Take a snapshot: disks, and memory when the guest runs; the filesystems are frozen
    /// through the guest agent first when it answers. Runs as `snapshot.create`.
    #[oai(
        path = "/guests/:id/snapshots",
        method = "post",
        operation_id = "snapshot_create"
    )]
    async fn create(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<CreateSnapshot>,
    ) -> ApiResult<SnapshotOp> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let b = body.0;
        super::check_name("snapshot", &b.name)?;
        ready(&g)?;
        if state.store.snapshot(&g.id, &b.name).await?.is_some() {
            return Err(Error::Conflict {
                message: format!("guest {} already has a snapshot named {}", g.name, b.name),
                details: None,
            }
            .into());
        }
        let sid = new_id();
        let row = SnapshotRow {
            id: sid.clone(),
            guest_id: g.id.clone(),
            name: b.name,
            description: b.description,
            state: crate::model::ReadyState::Creating,
            vm_state: None,
            quiesced: false,
            created_at: now_ms(),
        };
        let req = Request::SnapshotCreate(SnapshotRef {
            snapshot_id: sid.clone(),
        });
        Ok(launch(
            &state,
            Requester::user(&auth.0.user),
            &g,
            &sid,
            req,
            Some(row),
        )
        .await?)
    }

    /// Return the guest to a snapshot: its disks, and its memory and running state when
    /// the snapshot holds them. What was written since is gone. Runs as `snapshot.revert`.
    #[oai(
        path = "/guests/:id/snapshots/:snapshot/revert",
        method = "post",
        operation_id = "snapshot_revert"
    )]
    async fn revert(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        snapshot: Path<String>,
    ) -> ApiResult<SnapshotOp> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let s = self::snapshot(&state, &g, &snapshot).await?;
        ready(&g)?;
        if s.state != crate::model::ReadyState::Ready {
            return Err(Error::Conflict {
                message: format!("snapshot {} is {}", s.name, s.state),
                details: None,
            }
            .into());
        }
        let req = Request::SnapshotRevert(SnapshotRef {
            snapshot_id: s.id.clone(),
        });
        Ok(launch(&state, Requester::user(&auth.0.user), &g, &s.id, req, None).await?)
    }

    /// Delete a snapshot. Runs as `snapshot.delete`.
    #[oai(
        path = "/guests/:id/snapshots/:snapshot",
        method = "delete",
        operation_id = "snapshot_delete"
    )]
    async fn delete(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        snapshot: Path<String>,
    ) -> ApiResult<SnapshotOp> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let s = self::snapshot(&state, &g, &snapshot).await?;
        let req = Request::SnapshotDelete(SnapshotRef {
            snapshot_id: s.id.clone(),
        });
        Ok(launch(&state, Requester::user(&auth.0.user), &g, &s.id, req, None).await?)
    }
}
