//! A guest, or one of its snapshots, made into a template (S43):
//! `POST /guests/{id}/template` runs `template.from_guest` (see `saga::kinds::to_template`).
//! The request is checked first: a name in use, a guest that runs (without a snapshot to
//! take the disk from) or a snapshot that is not ready is a 4xx that starts nothing.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::access;
use super::error::{ApiResult, Error};
use super::operations::{start_op, Target};
use super::resources::OsType;
use super::{AppState, Auth};
use crate::controller::saga::kinds::{to_template, Request};
use crate::controller::store::{GuestRow, Requester};
use crate::model::{new_id, GuestState};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct GuestToTemplate {
    /// The new template's name (unique): 1-63 letters, digits, `.`, `_` or `-`.
    pub name: String,
    /// Default: the guest's.
    pub os_type: Option<OsType>,
    /// Default: 64.
    #[oai(validator(minimum(value = "16"), maximum(value = "1048576")))]
    pub min_memory_mib: Option<u32>,
    /// Default: the guest's profile.
    pub os_init_profile: Option<String>,
    /// Take the disk as it was at this snapshot (id or name); the guest may run. Without
    /// it the guest must be shut off.
    pub snapshot: Option<String>,
}

#[derive(Debug, Object)]
pub struct TemplateAccepted {
    pub template_id: String,
    pub operation_id: String,
}

#[derive(ApiResponse)]
pub enum TemplateOp {
    /// Accepted; follow the operation at `Location`.
    #[oai(status = 202)]
    Accepted(Json<TemplateAccepted>, #[oai(header = "Location")] String),
}

pub struct ToTemplateApi;

#[OpenApi(tag = "super::system::Tag::Resources")]
impl ToTemplateApi {
    /// Make a new template from a guest's disk, or from one of its snapshots: the image is
    /// flattened with progress, checksummed (SHA-256) and registered private to the
    /// caller. Runs as `template.from_guest`.
    #[oai(
        path = "/guests/:id/template",
        method = "post",
        operation_id = "guest_to_template"
    )]
    async fn to_template(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<GuestToTemplate>,
    ) -> ApiResult<TemplateOp> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let b = body.0;
        super::check_name("template", &b.name)?;
        super::resources::refuse_taken_name(&state, &auth.0, &b.name).await?;
        let snapshot_id = ready_snapshot(&state, &g, b.snapshot.as_deref()).await?;
        check_guest(&g, snapshot_id.is_some())?;
        let dir = super::images::template_dir(&state)?;
        if let Some(p) = &b.os_init_profile {
            super::scripts::require_profile(&state, p).await?;
        }
        let template_id = new_id();
        let req =
            Request::TemplateFromGuest(payload(b, &g, dir, &template_id, snapshot_id, &auth.0.id));
        let mut tx = state.store.begin().await?;
        let op = start_op(
            &state,
            &mut tx,
            &req,
            Target::Guest(&g.id),
            Requester::user(&auth.0.user),
            true,
        )
        .await?;
        state.store.commit(tx).await?;
        state.waker.wake(&op.id);
        Ok(TemplateOp::Accepted(
            Json(TemplateAccepted {
                template_id,
                operation_id: op.id.clone(),
            }),
            super::guests::op_location(&op.id),
        ))
    }
}

/// The id of the snapshot named `snapshot` (id or name) of `g`, when one is asked for:
/// 404 when `g` has no such snapshot, 409 when it is not ready.
async fn ready_snapshot(
    state: &AppState,
    g: &GuestRow,
    snapshot: Option<&str>,
) -> Result<Option<String>, Error> {
    let Some(s) = snapshot else {
        return Ok(None);
    };
    let snap = state
        .store
        .snapshot(&g.id, s)
        .await?
        .ok_or_else(|| Error::not_found("snapshot", s.to_string()))?;
    if snap.state != crate::model::ReadyState::Ready {
        return Err(Error::Conflict {
            message: format!("snapshot {} is {}", snap.name, snap.state),
            details: None,
        });
    }
    Ok(Some(snap.id))
}

/// The guest's disk can be read for a template: it is on a node, and it is shut off
/// unless the disk is taken from a snapshot (409 otherwise).
fn check_guest(g: &GuestRow, from_snapshot: bool) -> Result<(), Error> {
    if g.node_id.is_none() || (!from_snapshot && g.state != GuestState::Shutoff) {
        return Err(Error::Conflict {
            message: format!(
                "guest {} is {}: shut it down, or name one of its snapshots",
                g.name, g.state
            ),
            details: None,
        });
    }
    Ok(())
}

/// The operation's payload: the request's fields, each left out taking the guest's value
/// (or 64 MiB for the memory floor), the image in `dir` and the template owned by `owner`.
fn payload(
    b: GuestToTemplate,
    g: &GuestRow,
    dir: &std::path::Path,
    template_id: &str,
    snapshot_id: Option<String>,
    owner: &str,
) -> to_template::Payload {
    to_template::Payload {
        // Named by the template's id: a path nobody can guess or choose.
        path: format!(
            "{}/{template_id}.qcow2",
            dir.display().to_string().trim_end_matches('/'),
        ),
        template_id: template_id.to_string(),
        name: b.name,
        os_type: match b.os_type {
            Some(OsType::Windows) => "windows".into(),
            Some(OsType::Linux) => "linux".into(),
            None => g.os_type.clone(),
        },
        min_memory_mib: i64::from(b.min_memory_mib.unwrap_or(64)),
        os_init_profile: b.os_init_profile.or_else(|| g.os_init_profile.clone()),
        snapshot_id,
        owner_id: Some(owner.to_string()),
    }
}
