//! Users and roles (`admin`, `operator`, `user`; see `store::Role`), for administrators;
//! and changing your own password.
//!
//! The last administrator can be neither demoted nor deleted, so the cloud always has one.
//! A deleted user's tokens go with them; their guests and templates stay for an
//! administrator to deal with.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::{access, AppState, Auth};
use crate::controller::auth::{hash_password_blocking, verify_login};
use crate::controller::store::{Role, UserRow};
use crate::model::{new_id, now_ms, rfc3339};

/// The shortest password corral accepts.
const MIN_PASSWORD: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum UserRole {
    Admin,
    Operator,
    User,
}

impl From<UserRole> for Role {
    fn from(r: UserRole) -> Role {
        match r {
            UserRole::Admin => Role::Admin,
            UserRole::Operator => Role::Operator,
            UserRole::User => Role::User,
        }
    }
}

impl From<Role> for UserRole {
    fn from(r: Role) -> UserRole {
        match r {
            Role::Admin => UserRole::Admin,
            Role::Operator => UserRole::Operator,
            Role::User => UserRole::User,
        }
    }
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: UserRole,
    /// Where password-reset links go (S33).
    pub email: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NewUser {
    /// Lowercase letters, digits, `.`, `_` and `-`; 1–64 characters.
    pub name: String,
    /// At least 8 characters.
    pub password: String,
    pub role: UserRole,
    /// Where password-reset links go.
    pub email: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct UserChange {
    pub role: Option<UserRole>,
    /// A new password (at least 8 characters).
    pub password: Option<String>,
    /// A new mail address; empty removes it.
    pub email: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct PasswordChange {
    pub current: String,
    /// At least 8 characters.
    pub new: String,
}

#[derive(ApiResponse)]
pub enum UserCreated {
    #[oai(status = 201)]
    Created(Json<User>),
}

#[derive(ApiResponse)]
pub enum Done {
    #[oai(status = 204)]
    Done,
}

fn view(u: &UserRow, email: Option<String>) -> User {
    User {
        id: u.id.clone(),
        name: u.name.clone(),
        role: u.role().into(),
        email,
        created_at: rfc3339(u.created_at),
    }
}

/// A user with their mail address.
async fn full_view(state: &AppState, u: &UserRow) -> Result<User, Error> {
    Ok(view(u, state.store.user_email(&u.id).await?))
}

/// A mail address as given: `None` for empty, else checked.
fn check_email(e: &str) -> Result<Option<String>, Error> {
    if e.is_empty() {
        return Ok(None);
    }
    if e.len() > 254 || e.parse::<lettre::Address>().is_err() {
        return Err(Error::BadRequest(format!(
            "email {e:?} is not a mail address; e.g. ann@example.com"
        )));
    }
    Ok(Some(e.to_string()))
}

pub(super) fn check_password(p: &str) -> Result<(), Error> {
    if p.chars().count() < MIN_PASSWORD {
        return Err(Error::BadRequest(format!(
            "a password needs at least {MIN_PASSWORD} characters"
        )));
    }
    Ok(())
}

fn check_name(n: &str) -> Result<(), Error> {
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "user name {n:?}: use 1–64 lowercase letters, digits, `.`, `_` or `-`"
        )))
    }
}

async fn user_of(state: &AppState, id: &str) -> Result<UserRow, Error> {
    state
        .store
        .user(id)
        .await?
        .ok_or_else(|| Error::not_found("user", id))
}

/// Refuses to leave the cloud without an administrator.
async fn keeps_an_admin(state: &AppState, u: &UserRow) -> Result<(), Error> {
    if u.role() == Role::Admin && state.store.admin_count().await? <= 1 {
        return Err(Error::Conflict {
            message: format!(
                "{} is the last administrator; make another one first",
                u.name
            ),
            details: None,
        });
    }
    Ok(())
}

pub struct UserApi;

