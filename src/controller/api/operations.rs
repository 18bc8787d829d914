//! Operations: list, show, wait, cancel; and the one helper every writer uses to start one.

use std::time::Duration;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::pages::{Cached, Clock};
use super::{access, AppState, Auth};
use crate::controller::saga::kinds::{OpKind, Request};
use crate::controller::saga::{eta_seconds, launch};
use crate::controller::store::{OpFilter, OpRow, Requester, Tx};
use crate::model::{now_ms, rfc3339, Refusal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum OperationState {
    Pending,
    Running,
    Undoing,
    Succeeded,
    Failed,
    Cancelled,
}

impl OperationState {
    fn as_str(self) -> &'static str {
        match self {
            OperationState::Pending => "pending",
            OperationState::Running => "running",
            OperationState::Undoing => "undoing",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
            OperationState::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Step {
    pub name: String,
    /// `controller` or `node`.
    pub runs_on: String,
    /// pending, running, done, failed, undoing, undone, undo_failed (its undo could not
    /// complete: what it made is on the node's cleanup list and its resources stay held),
    /// abandoned (given up while its node was offline).
    pub state: String,
    pub attempt: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// Set when the node refused the step by its own rules: what was refused.
    pub error_code: Option<Refusal>,
    /// What the step reported: for guest-agent runs, `agent_wait_ms`, `run_ms` and each
    /// batch's per-action results (`batches[].results[]`: action, ok, exit_code, output).
    pub output: Option<serde_json::Value>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Progress {
    pub stage: String,
    pub step: u32,
    pub steps_total: u32,
    pub percent: u32,
    /// Estimate from the pace so far; absent until there is one.
    pub eta_seconds: Option<i64>,
    pub message: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Operation {
    pub id: String,
    /// e.g. `guest.create`.
    pub kind: String,
    pub guest_id: Option<String>,
    pub node_id: Option<String>,
    pub state: String,
    pub progress: Progress,
    pub steps: Vec<Step>,
    /// The error chain when the operation failed or an undo could not complete.
    pub error: Option<String>,
    /// A stable code for the failure, when a node refused a step by its own rules
    /// (the first such step's): act on this, not on the wording of `error`.
    pub error_code: Option<Refusal>,
    pub cancel_requested: bool,
    pub requested_by: String,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

pub fn view(op: &OpRow) -> Operation {
    let steps = op.step_records().unwrap_or_default();
    let now = now_ms();
    Operation {
        id: op.id.clone(),
        kind: op.kind.clone(),
        guest_id: op.guest_id.clone(),
        node_id: op.node_id.clone(),
        state: op.state.as_str().to_string(),
        progress: Progress {
            stage: op.stage.clone(),
            step: (op.cursor.max(0) as u32 + 1).min(steps.len() as u32),
            steps_total: steps.len() as u32,
            percent: op.percent.clamp(0, 100) as u32,
            eta_seconds: eta_seconds(op.started_at, now, op.percent),
            message: op.message.clone(),
        },
        steps: steps
            .iter()
            .map(|s| Step {
                name: s.name.clone(),
                runs_on: serde_json::to_value(s.runs_on)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                state: serde_json::to_value(s.state)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                attempt: s.attempt,
                started_at: s.started_at.map(rfc3339),
                finished_at: s.finished_at.map(rfc3339),
                error: s.error.clone(),
                error_code: s.refusal,
                output: s.output.clone(),
            })
            .collect(),
        error: op.error.clone(),
        error_code: steps.iter().find_map(|s| s.refusal),
        cancel_requested: op.cancel_requested,
        requested_by: op.requested_by.clone(),
        created_at: rfc3339(op.created_at),
        updated_at: rfc3339(op.updated_at),
        finished_at: op.finished_at.map(rfc3339),
    }
}

pub use crate::controller::saga::launch::Target;

/// Creates an operation for a request (see [`launch::create_op`]).
pub async fn start_op(
    state: &AppState,
    tx: &mut Tx<'_>,
    req: &Request,
    target: Target<'_>,
    by: Requester<'_>,
    lock: bool,
) -> Result<OpRow, Error> {
    // guest.create asks its plugins with the whole request, in its handler.
    if req.kind() != OpKind::GuestCreate {
        let kind = req.kind().as_str();
        let (guest_id, node_id) = target.ids();
        let mut payload = req.payload()?;
        // A console ticket's password is for its caller only.
        if let Some(p) = payload.as_object_mut() {
            p.remove("password");
        }
        let view = serde_json::json!({"kind": kind, "guest_id": guest_id, "node_id": node_id,
            "payload": payload, "requested_by": by.name});
        state
            .plugins
            .before(kind, &view)
            .map_err(|e| Error::Unprocessable(e.to_string()))?;
    }
    launch::create_op(&state.catalog, tx, req, target, by, lock)
        .await
        .map_err(launch_error)
}

pub fn launch_error(e: launch::LaunchError) -> Error {
    match e {
        launch::LaunchError::Busy { ref holder, .. } => Error::Conflict {
            message: e.to_string(),
            details: Some(serde_json::json!({"operation_id": holder})),
        },
        launch::LaunchError::Store(s) => Error::Store(s),
    }
}

#[derive(ApiResponse)]
pub enum CancelResponse {
    /// Cancel recorded; it takes effect at the next step boundary, or at once for a step
    /// waiting on an offline node (that step is abandoned, its leftovers listed for the node).
    #[oai(status = 202)]
    Accepted(Json<Operation>),
}

pub struct OperationApi;

#[OpenApi(tag = "super::system::Tag::Operations")]
impl OperationApi {
    /// List operations, oldest first, filtered by typed fields.
    #[oai(path = "/operations", method = "get", operation_id = "operation_list")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// Only this state.
        #[oai(name = "state")]
        op_state: Query<Option<OperationState>>,
        /// Only this kind, e.g. `guest.create`.
        kind: Query<Option<String>>,
        /// Only operations on this guest.
        guest_id: Query<Option<String>>,
        /// Only pending, running or undoing operations.
        #[oai(default)]
        active: Query<bool>,
        /// Page size, 1–1000.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<i64>,
        #[oai(default, validator(minimum(value = "0")))] offset: Query<i64>,
    ) -> ApiResult<Cached<Vec<Operation>>> {
        let filter = OpFilter {
            state: op_state.0.map(|s| s.as_str().to_string()),
            kind: kind.0,
            guest_id: guest_id.0,
            active_only: active.0,
            limit: limit.0,
            offset: offset.0,
            visible_to: auth.0.owner_scope().map(str::to_string),
        };
        let key = format!("operations?{filter:?}");
        // A user's view also follows who owns which guest.
        let tables: &[&str] = if filter.visible_to.is_some() {
            &["operations", "guests"]
        } else {
            &["operations"]
        };
        let store = &state.store;
        state
            .pages
            .page(key, tables, async {
                let rows = store.ops(&filter).await?;
                // An active operation's ETA moves with the clock.
                let clock = if rows.iter().all(|op| op.op_state().is_terminal()) {
                    Clock::Independent
                } else {
                    Clock::Dependent
                };
                Ok((rows.iter().map(view).collect::<Vec<_>>(), clock))
            })
            .await
    }

    /// One operation with its steps and progress.
    #[oai(
        path = "/operations/:id",
        method = "get",
        operation_id = "operation_get"
    )]
    async fn get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Operation>> {
        let op = access::op(&state, &auth.0, &id).await?;
        Ok(Json(view(&op)))
    }

    /// Wait until the operation ends or `timeout` seconds pass; returns it either way.
    #[oai(
        path = "/operations/:id/wait",
        method = "get",
        operation_id = "operation_wait"
    )]
    async fn wait(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        /// Seconds, 0–600.
        #[oai(
            default = "default_wait",
            validator(minimum(value = "0"), maximum(value = "600"))
        )]
        timeout: Query<u64>,
    ) -> ApiResult<Json<Operation>> {
        access::op(&state, &auth.0, &id).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout.0);
        Ok(Json(view(&wait_end(&state, &id, deadline).await?)))
    }

    /// Ask an operation to stop: a pending one never starts; a running one unwinds from
    /// its next step boundary.
    #[oai(
        path = "/operations/:id/cancel",
        method = "post",
        operation_id = "operation_cancel"
    )]
    async fn cancel(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<CancelResponse> {
        let op = access::op(&state, &auth.0, &id).await?;
        if !state.store.request_cancel(&op.id).await? {
            return Err(Error::Conflict {
                message: format!(
                    "operation {} is {} and can no longer be cancelled",
                    op.id,
                    op.state.as_str()
                ),
                details: None,
            }
            .into());
        }
        state.waker.wake(&op.id);
        let op = state
            .store
            .op(&id)
            .await?
            .ok_or_else(|| Error::not_found("operation", id.0.clone()))?;
        Ok(CancelResponse::Accepted(Json(view(&op))))
    }
}

fn default_limit() -> i64 {
    100
}

fn default_wait() -> u64 {
    30
}

/// Operation `id` once it ended, or as it is at `deadline`.
pub async fn wait_end(
    state: &AppState,
    id: &str,
    deadline: tokio::time::Instant,
) -> Result<OpRow, Error> {
    // Subscribed before the first read: an end committed after it is not missed.
    let mut ended = state.store.ops_ended.subscribe();
    loop {
        let op = state
            .store
            .op(id)
            .await?
            .ok_or_else(|| Error::not_found("operation", id))?;
        if op.op_state().is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(op);
        }
        // Woken when this operation ends; the cap re-reads it now and then whatever
        // happens (a lagging subscriber, an end announced by another process).
        let until = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
        loop {
            match tokio::time::timeout_at(until, ended.recv()).await {
                Ok(Ok(done)) if done != id => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(until).await;
                    break;
                }
                _ => break,
            }
        }
    }
}
