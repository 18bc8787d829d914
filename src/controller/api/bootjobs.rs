//! Boot jobs (S12–S14, S18, S19, S21): queue a script's run for one guest or many, list a
//! guest's jobs, list the guests with pending jobs, withdraw a pending job.
//!
//! A job runs at the guest's next boot, or at once when the caller asks (`run_now`) and the
//! guest is running: then a `guest.boot_jobs` operation claims it right away. A busy guest
//! (another operation holds it) runs it as soon as it is free.
//!
//! Parameters are stored until the job runs. A script declares which of them are secret
//! (`fn secrets()`, returning their names; see `script::guest::eval_secrets`): their values
//! are sealed with the controller's key (`controller::sealed`) in `sealed_params`, `params`
//! keeps `"***"` in their place (so every view and the audit show that), the run opens them
//! just before it goes to the node, and ending or withdrawing the job deletes them. The
//! node's copy in Redis goes when its job ends (`transport::jobdata`). corral no longer
//! guesses secrets from parameter names: a name says nothing certain (`pwd`, `pin`, `key`).

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::operations::{start_op, Target};
use super::{AppState, Auth};
use crate::controller::saga::initplan::script_source;
use crate::controller::saga::kinds::boot_jobs::{mark_booted, RunPayload};
use crate::controller::saga::kinds::Request;
use crate::controller::store::Requester;
use crate::controller::store::{self as st, BootJobRow, GuestRow, Tx};
use crate::model::rfc3339;
use crate::model::GuestState;
use crate::script::catalog::{self, Kind};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct QueueBootJobs {
    /// Guest ids or names (1–1000).
    pub guests: Vec<String>,
    /// Boot script name.
    pub script: String,
    /// The script's `params` (a JSON object). The values of those the script declares
    /// secret (its `fn secrets()`) are sealed, shown as `"***"` and deleted once the job
    /// ends.
    pub params: Option<serde_json::Value>,
    /// Run now on guests that are running, instead of at their next boot.
    #[oai(default)]
    pub run_now: bool,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct QueuedJob {
    pub id: String,
    pub guest_id: String,
    /// The run started for it now, if any.
    pub operation_id: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct QueuedJobs {
    pub jobs: Vec<QueuedJob>,
}

#[derive(ApiResponse)]
pub enum QueueResponse {
    /// Queued; jobs with an `operation_id` are running now.
    #[oai(status = 202)]
    Accepted(Json<QueuedJobs>),
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct BootJob {
    pub id: String,
    pub guest_id: String,
    pub script: String,
    /// The script's parameters; those it declares secret read `"***"`.
    pub params: serde_json::Value,
    /// Queued by corral itself (password reset, hostname, IP change).
    pub system: bool,
    /// pending, running, done, failed, cancelled.
    pub state: String,
    pub operation_id: Option<String>,
    /// Per-action results of the last run: action, ok, exit_code, output.
    pub results: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: u32,
    pub requested_by: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    /// SHA-256 of the script source pinned when the job was queued: what runs.
    pub script_sha256: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct GuestPending {
    pub guest_id: String,
    pub name: String,
    pub pending: u32,
}

#[derive(ApiResponse)]
pub enum JobCancelled {
    #[oai(status = 204)]
    Cancelled,
}

/// Hides the password hash of a reset queued before scripts declared their secrets, while
/// it is pending (migration 026 hid those of ended jobs). Newer jobs store no secret in
/// `params` at all.
fn redact(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(h) = v.get_mut("password_hash") {
        *h = HIDDEN.into();
    }
    v
}

pub fn job_view(j: BootJobRow) -> BootJob {
    BootJob {
        params: redact(serde_json::from_str(&j.params).unwrap_or_default()),
        results: j
            .results
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        id: j.id,
        guest_id: j.guest_id,
        script: j.script,
        system: j.system,
        state: j.state.as_str().to_string(),
        operation_id: j.operation_id,
        error: j.error,
        attempts: j.attempts.max(0) as u32,
        requested_by: j.requested_by,
        created_at: rfc3339(j.created_at),
        finished_at: j.finished_at.map(rfc3339),
        script_sha256: j
            .source
            .as_deref()
            .map(|s| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(s.as_bytes()))),
    }
}

/// Parameters one job may take.
const MAX_PARAMS: usize = 256;

/// Pending boot jobs one guest may hold: a run replays all of them at its next boot, so an
/// unbounded queue would let one caller make every boot of that guest arbitrarily long.
pub const MAX_PENDING_PER_GUEST: usize = 64;

/// Queues one job in `tx`, pinning the script's current source: the job runs that, even
/// if the script changes before the guest boots.
pub async fn queue(
    state: &AppState,
    tx: &mut Tx<'_>,
    guest: &str,
    script: &str,
    params: &serde_json::Value,
    system: bool,
    by: Requester<'_>,
) -> Result<String, Error> {
    let pending = st::pending_jobs_in(tx, guest).await?.len();
    if pending >= MAX_PENDING_PER_GUEST {
        return Err(Error::Conflict {
            message: format!(
                "guest {guest} already has {pending} pending boot jobs (at most \
                 {MAX_PENDING_PER_GUEST}); let them run or cancel some"
            ),
            details: Some(serde_json::json!({"pending": pending})),
        });
    }
    let source = script_source(tx, Kind::Boot, script)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?
        .ok_or_else(|| {
            Error::Unprocessable(format!(
                "boot script {script} does not exist (GET /boot-scripts lists them)"
            ))
        })?;
    let declared = state
        .scripts
        .secrets(script, &source)
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    let (shown, sealed) = split_secrets(params, &declared);
    let mut job = BootJobRow::pending(guest, script, &shown, system, by);
    job.source = Some(source);
    job.sealed_params = sealed
        .map(|v| state.sealer.seal(&v.to_string()))
        .transpose()
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    st::insert_boot_job(tx, &job).await?;
    Ok(job.id)
}

/// What a secret parameter's value reads as wherever a job is shown or stored in clear.
pub const HIDDEN: &str = "***";

/// Splits `params` into what is stored in clear (the declared secrets' values replaced by
/// [`HIDDEN`]) and the declared secrets' values (None when there are none).
fn split_secrets(
    params: &serde_json::Value,
    declared: &[String],
) -> (serde_json::Value, Option<serde_json::Value>) {
    let Some(obj) = params.as_object() else {
        return (params.clone(), None);
    };
    let mut shown = obj.clone();
    let mut secret = serde_json::Map::new();
    for name in declared {
        if let Some(v) = shown.get_mut(name) {
            secret.insert(name.clone(), std::mem::replace(v, HIDDEN.into()));
        }
    }
    let sealed = (!secret.is_empty()).then_some(serde_json::Value::Object(secret));
    (serde_json::Value::Object(shown), sealed)
}

/// Starts a run of `jobs` now if the guest is running and free; a running but busy guest
/// runs them when it is free. Returns the run's operation.
pub async fn run_now(
    state: &AppState,
    tx: &mut Tx<'_>,
    g: &GuestRow,
    jobs: Vec<String>,
    by: Requester<'_>,
) -> Result<Option<String>, Error> {
    if g.state != GuestState::Running {
        return Ok(None);
    }
    if g.lock_op.is_some() {
        mark_booted(tx, &g.id).await?;
        return Ok(None);
    }
    let req = Request::GuestBootJobs(RunPayload {
        job_ids: Some(jobs),
    });
    let op = start_op(state, tx, &req, Target::Guest(&g.id), by, true).await?;
    Ok(Some(op.id))
}

pub struct BootJobApi;

#[OpenApi(tag = "super::system::Tag::Scripts")]
impl BootJobApi {
    /// Queue a boot script for one guest or many (S18).
    #[oai(path = "/boot-jobs", method = "post", operation_id = "boot_job_queue")]
    async fn queue_many(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<QueueBootJobs>,
    ) -> ApiResult<QueueResponse> {
        let b = body.0;
        let (rows, params) = checked(&state, &auth, &b).await?;
        let mut tx = state.store.begin().await?;
        let mut out = Vec::new();
        for g in &rows {
            let id = queue(
                &state,
                &mut tx,
                &g.id,
                &b.script,
                &params,
                false,
                Requester::user(&auth.0.user),
            )
            .await?;
            let operation_id = if b.run_now {
                run_now(
                    &state,
                    &mut tx,
                    g,
                    vec![id.clone()],
                    Requester::user(&auth.0.user),
                )
                .await?
            } else {
                None
            };
            out.push(QueuedJob {
                id,
                guest_id: g.id.clone(),
                operation_id,
            });
        }
        state.store.commit(tx).await?;
        for j in &out {
            if let Some(op) = &j.operation_id {
                state.waker.wake(op);
            }
        }
        Ok(QueueResponse::Accepted(Json(QueuedJobs { jobs: out })))
    }

    /// A guest's boot jobs, newest first (S14). System jobs only for administrators who
    /// ask (S21).
    #[oai(
        path = "/guests/:id/boot-jobs",
        method = "get",
        operation_id = "guest_boot_jobs"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn of_guest(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        /// pending, running, done, failed or cancelled.
        #[oai(name = "state")]
        job_state: Query<Option<String>>,
        #[oai(default)] include_system: Query<bool>,
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<i64>,
        #[oai(default, validator(minimum(value = "0")))] offset: Query<i64>,
    ) -> ApiResult<Json<Vec<BootJob>>> {
        if let Some(s) = job_state.0.as_deref() {
            if !["pending", "running", "done", "failed", "cancelled"].contains(&s) {
                return Err(Error::BadRequest(format!(
                    "state {s:?} must be pending, running, done, failed or cancelled"
                ))
                .into());
            }
        }
        let g = super::access::guest(&state, &auth.0, &id).await?;
        let system = super::access::sees_system(&auth.0, Kind::Boot, include_system.0);
        let rows = state
            .store
            .boot_jobs_of(&g.id, job_state.0.as_deref(), system, limit.0, offset.0)
            .await?;
        Ok(Json(rows.into_iter().map(job_view).collect()))
    }

    /// Guests with pending boot jobs (S19).
    #[oai(
        path = "/boot-jobs/pending",
        method = "get",
        operation_id = "boot_job_pending_guests"
    )]
    async fn pending(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        #[oai(default)] include_system: Query<bool>,
    ) -> ApiResult<Json<Vec<GuestPending>>> {
        let system = super::access::sees_system(&auth.0, Kind::Boot, include_system.0);
        // A user sees their own guests only: one lookup of them, not one per guest.
        let owned = match auth.0.owner_scope() {
            Some(id) => Some(state.store.guest_ids_of_owner(id).await?),
            None => None,
        };
        let visible: Vec<_> = state
            .store
            .guests_with_pending_jobs(system)
            .await?
            .into_iter()
            .filter(|(g, _, _)| owned.as_ref().is_none_or(|o| o.contains(g)))
            .collect();
        Ok(Json(
            visible
                .into_iter()
                .map(|(guest_id, name, n)| GuestPending {
                    guest_id,
                    name,
                    pending: n.max(0) as u32,
                })
                .collect(),
        ))
    }

    #[oai(path = "/boot-jobs/:id", method = "get", operation_id = "boot_job_get")]
    async fn get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<BootJob>> {
        let j = visible_job(&state, &auth, &id).await?;
        Ok(Json(job_view(j)))
    }

    /// Withdraw a pending boot job.
    #[oai(
        path = "/boot-jobs/:id",
        method = "delete",
        operation_id = "boot_job_cancel"
    )]
    async fn cancel(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<JobCancelled> {
        let j = visible_job(&state, &auth, &id).await?;
        if !state.store.cancel_boot_job(&j.id).await? {
            return Err(Error::Conflict {
                message: format!("boot job {} is {}, not pending", j.id, j.state.as_str()),
                details: None,
            }
            .into());
        }
        Ok(JobCancelled::Cancelled)
    }
}

