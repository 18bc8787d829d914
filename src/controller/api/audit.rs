//! The audit trail (S67), system settings (S94) and retention (S71), for administrators.
//!
//! The trail is written by the HTTP layer (`Trail::record`, called from `api::app` after
//! each write request is answered), so no handler can forget it: every POST, PUT, PATCH
//! and DELETE under `/api/v1` leaves a row naming who (the token's user, resolved before
//! the request runs, so a logout is still attributed; or the name a login tried), from
//! where (the peer address), what (the OpenAPI operation, method and path), on which object
//! (the path's identifier, or the `Location` of what was created) and the HTTP status.
//!
//! Retention (`GET`/`PATCH /settings`, `retention`): audit rows, ended operations and
//! events older than their limit in days are purged every hour, or at once with
//! `POST /settings/purge`. Zero keeps them for ever.

use poem::web::Data;
use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use serde::{Deserialize, Serialize};

use super::access;
use super::auth::Caller;
use super::error::{ApiResult, Error};
use super::spec::Template;
use super::{AppState, Auth};
use std::sync::Arc;

use crate::controller::metrics::Metrics;
use crate::controller::store::{AuditFilter, AuditRow, Store};
use crate::model::{now_ms, rfc3339};

const DAY_MS: i64 = 86_400_000;

/// How long records are kept, in days (0: for ever).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
#[serde(default)]
#[oai(deny_unknown_fields)]
pub struct Retention {
    /// The audit trail. Default 365.
    pub audit_days: u32,
    /// Operations that ended. Default 90.
    pub operations_days: u32,
    /// The event log (`/events`). Default 30.
    pub events_days: u32,
    /// Raw metric samples, hours (1–744). Default 24.
    #[oai(
        default = "default_raw_hours",
        validator(minimum(value = "1"), maximum(value = "744"))
    )]
    pub metrics_raw_hours: u32,
    /// Metric history as 5-minute averages and maxima, days (1–3660). Default 15.
    #[oai(
        default = "default_metrics_days",
        validator(minimum(value = "1"), maximum(value = "3660"))
    )]
    pub metrics_days: u32,
}

fn default_raw_hours() -> u32 {
    24
}

fn default_metrics_days() -> u32 {
    15
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            audit_days: 365,
            operations_days: 90,
            events_days: 30,
            metrics_raw_hours: default_raw_hours(),
            metrics_days: default_metrics_days(),
        }
    }
}

/// How much users may upload (`PATCH /settings`, `uploads`). Operators and
/// administrators are bound by the per-upload cap only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
#[serde(default)]
#[oai(deny_unknown_fields)]
pub struct UploadPolicy {
    /// The largest image one upload may be, MiB (1 to 1,048,576). Default 65,536 (64 GiB).
    #[oai(validator(minimum(value = "1"), maximum(value = "1048576")))]
    pub max_upload_mib: u32,
    /// What a user's templates may hold in all, MiB (1 to 67,108,864). Default 262,144
    /// (256 GiB).
    #[oai(validator(minimum(value = "1"), maximum(value = "67108864")))]
    pub user_quota_mib: u32,
}

impl Default for UploadPolicy {
    fn default() -> Self {
        UploadPolicy {
            max_upload_mib: 65_536,
            user_quota_mib: 262_144,
        }
    }
}

/// How long API tokens may live (`PATCH /settings`, `tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Object)]
#[serde(default)]
#[oai(deny_unknown_fields)]
pub struct TokenPolicy {
    /// The longest lifetime of a named token, days (1–366). A token asked for without an
    /// expiry gets this one. Default 90.
    #[oai(validator(minimum(value = "1"), maximum(value = "366")))]
    pub max_days: u32,
    /// Whether a named token may be created without any expiry. Default false: a token
    /// that never expires is a credential nobody remembers to revoke.
    pub allow_no_expiry: bool,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        TokenPolicy {
            max_days: 90,
            allow_no_expiry: false,
        }
    }
}

