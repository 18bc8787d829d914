//! Authentication: bearer tokens on every endpoint but login and health; logging in and
//! out, and the caller's named API tokens.

use std::ops::Deref;

use poem::web::{Data, RemoteAddr};
use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme};

use super::error::{ApiResult, Error};
use super::AppState;
use crate::controller::auth::{issue_scoped_token, issue_token, token_digest, verify_login};
use crate::controller::store::{Store, TokenRow, UserRow};
use crate::model::{now_ms, rfc3339};

/// Who is calling, and with which token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserRow,
    pub token_id: String,
}

impl Deref for Caller {
    type Target = UserRow;
    fn deref(&self) -> &UserRow {
        &self.user
    }
}

/// The caller a bearer token stands for on `/metrics`: an API token or a scrape-only one.
pub async fn scraper(store: &Store, token: &str) -> Option<Caller> {
    store
        .user_by_scoped_token(&token_digest(token), now_ms(), &["api", "metrics"])
        .await
        .ok()
        .flatten()
        .map(|(user, token_id)| Caller { user, token_id })
}

/// A bearer token from `POST /auth/login` or `POST /tokens` (or the admin token file of
/// `corral up`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_token")]
pub struct Auth(pub Caller);

async fn check_token(req: &Request, bearer: Bearer) -> Option<Caller> {
    caller(&req.data::<AppState>()?.store, &bearer.token).await
}

