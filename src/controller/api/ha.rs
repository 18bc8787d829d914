//! HA (S74): `PUT /guests/{id}/ha` turns a guest's HA on or off, as `guest.set_ha` (the
//! domain's HA mark, then the flag). Its owner or an administrator may; a guest busy
//! with another operation answers 409 naming it, one not placed on a node yet 409.
//!
//! What HA does with the flag is `saga::kinds::node_failover`: a node offline for longer
//! than `ha_after_secs` is fenced with its fence command (`PATCH /nodes/{id}`,
//! `fence_command`), and only then do its HA guests restart on nodes that see the same
//! shared storage.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::access;
use super::error::{ApiResult, Error};
use super::guests::{submit, OpResponse};
use super::{AppState, Auth};
use crate::controller::saga::kinds::{set_ha, Request};
use crate::controller::store::Requester;

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct GuestHa {
    /// Restart the guest on another node when its node is fenced.
    pub enabled: bool,
}

pub struct HaApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl HaApi {
    /// Turn a guest's HA on or off. Runs as `guest.set_ha`.
    ///
    /// An HA guest carries corral's HA mark in its definition: a node cut off from
    /// Redis and the controller for `self_fence_secs` stops the guests that carry it,
    /// and a node offline for `ha_after_secs` is fenced (its fence command) before its
    /// HA guests restart on another node. Only guests on shared storage can restart
    /// elsewhere; the guest's `state_reason` says why one did not.
    #[oai(path = "/guests/:id/ha", method = "put", operation_id = "guest_set_ha")]
    async fn set(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<GuestHa>,
    ) -> ApiResult<OpResponse> {
        let g = access::guest(&state, &auth.0, &id).await?;
        if let Some(holder) = &g.lock_op {
            return Err(Error::Conflict {
                message: format!(
                    "guest {} is busy with operation {holder}; wait for it or cancel it",
                    g.name
                ),
                details: None,
            }
            .into());
        }
        if g.node_id.is_none() {
            return Err(Error::Conflict {
                message: format!("guest {} has no node yet", g.name),
                details: None,
            }
            .into());
        }
        let req = Request::GuestSetHa(set_ha::Payload { on: body.0.enabled });
        Ok(submit(&state, &req, &g.id, Requester::user(&auth.0.user)).await?)
    }
}