impl TokenPolicy {
    /// When a token asked for with `expires_in_secs` expires (ms), or why it may not be.
    pub fn expiry(&self, now: i64, expires_in_secs: Option<u64>) -> Result<Option<i64>, Error> {
        let max_secs = u64::from(self.max_days) * 86_400;
        match expires_in_secs {
            None if self.allow_no_expiry => Ok(None),
            None => Ok(Some(now + (max_secs as i64) * 1000)),
            Some(s) if s > max_secs => Err(Error::Unprocessable(format!(
                "expires_in_secs {s} is beyond the site's limit of {} days ({max_secs} s): \
                 ask for less, or an administrator raises tokens.max_days",
                self.max_days
            ))),
            Some(s) => Ok(Some(now + (s as i64) * 1000)),
        }
    }
}

impl Retention {
    /// How long metrics are kept (ms): raw samples, rollups.
    pub fn metrics_kept(&self) -> (i64, i64) {
        (
            i64::from(self.metrics_raw_hours.max(1)) * 3_600_000,
            i64::from(self.metrics_days.max(1)) * DAY_MS,
        )
    }

    /// The purge cutoffs (ms) at `now`.
    pub fn cutoffs(&self, now: i64) -> (Option<i64>, Option<i64>, Option<i64>) {
        let cut = |days: u32| (days > 0).then(|| now - i64::from(days) * DAY_MS);
        (
            cut(self.audit_days),
            cut(self.operations_days),
            cut(self.events_days),
        )
    }
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    /// The caller's user id (absent for a login, or a request without a working token).
    pub user_id: Option<String>,
    /// The caller's name, or the name a login tried.
    pub user: Option<String>,
    /// The peer address the request came from.
    pub address: String,
    pub method: String,
    pub path: String,
    /// The API operation (`guest_create`, `auth_login`, ...); `unknown` for a path the
    /// API does not have.
    pub action: String,
    /// The object acted on: the path's identifier, or what the request created.
    pub object: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Purged {
    pub audit: u64,
    pub operations: u64,
    pub events: u64,
    /// Raw metric samples.
    pub metric_samples: u64,
    /// 5-minute metric rollups.
    pub metric_rollups: u64,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Settings {
    pub retention: Retention,
    /// Mail, for password recovery (S33, S94).
    pub smtp: super::recovery::SmtpView,
    /// How long API tokens may live.
    pub tokens: TokenPolicy,
    /// How much may be uploaded.
    pub uploads: UploadPolicy,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct SettingsChange {
    pub retention: Option<Retention>,
    pub smtp: Option<super::recovery::SmtpChange>,
    pub tokens: Option<TokenPolicy>,
    pub uploads: Option<UploadPolicy>,
}

pub struct AuditApi;

#[OpenApi(tag = "super::system::Tag::System")]
impl AuditApi {
    /// The audit trail, newest first (administrators only). Page with `before` (the
    /// smallest `seq` of the previous page).
    #[oai(path = "/audit", method = "get", operation_id = "audit_list")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// A user's id or name.
        user: Query<Option<String>>,
        /// The object's id.
        object: Query<Option<String>>,
        /// The API operation, e.g. `guest_delete`.
        action: Query<Option<String>>,
        /// Only entries at or after this time (RFC 3339).
        since: Query<Option<String>>,
        /// Only entries older than this sequence number.
        before: Query<Option<i64>>,
        /// 1–1000.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<i64>,
    ) -> ApiResult<Json<Vec<AuditEntry>>> {
        access::admin(&auth.0, "reading the audit trail")?;
        let since = match since.0 {
            Some(s) => Some(
                humantime::parse_rfc3339_weak(&s)
                    .map_err(|e| {
                        Error::BadRequest(format!(
                            "since {s:?} is not an RFC 3339 time ({e}); e.g. 2026-01-31T12:00:00Z"
                        ))
                    })?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            ),
            None => None,
        };
        let rows = state
            .store
            .audit(&AuditFilter {
                user: user.0,
                object: object.0,
                action: action.0,
                since,
                before: before.0,
                limit: limit.0,
            })
            .await?;
        Ok(Json(rows.into_iter().map(entry).collect()))
    }

    /// System settings (administrators only).
    #[oai(path = "/settings", method = "get", operation_id = "settings_get")]
    async fn settings(&self, auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Settings>> {
        access::admin(&auth.0, "reading the system settings")?;
        let smtp = super::recovery::load_smtp(&state).await?;
        Ok(Json(Settings {
            retention: state.store.setting("retention").await?,
            smtp: smtp.view(),
            tokens: state.store.setting("tokens").await?,
            uploads: state.store.setting("uploads").await?,
        }))
    }

    /// Change system settings (administrators only); what is left out stays.
    #[oai(path = "/settings", method = "patch", operation_id = "settings_update")]
    async fn update(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<SettingsChange>,
    ) -> ApiResult<Json<Settings>> {
        access::admin(&auth.0, "changing the system settings")?;
        let SettingsChange {
            retention,
            smtp,
            tokens,
            uploads,
        } = body.0;
        // Both are checked before either is written.
        let smtp = match smtp {
            Some(c) => {
                let stored = super::recovery::load_smtp(&state).await?;
                Some(stored.changed(c)?)
            }
            None => None,
        };
        if let Some(r) = &retention {
            state.store.set_setting("retention", r).await?;
        }
        if let Some(s) = &smtp {
            super::recovery::save_smtp(&state, s).await?;
        }
        if let Some(t) = &tokens {
            state.store.set_setting("tokens", t).await?;
        }
        if let Some(u) = &uploads {
            state.store.set_setting("uploads", u).await?;
        }
        self.settings(auth, state).await
    }

    /// Purge now what the retention settings let go (administrators only); it also
    /// happens every hour.
    #[oai(
        path = "/settings/purge",
        method = "post",
        operation_id = "settings_purge"
    )]
    async fn purge(&self, auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Purged>> {
        access::admin(&auth.0, "purging old records")?;
        Ok(Json(purge(&state.store, &state.metrics).await?))
    }
}

fn default_limit() -> i64 {
    100
}

fn entry(r: AuditRow) -> AuditEntry {
    AuditEntry {
        seq: r.seq,
        at: rfc3339(r.at),
        user_id: r.user_id,
        user: r.user_name,
        address: r.address,
        method: r.method,
        path: r.path,
        action: r.action,
        object: r.object,
        status: u16::try_from(r.status).unwrap_or(0),
    }
}

/// Purges by the stored retention settings.
pub async fn purge(store: &Store, metrics: &Metrics) -> Result<Purged, Error> {
    let r: Retention = store.setting("retention").await?;
    let now = now_ms();
    let (a, o, e) = r.cutoffs(now);
    let (audit, operations, events) = store.purge_older(a, o, e).await?;
    let (raw_ms, rollup_ms) = r.metrics_kept();
    let (metric_samples, metric_rollups) = metrics
        .purge(now, raw_ms, rollup_ms)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    Ok(Purged {
        audit,
        operations,
        events,
        metric_samples,
        metric_rollups,
    })
}

/// Purges every hour until `shutdown` resolves.
pub async fn purge_loop(
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => match purge(&store, &metrics).await {
                Ok(p) => tracing::info!(
                    "retention: purged {} audit entries, {} operations, {} events, {} metric samples, {} metric rollups",
                    p.audit, p.operations, p.events, p.metric_samples, p.metric_rollups
                ),
                Err(e) => tracing::warn!("retention purge: {e}"),
            },
        }
    }
}

