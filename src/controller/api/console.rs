//! Console tickets: `POST /guests/{id}/console`.
//!
//! A guest's VNC password is made by its node and known to nobody, so the console is
//! closed until someone who may act on the guest asks for a ticket. The handler makes a
//! one-time password, runs `guest.console` (see `saga::kinds::console`) to set it on the
//! running domain with an expiry that QEMU enforces, waits for that operation and answers
//! the password with where to connect. Nothing keeps the password afterwards.

use std::time::Duration;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::operations::{start_op, wait_end, Target};
use super::{access, AppState, Auth};
use crate::controller::saga::kinds::console::{self, MAX_VALID_SECS};
use crate::controller::saga::kinds::Request;
use crate::controller::store::Requester;
use crate::model::{now_ms, random_secret, rfc3339, GuestState, OpState};

/// How long the handler waits for the node to set the password.
const SET_WITHIN: Duration = Duration::from_secs(30);

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ConsoleRequest {
    /// How long the password works, seconds (default 60, at most 600). A VNC client
    /// connected by then stays connected.
    #[oai(validator(minimum(value = "1"), maximum(value = "600")))]
    pub valid_seconds: Option<u64>,
}

/// Where and how to open the console, answered once.
#[derive(Debug, Object)]
pub struct ConsoleTicket {
    pub guest_id: String,
    pub node_id: String,
    /// The node's address; its VNC server listens on the node's `vnc_listen`.
    pub address: String,
    pub port: u16,
    /// The VNC password, refused by QEMU after `expires_at`.
    pub password: String,
    pub expires_at: String,
    /// The `guest.console` operation that set it.
    pub operation_id: String,
    /// The controller's WebSocket to this console (path and single-use ticket, for the
    /// caller only, valid until `expires_at`): a browser opens it with its session, and
    /// never reaches the node.
    pub websocket: String,
}

#[derive(ApiResponse)]
pub enum TicketIssued {
    #[oai(status = 201)]
    Created(Json<ConsoleTicket>),
}

pub struct ConsoleApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl ConsoleApi {
    /// Open a running guest's VNC console for a short while: answers a one-time password
    /// (and where to connect) that stops working after `valid_seconds`.
    #[oai(
        path = "/guests/:id/console",
        method = "post",
        operation_id = "guest_console"
    )]
    async fn console(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<ConsoleRequest>,
    ) -> ApiResult<TicketIssued> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let (Some(node), Some(port), GuestState::Running) =
            (g.node_id.clone(), g.vnc_port, g.state)
        else {
            return Err(Error::Conflict {
                message: format!(
                    "guest {} is {}; its console opens while it runs",
                    g.name, g.state
                ),
                details: None,
            }
            .into());
        };
        let secs = body.0.valid_seconds.unwrap_or(60).clamp(1, MAX_VALID_SECS);
        // VNC authentication reads eight characters.
        let password = random_secret(8);
        let valid_until_ms = now_ms() + (secs as i64) * 1000;
        let req = Request::GuestConsole(console::Payload {
            password: password.clone(),
            valid_until_ms,
        });
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
        password_set(&state, &op.id, &node).await?;
        let address = state
            .store
            .node(&node)
            .await?
            .map(|n| n.node_facts().address)
            .unwrap_or_default();
        let websocket = state.consoles.issue(
            &auth.0.user.id,
            &g.id,
            &address,
            port as u16,
            valid_until_ms,
        );
        Ok(TicketIssued::Created(Json(ConsoleTicket {
            websocket,
            guest_id: g.id,
            node_id: node,
            address,
            port: port as u16,
            password,
            expires_at: rfc3339(valid_until_ms),
            operation_id: op.id,
        })))
    }
}

/// Waits for the `guest.console` operation `op` to set the password on `node`: Ok once it
/// has, 409 when it failed, 503 when the node is too slow (the operation goes on).
async fn password_set(state: &AppState, op: &str, node: &str) -> Result<(), Error> {
    let done = wait_end(state, op, tokio::time::Instant::now() + SET_WITHIN).await?;
    match done.op_state() {
        OpState::Succeeded => Ok(()),
        s if s.is_terminal() => Err(Error::Conflict {
            message: format!(
                "the console could not be opened: {}",
                done.error.unwrap_or_else(|| s.as_str().to_string())
            ),
            details: Some(serde_json::json!({"operation_id": op})),
        }),
        _ => Err(Error::Unavailable(format!(
            "node {node} did not set the console password within {} s; operation {op} \
             goes on, and the password it sets expires unused",
            SET_WITHIN.as_secs(),
        ))),
    }
}
