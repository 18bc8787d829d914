//! Authentication: bearer tokens on every endpoint but login and health.

use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, SecurityScheme};

use super::error::{ApiResult, Error};
use super::AppState;
use crate::controller::auth::{issue_token, token_digest, verify_password};
use crate::controller::store::UserRow;

/// A bearer token from `POST /auth/login` (or the admin token file of `corral up`).
#[derive(SecurityScheme)]
#[oai(ty = "bearer", checker = "check_token")]
pub struct Auth(pub UserRow);

async fn check_token(req: &Request, bearer: Bearer) -> Option<UserRow> {
    let state = req.data::<AppState>()?;
    state
        .store
        .user_by_token(&token_digest(&bearer.token))
        .await
        .ok()
        .flatten()
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct LoginResponse {
    /// Send as `Authorization: Bearer <token>`. Shown once; corral keeps only a digest.
    pub token: String,
}

pub struct AuthApi;

#[OpenApi(tag = "super::system::Tag::Auth")]
impl AuthApi {
    /// Exchange a username and password for an API token.
    #[oai(path = "/auth/login", method = "post", operation_id = "auth_login")]
    async fn login(
        &self,
        state: poem::web::Data<&AppState>,
        body: Json<LoginRequest>,
    ) -> ApiResult<Json<LoginResponse>> {
        let user = state.store.user_by_name(&body.username).await?;
        let Some(user) = user.filter(|u| verify_password(&body.password, &u.password_hash)) else {
            return Err(Error::Unauthorized.into());
        };
        let token = issue_token(&state.store, &user)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        Ok(Json(LoginResponse { token }))
    }
}
