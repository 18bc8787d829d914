//! Resizing a guest (S75): `PUT /guests/{id}/size` runs `guest.resize` (see
//! `saga::kinds::resize`) on a guest that is shut off; its node's capacity is checked
//! again by the operation, and a refusal names the node and the reason.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::access;
use super::error::{ApiResult, Error};
use super::guests::{submit, OpResponse};
use super::{AppState, Auth};
use crate::controller::saga::kinds::{resize, Request};
use crate::model::GuestState;

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct GuestSize {
    #[oai(validator(minimum(value = "1"), maximum(value = "256")))]
    pub cpus: Option<u32>,
    #[oai(validator(minimum(value = "32"), maximum(value = "1048576")))]
    pub memory_mib: Option<u32>,
}

pub struct ResizeApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl ResizeApi {
    /// Change a shut-off guest's vCPUs and memory (either or both). Runs as
    /// `guest.resize`; it boots with them at its next start.
    #[oai(
        path = "/guests/:id/size",
        method = "put",
        operation_id = "guest_resize"
    )]
    async fn resize(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<GuestSize>,
    ) -> ApiResult<OpResponse> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let cpus = body.0.cpus.unwrap_or(g.cpus as u32);
        let memory_mib = body.0.memory_mib.unwrap_or(g.memory_mib as u32);
        if cpus == g.cpus as u32 && memory_mib == g.memory_mib as u32 {
            return Err(Error::BadRequest(format!(
                "guest {} already has {cpus} vCPUs and {memory_mib} MiB: give another size",
                g.name
            ))
            .into());
        }
        if g.state != GuestState::Shutoff || g.node_id.is_none() {
            return Err(Error::Conflict {
                message: format!(
                    "guest {} is {}: shut it down to resize it (live resizing needs a maximum \
                     set when the guest is created, which corral does not set yet)",
                    g.name, g.state
                ),
                details: None,
            }
            .into());
        }
        let req = Request::Resize(resize::Payload {
            cpus,
            memory_mib,
            old_cpus: g.cpus as u32,
            old_memory_mib: g.memory_mib as u32,
        });
        Ok(submit(&state, &req, &g.id, &auth.0.name).await?)
    }
}
