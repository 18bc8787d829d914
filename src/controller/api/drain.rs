//! Draining a node (S65): `POST /nodes/{id}/drain` runs `node.drain` (see
//! `saga::kinds::drain`). Administrators only.
//!
//! The answer names up front where each guest is to go and which guests cannot move,
//! with the reason, from the same plan the operation makes (the operation plans again
//! when it runs, on the state of then). Refused, with nothing changed: an unknown node
//! (404), a node already draining, and a node that is the only one online (409).

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::access;
use super::error::{ApiResult, Error};
use super::operations::{start_op, Target};
use super::{AppState, Auth};
use crate::controller::saga::kinds::{drain, Request};
use crate::controller::store::Requester;

/// A guest's planned move.
#[derive(Debug, Object)]
pub struct PlannedMove {
    pub guest_id: String,
    pub guest: String,
    /// The node it is to go to.
    pub to: String,
}

/// A guest that stays, and why.
#[derive(Debug, Object)]
pub struct Unmovable {
    pub guest_id: String,
    pub guest: String,
    pub reason: String,
}

/// The drain's operation, and its plan as of the request.
#[derive(Debug, Object)]
pub struct DrainAccepted {
    pub operation_id: String,
    pub moves: Vec<PlannedMove>,
    pub unmovable: Vec<Unmovable>,
}

#[derive(ApiResponse)]
pub enum DrainResponse {
    /// Accepted; follow the operation at `Location`.
    #[oai(status = 202)]
    Accepted(Json<DrainAccepted>, #[oai(header = "Location")] String),
}

pub struct DrainApi;

#[OpenApi(tag = "super::system::Tag::Nodes")]
impl DrainApi {
    /// Move every guest off a node, each as its own `guest.migrate`, at most two at a
    /// time; the node stops taking automatically placed guests (and stays so). Runs as
    /// `node.drain`: it succeeds when every guest moved and otherwise fails naming each
    /// guest that stayed and why. Cancelling it cancels the migrations still running.
    #[oai(
        path = "/nodes/:id/drain",
        method = "post",
        operation_id = "node_drain"
    )]
    async fn drain(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<DrainResponse> {
        access::admin(&auth.0, "draining a node")?;
        let n = state
            .store
            .node(&id)
            .await?
            .ok_or_else(|| Error::not_found("node", id.0.clone()))?;
        let kind = <drain::Drain as crate::controller::saga::kinds::Kind>::NAME;
        if let Some(op) = state.store.active_node_ops(&n.id, kind).await?.first() {
            return Err(
                conflict(format!("node {} is already draining: operation {op}", n.id)).into(),
            );
        }
        let others = state.store.nodes().await?;
        if !others.iter().any(|o| o.id != n.id && o.online) {
            return Err(conflict(format!(
                "node {} is the only online node: there is nowhere to move its guests",
                n.id
            ))
            .into());
        }
        let mut tx = state.store.begin().await?;
        let guests = crate::controller::store::guests_of_node_in(&mut tx, &n.id).await?;
        let (moves, stay) = drain::plan(&mut tx, &state.thresholds, &n.id, &guests)
            .await
            .map_err(|e| Error::Unavailable(e.message()))?;
        let req = Request::NodeDrain(drain::Payload::default());
        let by = Requester::user(&auth.0.user);
        let op = start_op(&state, &mut tx, &req, Target::Node(&n.id), by, false).await?;
        state.store.commit(tx).await?;
        state.waker.wake(&op.id);
        let body = DrainAccepted {
            operation_id: op.id.clone(),
            moves: moves
                .into_iter()
                .map(|m| PlannedMove {
                    guest_id: m.guest_id,
                    guest: m.guest,
                    to: m.to,
                })
                .collect(),
            unmovable: stay
                .into_iter()
                .map(|u| Unmovable {
                    guest_id: u.guest_id,
                    guest: u.guest,
                    reason: u.reason,
                })
                .collect(),
        };
        Ok(DrainResponse::Accepted(
            Json(body),
            super::guests::op_location(&op.id),
        ))
    }
}

fn conflict(message: String) -> Error {
    Error::Conflict {
        message,
        details: None,
    }
}