/// Names the API operation of each request path, for the trail.
pub struct Trail(Vec<(Template, String, String, usize)>);

impl Trail {
    /// From the finished document; `prefix` is where the API is mounted.
    pub fn of(spec: &str, prefix: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut out = Vec::new();
        for (path, item) in spec["paths"].as_object().into_iter().flatten() {
            for (method, op) in item.as_object().into_iter().flatten() {
                let id = op["operationId"].as_str().unwrap_or("unknown").to_string();
                let params = path.matches('{').count();
                out.push((
                    Template::new(prefix, path),
                    method.to_uppercase(),
                    id,
                    params,
                ));
            }
        }
        // A literal segment beats a parameter (`/users/me` before `/users/{id}`).
        out.sort_by_key(|(_, _, _, params)| *params);
        Trail(out)
    }

    /// The operation of a request, and the identifier its path names (the first
    /// parameter's segment), if the path is one of the API's.
    pub fn action(&self, method: &str, path: &str) -> Option<(&str, Option<String>)> {
        let (t, _, id, _) = self
            .0
            .iter()
            .find(|(t, m, _, _)| m == method && t.matches(path))?;
        Some((id.as_str(), t.first_param(path)))
    }

    /// Whether a request is a write the trail records.
    /// The routes that work without a token: logging in and recovering a password.
    pub fn is_auth(path: &str) -> bool {
        matches!(
            path,
            "/api/v1/auth/login"
                | "/api/v1/auth/recover"
                | "/api/v1/auth/reset"
                | super::web::session::ROUTE
        )
    }

