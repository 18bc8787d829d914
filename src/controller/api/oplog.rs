//! An operation's log (S31): `GET /operations/{id}/log`, oldest first. Each line has a
//! short message and the full detail (an error's whole chain, a node's logged fields),
//! where it came from (`controller` or `node:<id>`), and the step and attempt it belongs
//! to. Whoever may see the operation may read its log. See `store/oplog.rs` for how lines
//! are written.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::access;
use super::error::ApiResult;
use super::{AppState, Auth};
use crate::model::rfc3339;

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct LogEntry {
    /// When (RFC 3339, with milliseconds): the controller's clock for its lines, the
    /// node's for the node's.
    pub at: String,
    /// `controller`, or `node:<id>`.
    pub source: String,
    /// The step's index and name, when the line is about one.
    pub step: Option<i64>,
    pub step_name: Option<String>,
    pub attempt: Option<i64>,
    /// The line is about the step's undo.
    pub undo: bool,
    /// `error`, `warn`, `info` or `debug`.
    pub level: String,
    /// The short message.
    pub message: String,
    /// The full detail; absent when the message says it all.
    pub detail: Option<String>,
}

pub struct OpLogApi;

#[OpenApi(tag = "super::system::Tag::Operations")]
impl OpLogApi {
    /// An operation's log: what the controller did and what the node said, by step and
    /// attempt.
    #[oai(
        path = "/operations/:id/log",
        method = "get",
        operation_id = "operation_log"
    )]
    async fn log(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Vec<LogEntry>>> {
        let op = access::op(&state, &auth.0, &id).await?;
        let rows = state.store.op_log(&op.id).await?;
        Ok(Json(
            rows.into_iter()
                .map(|r| LogEntry {
                    at: rfc3339(r.at),
                    source: r.source,
                    step: r.step,
                    step_name: r.step_name,
                    attempt: r.attempt,
                    undo: r.undo,
                    level: r.level,
                    message: r.message,
                    detail: (!r.detail.is_empty()).then_some(r.detail),
                })
                .collect(),
        ))
    }
}
