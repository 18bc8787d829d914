//! Disks (S04–S06, S08, S20): data disks as resources of their own, and the system and
//! seed disks of guests when asked.
//!
//! Every change is an operation (`disk.create`, `disk.attach`, `disk.detach`,
//! `disk.resize`, `disk.delete`, see `saga::kinds`), answered 202 with its id. The
//! handler checks the request against the disk and the guest first, so a disk in use, on
//! another node, or a size that is not larger is a clear 4xx and changes nothing. An
//! operation holds its disk (and an attach, detach or resize of an attached disk also its
//! guest) until it ends: a second one answers 409 naming the holder.
//!
//! Data disks have owners like guests: a user sees and acts on their own, operators and
//! administrators on all; anyone else's answers 404.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::access;
use super::auth::Caller;
use super::error::{ApiResult, Error};
use super::operations::{start_op, Target};
use super::{AppState, Auth};
use crate::controller::saga::kinds::{
    disk_attach, disk_create::DiskRef, disk_limits, disk_resize, Request,
};
use crate::controller::store::Requester;
use crate::controller::store::{self as st, DataDiskRow};
use crate::model::{new_id, now_ms, rfc3339, IoTune};

/// The largest disk corral creates, GiB.
const MAX_GIB: u64 = 65_536;

#[derive(Debug, Clone, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct DiskLimits {
    /// I/O operations per second, reads and writes together.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000")))]
    pub total_iops_sec: Option<u64>,
    /// Bytes per second, reads and writes together.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000000")))]
    pub total_bytes_sec: Option<u64>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct DiskDetail {
    pub id: String,
    pub name: String,
    /// `data`, or a guest's `system` or `seed` disk.
    pub kind: String,
    pub node_id: String,
    /// The file, on the node.
    pub path: String,
    pub size_gib: Option<u64>,
    /// The guest it is attached to, and the device the guest sees.
    pub guest_id: Option<String>,
    pub target: Option<String>,
    /// Kept in the guest's definition while attached, so restarts keep them.
    pub limits: Option<DiskLimits>,
    /// `creating`, `ready` or `deleting`.
    pub state: String,
    /// The operation working on the disk now.
    pub busy_with: Option<String>,
    pub owner_id: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateDisk {
    /// Unique among the owner's disks: 1-63 letters, digits, `.`, `_` or `-`.
    pub name: String,
    #[oai(validator(minimum(value = "1"), maximum(value = "65536")))]
    pub size_gib: u64,
    /// The node to create it on. Default: the node of `guest` when given, else the
    /// online node with the most free storage.
    pub node: Option<String>,
    /// Create it on this guest's node (it is not attached: attach it next).
    pub guest: Option<String>,
    pub limits: Option<DiskLimits>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct AttachDisk {
    /// The guest (id or name), on the disk's node.
    pub guest: String,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct ResizeDisk {
    /// The new size: larger than the current one (disks never shrink).
    #[oai(validator(minimum(value = "1"), maximum(value = "65536")))]
    pub size_gib: u64,
}

#[derive(Debug, Object)]
pub struct DiskAccepted {
    pub disk_id: String,
    pub operation_id: String,
}

#[derive(ApiResponse)]
pub enum DiskOp {
    /// Accepted; follow the operation at `Location`.
    #[oai(status = 202)]
    Accepted(Json<DiskAccepted>, #[oai(header = "Location")] String),
}

fn accepted(disk: &str, op: &str) -> DiskOp {
    DiskOp::Accepted(
        Json(DiskAccepted {
            disk_id: disk.to_string(),
            operation_id: op.to_string(),
        }),
        super::guests::op_location(op),
    )
}

/// What an operation on disk `d` holds besides the disk: its guest while attached (the
/// change reaches the guest's domain), else its node.
fn held_by(d: &DataDiskRow) -> Target<'_> {
    match &d.guest_id {
        Some(g) => Target::Guest(g),
        None => Target::Node(&d.node_id),
    }
}

fn limits_view(t: IoTune) -> DiskLimits {
    DiskLimits {
        total_iops_sec: t.total_iops_sec,
        total_bytes_sec: t.total_bytes_sec,
    }
}

fn view(d: DataDiskRow) -> DiskDetail {
    DiskDetail {
        limits: d.limits().map(limits_view),
        size_gib: Some((d.size_mib as u64).div_ceil(1024)),
        kind: "data".into(),
        id: d.id,
        name: d.name,
        node_id: d.node_id,
        path: d.path,
        guest_id: d.guest_id,
        target: d.target,
        state: d.state.as_str().to_string(),
        busy_with: d.lock_op,
        owner_id: d.owner_id,
        created_at: rfc3339(d.created_at),
    }
}

fn sees(caller: &Caller, d: &DataDiskRow) -> bool {
    caller.sees_all() || d.owner_id.as_deref() == Some(caller.id.as_str())
}

/// The data disk `id` (id or name) if the caller may see it; 404 otherwise.
async fn disk(state: &AppState, caller: &Caller, id: &str) -> Result<DataDiskRow, Error> {
    state
        .store
        .data_disk(id)
        .await?
        .filter(|d| sees(caller, d))
        .ok_or_else(|| Error::not_found("disk", id))
}

async fn disk_visible(state: &AppState, caller: &Caller, name: &str) -> Result<bool, Error> {
    Ok(state
        .store
        .data_disk(name)
        .await?
        .is_some_and(|d| sees(caller, &d)))
}

fn conflict(message: String) -> Error {
    Error::Conflict {
        message,
        details: None,
    }
}

/// The first device name of `vdc`…`vdz` the guest does not use (`vda` is its system disk,
/// `vdb` its seed).
fn free_target(used: &[String]) -> Option<String> {
    ('c'..='z')
        .map(|c| format!("vd{c}"))
        .find(|t| !used.contains(t))
}

/// Starts `req` holding disk `disk` (and the guest of `target`), in one transaction; for a
/// new disk, `insert` is its record.
async fn launch(
    state: &AppState,
    caller: &Caller,
    req: Request,
    target: Target<'_>,
    disk: &str,
    insert: Option<DataDiskRow>,
) -> Result<DiskOp, Error> {
    let mut tx = state.store.begin().await?;
    let lock_guest = matches!(target, Target::Guest(_));
    let op = start_op(
        state,
        &mut tx,
        &req,
        target,
        Requester::user(&caller.user),
        lock_guest,
    )
    .await?;
    match insert {
        Some(mut d) => {
            d.lock_op = Some(op.id.clone());
            match st::insert_data_disk(&mut tx, &d).await {
                // Names are unique across the cloud; whose disk has it is not said.
                Err(e) if e.is_unique_violation() => {
                    let theirs = disk_visible(state, caller, &d.name).await?;
                    return Err(conflict(if theirs {
                        format!("a disk named {} already exists", d.name)
                    } else {
                        format!("the name {} is taken: choose another", d.name)
                    }));
                }
                r => r?,
            }
        }
        None => {
            if let Some(holder) = st::lock_disk(&mut tx, disk, &op.id).await? {
                return Err(Error::Conflict {
                    message: format!(
                        "disk {disk} is busy with operation {holder}; wait for it or cancel it"
                    ),
                    details: Some(serde_json::json!({"operation_id": holder})),
                });
            }
        }
    }
    state.store.commit(tx).await?;
    state.waker.wake(&op.id);
    Ok(accepted(disk, &op.id))
}

pub struct DiskApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl DiskApi {
    /// Disks the caller may see: data disks, and with `include_system=true` also the
    /// system and seed disks of their guests (S20).
    #[oai(path = "/disks", method = "get", operation_id = "disk_list")]
    async fn list(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        include_system: Query<Option<bool>>,
    ) -> ApiResult<Json<Vec<DiskDetail>>> {
        let owner = (!auth.0.sees_all()).then(|| auth.0.id.clone());
        let mut out: Vec<DiskDetail> = state
            .store
            .data_disks(owner.as_deref())
            .await?
            .into_iter()
            .map(view)
            .collect();
        if include_system.0 == Some(true) {
            for g in state.store.guests_of_owner(owner.as_deref()).await? {
                for d in state.store.disks_of(&g.id).await? {
                    if d.kind == "data" {
                        continue;
                    }
                    out.push(DiskDetail {
                        name: format!("{}-{}", g.name, d.kind),
                        id: d.id,
                        kind: d.kind,
                        node_id: d.node_id,
                        path: d.path,
                        size_gib: None,
                        guest_id: d.guest_id,
                        target: None,
                        limits: None,
                        state: "ready".into(),
                        busy_with: None,
                        owner_id: g.owner_id.clone(),
                        created_at: rfc3339(d.created_at),
                    });
                }
            }
        }
        Ok(Json(out))
    }

    #[oai(path = "/disks/:id", method = "get", operation_id = "disk_get")]
    async fn get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<DiskDetail>> {
        Ok(Json(view(disk(&state, &auth.0, &id).await?)))
    }

    /// Create an empty data disk (qcow2) on a node. Runs as `disk.create`.
    #[oai(path = "/disks", method = "post", operation_id = "disk_create")]
    async fn create(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<CreateDisk>,
    ) -> ApiResult<DiskOp> {
        let b = body.0;
        super::check_name("disk", &b.name)?;
        if b.size_gib == 0 || b.size_gib > MAX_GIB {
            return Err(Error::BadRequest(format!("size_gib must be 1 to {MAX_GIB}")).into());
        }
        let node_id = match (&b.node, &b.guest) {
            (Some(_), Some(_)) => {
                return Err(Error::BadRequest("give `node` or `guest`, not both".into()).into())
            }
            (Some(n), None) => {
                // Users do not see nodes: which ids exist is not theirs to learn.
                access::operator(&auth.0, "placing a disk on a chosen node")?;
                n.clone()
            }
            (None, Some(g)) => access::guest(&state, &auth.0, g)
                .await?
                .node_id
                .ok_or_else(|| conflict(format!("guest {g} is not placed on a node yet")))?,
            (None, None) => state
                .store
                .nodes()
                .await?
                .into_iter()
                .filter(|n| n.online)
                .max_by_key(|n| n.node_facts().storage_free_mib)
                .map(|n| n.id)
                .ok_or_else(|| conflict("no node is online to hold the disk".into()))?,
        };
        let node = state.store.node(&node_id).await?.ok_or_else(|| {
            Error::Unprocessable(format!(
                "node {node_id} is not known; GET /nodes lists them"
            ))
        })?;
        let dir = node.node_facts().storage_dir;
        if dir.is_empty() {
            return Err(
                conflict(format!("node {node_id} has not reported its storage yet")).into(),
            );
        }
        let id = new_id();
        let limits = b.limits.map(|l| IoTune {
            total_iops_sec: l.total_iops_sec,
            total_bytes_sec: l.total_bytes_sec,
        });
        let row = DataDiskRow {
            path: format!("{}/{id}-data.qcow2", dir.trim_end_matches('/')),
            id: id.clone(),
            name: b.name,
            owner_id: Some(auth.0.id.clone()),
            node_id: node_id.clone(),
            size_mib: (b.size_gib * 1024) as i64,
            guest_id: None,
            target: None,
            iotune: limits
                .filter(|l| *l != IoTune::default())
                .map(|l| serde_json::to_string(&l))
                .transpose()
                .map_err(st::StoreError::from)?,
            state: crate::model::ReadyState::Creating,
            lock_op: None,
            created_at: now_ms(),
        };
        let req = Request::DiskCreate(DiskRef {
            disk_id: id.clone(),
        });
        Ok(launch(&state, &auth.0, req, Target::Node(&node_id), &id, Some(row)).await?)
    }

    /// Attach a data disk to a guest on the same node: hot-plugged when the guest runs,
    /// and in its definition either way. Runs as `disk.attach`.
    #[oai(
        path = "/disks/:id/attach",
        method = "post",
        operation_id = "disk_attach"
    )]
    async fn attach(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<AttachDisk>,
    ) -> ApiResult<DiskOp> {
        let d = disk(&state, &auth.0, &id).await?;
        let g = access::guest(&state, &auth.0, &body.0.guest).await?;
        if let Some(other) = &d.guest_id {
            return Err(conflict(format!(
                "disk {} is attached to guest {other}; detach it first",
                d.name
            ))
            .into());
        }
        if d.state != crate::model::ReadyState::Ready {
            return Err(conflict(format!("disk {} is {}", d.name, d.state)).into());
        }
        if g.node_id.as_deref() != Some(d.node_id.as_str()) {
            return Err(conflict(format!(
                "disk {} is on node {} and guest {} on {}: a disk attaches on its own node",
                d.name,
                d.node_id,
                g.name,
                g.node_id.as_deref().unwrap_or("no node")
            ))
            .into());
        }
        if g.state.owned_by_operation() {
            return Err(conflict(format!("guest {} is {}", g.name, g.state)).into());
        }
        let used = state.store.disk_targets(&g.id).await?;
        let target = free_target(&used)
            .ok_or_else(|| conflict(format!("guest {} has no free disk slot", g.name)))?;
        let req = Request::DiskAttach(disk_attach::Payload {
            disk_id: d.id.clone(),
            target,
        });
        Ok(launch(&state, &auth.0, req, Target::Guest(&g.id), &d.id, None).await?)
    }

    /// Detach a data disk from its guest (the running guest releases it). Runs as
    /// `disk.detach`; the disk stays, free for another guest on its node.
    #[oai(
        path = "/disks/:id/detach",
        method = "post",
        operation_id = "disk_detach"
    )]
    async fn detach(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<DiskOp> {
        let d = disk(&state, &auth.0, &id).await?;
        let Some(guest) = d.guest_id.clone() else {
            return Err(conflict(format!("disk {} is not attached", d.name)).into());
        };
        let req = Request::DiskDetach(DiskRef {
            disk_id: d.id.clone(),
        });
        Ok(launch(&state, &auth.0, req, Target::Guest(&guest), &d.id, None).await?)
    }

    /// Grow a data disk: live when its guest runs, on the file otherwise. Runs as
    /// `disk.resize`. A size that is not larger is refused.
    #[oai(
        path = "/disks/:id/resize",
        method = "post",
        operation_id = "disk_resize"
    )]
    async fn resize(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<ResizeDisk>,
    ) -> ApiResult<DiskOp> {
        let d = disk(&state, &auth.0, &id).await?;
        let size_mib = body.0.size_gib.min(MAX_GIB) * 1024;
        if size_mib as i64 <= d.size_mib {
            return Err(Error::BadRequest(format!(
                "disk {} has {} GiB; a disk only grows, so ask for more than that",
                d.name,
                (d.size_mib as u64).div_ceil(1024)
            ))
            .into());
        }
        if d.state != crate::model::ReadyState::Ready {
            return Err(conflict(format!("disk {} is {}", d.name, d.state)).into());
        }
        let req = Request::DiskResize(disk_resize::Payload {
            disk_id: d.id.clone(),
            size_mib,
        });
        Ok(launch(&state, &auth.0, req, held_by(&d), &d.id, None).await?)
    }

    /// Replace a data disk's I/O limits; `{}` lifts them. Runs as `disk.set_limits`: live
    /// when its guest runs (no restart, no detach), in the definition otherwise, so they
    /// survive restarts. A detached disk gets them when it is next attached.
    #[oai(
        path = "/disks/:id/limits",
        method = "put",
        operation_id = "disk_set_limits"
    )]
    async fn set_limits(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<DiskLimits>,
    ) -> ApiResult<DiskOp> {
        let d = disk(&state, &auth.0, &id).await?;
        let limits = Some(IoTune {
            total_iops_sec: body.0.total_iops_sec,
            total_bytes_sec: body.0.total_bytes_sec,
        })
        .filter(|l| *l != IoTune::default());
        let old_limits = d.limits();
        if limits == old_limits {
            return Err(Error::BadRequest(format!(
                "disk {} already has these limits: give other ones",
                d.name
            ))
            .into());
        }
        if d.state != crate::model::ReadyState::Ready {
            return Err(conflict(format!("disk {} is {}", d.name, d.state)).into());
        }
        let req = Request::DiskSetLimits(disk_limits::Payload {
            disk_id: d.id.clone(),
            limits,
            old_limits,
        });
        Ok(launch(&state, &auth.0, req, held_by(&d), &d.id, None).await?)
    }

    /// Delete a detached data disk and its file. Runs as `disk.delete`.
    #[oai(path = "/disks/:id", method = "delete", operation_id = "disk_delete")]
    async fn delete(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<DiskOp> {
        let d = disk(&state, &auth.0, &id).await?;
        if let Some(g) = &d.guest_id {
            return Err(conflict(format!(
                "disk {} is attached to guest {g}; detach it first",
                d.name
            ))
            .into());
        }
        let req = Request::DiskDelete(DiskRef {
            disk_id: d.id.clone(),
        });
        Ok(launch(&state, &auth.0, req, Target::Node(&d.node_id), &d.id, None).await?)
    }
}