    pub fn records(method: &poem::http::Method, path: &str) -> bool {
        use poem::http::Method;
        (path.starts_with("/api/v1/") || path == super::web::session::ROUTE)
            && matches!(
                *method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            )
    }

    /// Writes the row of one answered write request.
    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &self,
        store: &Store,
        method: &str,
        path: &str,
        caller: Option<&Caller>,
        login_name: Option<String>,
        address: String,
        resp: &mut poem::Response,
    ) {
        let (action, object) = match self.action(method, path) {
            Some((a, o)) => (a.to_string(), o),
            // The web console's log in and out are recorded as such.
            None if path == super::web::session::ROUTE => {
                let a = if method == "DELETE" {
                    "console_logout"
                } else {
                    "console_login"
                };
                (a.to_string(), None)
            }
            None => ("unknown".to_string(), None),
        };
        // What a request created is where its answer points, or the `id` of the record
        // a 201 returns (a small JSON body, read and put back).
        let mut object = object.or_else(|| {
            resp.headers()
                .get(poem::http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.rsplit('/').next())
                .map(String::from)
        });
        if object.is_none() && resp.status() == poem::http::StatusCode::CREATED {
            if let Ok(bytes) = resp.take_body().into_bytes().await {
                object = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(String::from));
                resp.set_body(bytes);
            }
        }
        let row = AuditRow {
            seq: 0,
            at: now_ms(),
            user_id: caller.map(|c| c.user.id.clone()),
            user_name: caller.map(|c| c.user.name.clone()).or(login_name),
            address,
            method: method.to_string(),
            path: path.to_string(),
            action,
            object,
            status: i64::from(resp.status().as_u16()),
        };
        if let Err(e) = store.record_audit(&row).await {
            // The answer is already decided; the log keeps what the trail could not.
            tracing::error!(?row, "audit trail: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_named_by_its_operation_literal_paths_first() {
        let spec = r#"{"paths": {
            "/users/{id}": {"get": {"operationId": "user_get"}, "delete": {"operationId": "user_delete"}},
            "/users/me/password": {"post": {"operationId": "user_change_password"}},
            "/guests/{id}/actions/{action}": {"post": {"operationId": "guest_action"}},
            "/guests": {"post": {"operationId": "guest_create"}}}}"#;
        let t = Trail::of(spec, "/api/v1");
        assert_eq!(
            t.action("DELETE", "/api/v1/users/u1"),
            Some(("user_delete", Some("u1".into())))
        );
        assert_eq!(
            t.action("POST", "/api/v1/users/me/password"),
            Some(("user_change_password", None))
        );
        assert_eq!(
            t.action("POST", "/api/v1/guests/g1/actions/start"),
            Some(("guest_action", Some("g1".into())))
        );
        assert_eq!(
            t.action("POST", "/api/v1/guests"),
            Some(("guest_create", None))
        );
        assert_eq!(t.action("PUT", "/api/v1/guests"), None);
    }

    #[test]
    fn retention_cutoffs_keep_for_ever_at_zero() {
        let r = Retention {
            audit_days: 1,
            operations_days: 0,
            events_days: 2,
            ..Default::default()
        };
        assert_eq!(
            r.cutoffs(10 * DAY_MS),
            (Some(9 * DAY_MS), None, Some(8 * DAY_MS))
        );
    }
}