/// The caller a bearer token stands for, if it exists and has not expired.
pub async fn caller(store: &Store, token: &str) -> Option<Caller> {
    store
        .user_by_token(&token_digest(token), now_ms())
        .await
        .ok()
        .flatten()
        .map(|(user, token_id)| Caller { user, token_id })
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct LoginRequest {
    #[oai(validator(max_length = 64))]
    pub username: String,
    #[oai(validator(max_length = 1024))]
    pub password: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`. Shown once; corral keeps only a digest.
    pub token: String,
    /// When the token stops working (RFC 3339).
    pub expires_at: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for, e.g. `ci-deploy` (1–64 characters).
    #[oai(validator(min_length = 1, max_length = 64))]
    pub name: String,
    /// Seconds until it expires, 1 to the site's `tokens.max_days` (90 days unless an
    /// administrator changed it). Absent: that maximum, or never when the site allows
    /// tokens without expiry (`tokens.allow_no_expiry`).
    #[oai(validator(minimum(value = "1"), maximum(value = "31622400")))]
    pub expires_in_secs: Option<u64>,
    /// `api` (the default): everything you may do. `metrics`: only scraping `/metrics`
    /// (for Prometheus; an operator's or administrator's), nothing in the API.
    pub scope: Option<TokenScope>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum TokenScope {
    Api,
    Metrics,
}

impl TokenScope {
    fn as_str(self) -> &'static str {
        match self {
            TokenScope::Api => "api",
            TokenScope::Metrics => "metrics",
        }
    }
}

/// A token as listed: never its value.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub created_at: String,
    /// Absent: never expires.
    pub expires_at: Option<String>,
    /// True for the token this request was sent with.
    pub current: bool,
    /// `api`, or `metrics` (scrape-only).
    pub scope: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CreatedToken {
    /// Send as `Authorization: Bearer <token>`. Shown once; corral keeps only a digest.
    pub token: String,
    #[oai(flatten)]
    pub record: Token,
}

#[derive(ApiResponse)]
pub enum TokenCreated {
    #[oai(status = 201)]
    Created(Json<CreatedToken>),
}

#[derive(ApiResponse)]
pub enum Revoked {
    /// The token no longer works.
    #[oai(status = 204)]
    Revoked,
}

fn view(t: &TokenRow, current: &str) -> Token {
    Token {
        id: t.id.clone(),
        name: t.name.clone(),
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339),
        current: t.id == current,
        scope: t.scope.clone(),
    }
}

/// The peer's IP address, as the throttle and the audit trail name it.
pub fn peer_ip(remote: &RemoteAddr) -> String {
    remote
        .as_socket_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| remote.to_string())
}

/// Counts a login (or a recovery request) for `name` from `remote` against the throttle:
/// 429 when the address or the name is over its limit.
pub(super) fn admit(state: &AppState, name: &str, remote: &RemoteAddr) -> Result<(), Error> {
    state
        .throttle
        .admit(name, &peer_ip(remote))
        .map_err(|r| Error::TooMany {
            message: r.message,
            retry_after: r.retry_after,
        })
}

/// Checks a username and password against the throttle and the stored digest, and issues
/// a login token (`login_token_hours`). Shared by `POST /auth/login` and the web console's
/// cookie session, so both count failures and lock out alike.
pub(crate) async fn log_in(
    state: &AppState,
    username: &str,
    password: String,
    remote: &RemoteAddr,
) -> Result<(TokenRow, String, UserRow), Error> {
    admit(state, username, remote)?;
    let user = state.store.user_by_name(username).await?;
    let Some(user) = verify_login(password, user).await else {
        state.throttle.failed(username, &peer_ip(remote));
        return Err(Error::Unauthorized);
    };
    state.throttle.succeeded(username, &peer_ip(remote));
    let expires_at = now_ms() + (state.login_token_hours as i64) * 3_600_000;
    let (row, token) = issue_token(&state.store, &user, "login", Some(expires_at))
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    Ok((row, token, user))
}

pub struct AuthApi;

#[OpenApi(tag = "super::system::Tag::Auth")]
impl AuthApi {
    /// Exchange a username and password for an API token that expires after
    /// `login_token_hours` (12 by default). After 5 failed logins in 10 minutes from one
    /// address, the user name is locked for that address for 5 minutes (doubling with
    /// each lock that follows, up to an hour); other addresses are not locked out. One
    /// address may try 30 logins a minute (429).
    #[oai(path = "/auth/login", method = "post", operation_id = "auth_login")]
    async fn login(
        &self,
        state: Data<&AppState>,
        remote: &RemoteAddr,
        body: Json<LoginRequest>,
    ) -> ApiResult<Json<LoginResponse>> {
        let LoginRequest { username, password } = body.0;
        let (row, token, _) = log_in(&state, &username, password, remote).await?;
        Ok(Json(LoginResponse {
            token,
            expires_at: row.expires_at.map(rfc3339),
        }))
    }

    /// Revoke the token this request is sent with.
    #[oai(path = "/auth/logout", method = "post", operation_id = "auth_logout")]
    async fn logout(&self, auth: Auth, state: Data<&AppState>) -> ApiResult<Revoked> {
        state
            .store
            .revoke_token(&auth.0.id, &auth.0.token_id)
            .await?;
        Ok(Revoked::Revoked)
    }

    /// Create a named API token for yourself (for scripts and CI), expiring within the
    /// site's limit. Its value is in this answer only.
    #[oai(path = "/tokens", method = "post", operation_id = "token_create")]
    async fn create_token(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<NewToken>,
    ) -> ApiResult<TokenCreated> {
        let name = body.name.trim();
        if name.is_empty() {
            return Err(Error::BadRequest("name must not be blank".into()).into());
        }
        let policy: super::audit::TokenPolicy = state.store.setting("tokens").await?;
        let expires_at = policy.expiry(now_ms(), body.expires_in_secs)?;
        let scope = body.scope.unwrap_or(TokenScope::Api).as_str();
        let (row, token) = issue_scoped_token(&state.store, &auth.0.user, name, expires_at, scope)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(TokenCreated::Created(Json(CreatedToken {
            token,
            record: view(&row, &auth.0.token_id),
        })))
    }

    /// Your API tokens (never their values), newest first.
    #[oai(path = "/tokens", method = "get", operation_id = "token_list")]
    async fn list_tokens(&self, auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Vec<Token>>> {
        let rows = state.store.tokens_of(&auth.0.id).await?;
        Ok(Json(
            rows.iter().map(|t| view(t, &auth.0.token_id)).collect(),
        ))
    }

    /// Revoke one of your tokens by id; it stops working at once.
    #[oai(path = "/tokens/:id", method = "delete", operation_id = "token_revoke")]
    async fn revoke_token(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Revoked> {
        if !state.store.revoke_token(&auth.0.id, &id).await? {
            return Err(Error::not_found("token", id.0).into());
        }
        Ok(Revoked::Revoked)
    }
}