/// A job the caller may see: on a guest they may see, and system jobs only for
/// administrators (S21).
async fn visible_job(state: &AppState, auth: &Auth, id: &str) -> Result<BootJobRow, Error> {
    let missing = || Error::not_found("boot job", id);
    let j = state
        .store
        .boot_job(id)
        .await?
        .filter(|j| !j.system || super::access::sees_system_jobs(&auth.0))
        .ok_or_else(missing)?;
    super::access::guest(state, &auth.0, &j.guest_id)
        .await
        .map_err(|_| missing())?;
    Ok(j)
}

/// A queue request checked: its guests (each one the caller may see; 404 otherwise) and
/// its parameters. corral's own (system) jobs are refused here: their endpoints check
/// their parameters.
async fn checked(
    state: &AppState,
    auth: &Auth,
    b: &QueueBootJobs,
) -> Result<(Vec<GuestRow>, serde_json::Value), Error> {
    if b.guests.is_empty() || b.guests.len() > 1000 {
        return Err(Error::BadRequest(
            "guests must name 1 to 1000 guests".into(),
        ));
    }
    let params = b.params.clone().unwrap_or_else(|| serde_json::json!({}));
    let Some(obj) = params.as_object() else {
        return Err(Error::BadRequest("params must be a JSON object".into()));
    };
    if obj.len() > MAX_PARAMS {
        return Err(Error::BadRequest(format!(
            "params has {} entries; at most {MAX_PARAMS}",
            obj.len()
        )));
    }
    if catalog::shipped(Kind::Boot, &b.script).is_some() {
        super::access::admin(&auth.0, &format!("{}, a system job,", b.script))?;
        return Err(Error::Unprocessable(format!(
            "{} is a system job: use PATCH /guests/{{id}} (hostname), POST /guests/{{id}}/password, \
             /ssh-keys or /change-ip, which check its parameters",
            b.script
        )));
    }
    let mut rows = Vec::new();
    for name in &b.guests {
        rows.push(super::access::guest(state, &auth.0, name).await?);
    }
    // After the guests: another's guest answers 404 whatever the script.
    let visible = state
        .store
        .script(Kind::Boot.as_str(), &b.script)
        .await?
        .filter(|r| super::access::sees_script(&auth.0, r));
    if visible.is_none() {
        return Err(Error::Unprocessable(format!(
            "boot script {} does not exist (GET /boot-scripts lists them)",
            b.script
        )));
    }
    Ok((rows, params))
}

fn default_limit() -> i64 {
    100
}