#[OpenApi(tag = "super::system::Tag::Users")]
impl UserApi {
    /// Every user (administrators only).
    #[oai(path = "/users", method = "get", operation_id = "user_list")]
    async fn list(&self, auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Vec<User>>> {
        access::admin(&auth.0, "managing users")?;
        let mut emails = state.store.user_emails().await?;
        Ok(Json(
            state
                .store
                .users()
                .await?
                .iter()
                .map(|u| view(u, emails.remove(&u.id)))
                .collect(),
        ))
    }

    /// Create a user with a role (administrators only).
    #[oai(path = "/users", method = "post", operation_id = "user_create")]
    async fn create(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<NewUser>,
    ) -> ApiResult<UserCreated> {
        access::admin(&auth.0, "managing users")?;
        check_name(&body.name)?;
        check_password(&body.password)?;
        let email = check_email(body.email.as_deref().unwrap_or_default())?;
        if state.store.user(&body.name).await?.is_some() {
            return Err(Error::Conflict {
                message: format!("user {} exists", body.name),
                details: None,
            }
            .into());
        }
        let role: Role = body.role.into();
        let row = UserRow {
            id: new_id(),
            name: body.name.clone(),
            password_hash: hash_password_blocking(body.0.password)
                .await
                .map_err(|e| Error::Unavailable(e.to_string()))?,
            is_admin: role == Role::Admin,
            created_at: now_ms(),
            role: role.as_str().into(),
        };
        state.store.insert_user(&row).await?;
        if email.is_some() {
            state
                .store
                .set_user_email(&row.id, email.as_deref())
                .await?;
        }
        Ok(UserCreated::Created(Json(view(&row, email))))
    }

    /// Yourself: name and role.
    #[oai(path = "/users/me", method = "get", operation_id = "user_me")]
    async fn me(&self, auth: Auth, state: Data<&AppState>) -> ApiResult<Json<User>> {
        Ok(Json(full_view(&state, &auth.0.user).await?))
    }

    /// Change your own password: give the current one. Your other tokens are revoked.
    #[oai(
        path = "/users/me/password",
        method = "post",
        operation_id = "user_change_password"
    )]
    async fn change_password(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<PasswordChange>,
    ) -> ApiResult<Done> {
        let PasswordChange { current, new } = body.0;
        check_password(&new)?;
        let me = user_of(&state, &auth.0.id).await?;
        if verify_login(current, Some(me)).await.is_none() {
            return Err(Error::Forbidden("the current password is not right".into()).into());
        }
        let hash = hash_password_blocking(new)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        state
            .store
            .update_user(&auth.0.id, None, Some(&hash))
            .await?;
        // Whoever held another of this user's tokens (a stolen one) loses it with the old
        // password; the session that changed it stays.
        state
            .store
            .revoke_other_tokens(&auth.0.id, &auth.0.token_id)
            .await?;
        Ok(Done::Done)
    }

    /// One user (administrators only).
    #[oai(path = "/users/:id", method = "get", operation_id = "user_get")]
    async fn get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<User>> {
        access::admin(&auth.0, "managing users")?;
        Ok(Json(full_view(&state, &user_of(&state, &id).await?).await?))
    }

    /// Change a user's role or set a new password (administrators only); a new password
    /// revokes the user's tokens.
    #[oai(path = "/users/:id", method = "patch", operation_id = "user_update")]
    async fn update(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<UserChange>,
    ) -> ApiResult<Json<User>> {
        access::admin(&auth.0, "managing users")?;
        let u = user_of(&state, &id).await?;
        let role = body.role.map(Role::from);
        let email = body.email.as_deref().map(check_email).transpose()?;
        if role.is_some_and(|r| r != Role::Admin) {
            keeps_an_admin(&state, &u).await?;
        }
        let hash = match body.0.password {
            Some(p) => {
                check_password(&p)?;
                Some(
                    hash_password_blocking(p)
                        .await
                        .map_err(|e| Error::Unavailable(e.to_string()))?,
                )
            }
            None => None,
        };
        state
            .store
            .update_user(&u.id, role, hash.as_deref())
            .await?;
        if hash.is_some() {
            // A new password set by an administrator ends the user's sessions (all but the
            // administrator's own, when they set their own password this way).
            state
                .store
                .revoke_other_tokens(&u.id, &auth.0.token_id)
                .await?;
        }
        if let Some(e) = email {
            state.store.set_user_email(&u.id, e.as_deref()).await?;
        }
        Ok(Json(
            full_view(&state, &user_of(&state, &u.id).await?).await?,
        ))
    }

    /// Delete a user and their tokens (administrators only). Refused (409) while they own
    /// guests, templates, data disks or boot scripts: delete those first. Ownership is by
    /// user id, so nothing of theirs ever passes to a later user of the same name; their
    /// operations and audit entries keep naming them.
    #[oai(path = "/users/:id", method = "delete", operation_id = "user_delete")]
    async fn delete(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Done> {
        access::admin(&auth.0, "managing users")?;
        let u = user_of(&state, &id).await?;
        keeps_an_admin(&state, &u).await?;
        let [guests, templates, disks, scripts] = state.store.owned_by(&u.id).await?;
        if guests + templates + disks + scripts > 0 {
            return Err(Error::Conflict {
                message: format!(
                    "user {} owns {guests} guest(s), {templates} template(s), {disks} data disk(s) \
                     and {scripts} script(s): delete them first",
                    u.name
                ),
                details: Some(serde_json::json!({"guests": guests, "templates": templates,
                    "disks": disks, "scripts": scripts})),
            }
            .into());
        }
        state.store.delete_user(&u.id).await?;
        Ok(Done::Done)
    }
}
