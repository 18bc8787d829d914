//! OS-init profiles and boot scripts: list, show, create, update, delete.
//!
//! Both are Rhai scripts with the same life cycle, so one set of functions serves both and
//! two thin handler sets give each its own path. Shipped scripts (from `scripts/`, built
//! into the binary) are read-only: copy one under a new name to change it. A script is
//! compiled and tried before it is stored; a refusal is a 422 naming the line and column.
//! Shipped boot scripts are corral's system jobs: only administrators see them, and only
//! when they ask (S21).

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::{access, AppState, Auth};
use crate::controller::store::ScriptRow;
use crate::model::{now_ms, rfc3339};
use crate::script::catalog::{self, check_name, description, Kind};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct ScriptView {
    pub name: String,
    /// `os-init` or `boot`.
    pub kind: String,
    /// Ships with corral (read-only).
    pub shipped: bool,
    /// A system job: corral queues it itself; hidden from non-administrators.
    pub system: bool,
    /// The script's leading comment.
    pub description: String,
    pub source: String,
    pub created_by: Option<String>,
    /// The author's user id.
    pub owner_id: Option<String>,
    /// Boot scripts: every user may see and queue it. Otherwise only its author and
    /// operators see it. Shipped profiles and users' profiles are public.
    pub public: bool,
    pub updated_at: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct NewScript {
    /// 1–64 lowercase letters, digits, `-` or `_`.
    pub name: String,
    /// Rhai source. A profile defines `fn plan(guest)`, a boot script
    /// `fn actions(guest, params)`. Secrets belong in the parameters a job is queued
    /// with (never shown back), not here: others may read a public script.
    pub source: String,
    /// Boot scripts: let every user see and queue it (default false: yours alone, and
    /// operators'). Profiles are always public.
    pub public: Option<bool>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ScriptSource {
    pub source: String,
    /// Boot scripts: publish or withdraw it; absent: unchanged.
    pub public: Option<bool>,
}

#[derive(ApiResponse)]
pub enum ScriptCreated {
    #[oai(status = 201)]
    Created(Json<ScriptView>),
}

#[derive(ApiResponse)]
pub enum ScriptDeleted {
    #[oai(status = 204)]
    Deleted,
}

fn shipped_view(kind: Kind, name: &str, source: &str) -> ScriptView {
    ScriptView {
        name: name.to_string(),
        kind: kind.as_str().into(),
        shipped: true,
        system: kind == Kind::Boot,
        description: description(source),
        source: source.to_string(),
        created_by: None,
        owner_id: None,
        public: true,
        updated_at: None,
    }
}

fn stored_view(r: ScriptRow) -> ScriptView {
    let profile = r.kind == Kind::Profile.as_str();
    ScriptView {
        description: description(&r.source),
        name: r.name,
        kind: r.kind,
        shipped: false,
        system: false,
        source: r.source,
        created_by: Some(r.created_by),
        owner_id: r.owner_id,
        public: r.public || profile,
        updated_at: Some(rfc3339(r.updated_at)),
    }
}

async fn list(
    state: &AppState,
    kind: Kind,
    auth: &Auth,
    include_system: bool,
) -> ApiResult<Vec<ScriptView>> {
    let mut out: Vec<ScriptView> = Vec::new();
    if access::sees_system(&auth.0, kind, include_system) {
        let shipped = match kind {
            Kind::Profile => catalog::PROFILES,
            Kind::Boot => catalog::BOOT_JOBS,
        };
        out.extend(shipped.iter().map(|(n, s)| shipped_view(kind, n, s)));
    }
    out.extend(
        state
            .store
            .scripts(kind.as_str())
            .await?
            .into_iter()
            .filter(|r| access::sees_script(&auth.0, r))
            .map(stored_view),
    );
    Ok(out)
}

async fn get(state: &AppState, kind: Kind, auth: &Auth, name: &str) -> ApiResult<ScriptView> {
    if let Some(s) = catalog::shipped(kind, name) {
        if access::sees_system(&auth.0, kind, true) {
            return Ok(shipped_view(kind, name, s));
        }
    } else if let Some(r) = state.store.script(kind.as_str(), name).await? {
        if access::sees_script(&auth.0, &r) {
            return Ok(stored_view(r));
        }
    }
    Err(Error::not_found(what(kind), name).into())
}

fn what(kind: Kind) -> &'static str {
    match kind {
        Kind::Profile => "OS-init profile",
        Kind::Boot => "boot script",
    }
}

fn read_only(kind: Kind, name: &str) -> Error {
    Error::Conflict {
        message: format!(
            "{} {name} ships with corral and is read-only: create a copy under another name",
            what(kind)
        ),
        details: None,
    }
}

async fn create(
    state: &AppState,
    kind: Kind,
    auth: &Auth,
    body: NewScript,
) -> ApiResult<ScriptView> {
    access::may_write_script(&auth.0, kind, None)?;
    check_name(&body.name).map_err(Error::BadRequest)?;
    if catalog::shipped(kind, &body.name).is_some() {
        return Err(read_only(kind, &body.name).into());
    }
    if let Some(existing) = state.store.script(kind.as_str(), &body.name).await? {
        // Names are unique across the cloud; whose script has it is not said.
        let message = if access::sees_script(&auth.0, &existing) {
            format!(
                "{} {} already exists; PUT changes it",
                what(kind),
                body.name
            )
        } else {
            format!("the name {} is taken: choose another", body.name)
        };
        return Err(Error::Conflict {
            message,
            details: None,
        }
        .into());
    }
    state
        .scripts
        .validate(kind, &body.name, &body.source)
        .map_err(Error::from)?;
    let now = now_ms();
    let row = ScriptRow {
        kind: kind.as_str().into(),
        name: body.name,
        source: body.source,
        created_by: auth.0.name.clone(),
        created_at: now,
        updated_at: now,
        owner_id: Some(auth.0.id.clone()),
        public: body.public.unwrap_or(kind == Kind::Profile),
    };
    state.store.put_script(&row).await?;
    Ok(stored_view(row))
}

async fn update(
    state: &AppState,
    kind: Kind,
    auth: &Auth,
    name: &str,
    body: ScriptSource,
) -> ApiResult<ScriptView> {
    if catalog::shipped(kind, name).is_some() {
        return Err(read_only(kind, name).into());
    }
    let mut row = state
        .store
        .script(kind.as_str(), name)
        .await?
        .filter(|r| access::sees_script(&auth.0, r))
        .ok_or_else(|| Error::not_found(what(kind), name))?;
    access::may_write_script(&auth.0, kind, Some(row.owner_id.as_deref()))?;
    state
        .scripts
        .validate(kind, name, &body.source)
        .map_err(Error::from)?;
    row.source = body.source;
    if let Some(p) = body.public {
        row.public = p || kind == Kind::Profile;
    }
    row.updated_at = now_ms();
    state.store.put_script(&row).await?;
    Ok(stored_view(row))
}

async fn delete(state: &AppState, kind: Kind, auth: &Auth, name: &str) -> ApiResult<ScriptDeleted> {
    if catalog::shipped(kind, name).is_some() {
        return Err(read_only(kind, name).into());
    }
    let Some(row) = state
        .store
        .script(kind.as_str(), name)
        .await?
        .filter(|r| access::sees_script(&auth.0, r))
    else {
        return Err(Error::not_found(what(kind), name).into());
    };
    access::may_write_script(&auth.0, kind, Some(row.owner_id.as_deref()))?;
    let in_use = match kind {
        Kind::Profile => {
            let (templates, creating) = state.store.profile_users(name).await?;
            (!templates.is_empty() || creating > 0).then(|| {
                format!(
                    "OS-init profile {name} is used by template(s) [{}] and {creating} guest(s) (their seed \
                     is rebuilt from it on hostname, password and IP changes); change the templates' \
                     profile (PATCH /templates/{{id}}) and delete the guests first",
                    templates.join(", ")
                )
            })
        }
        Kind::Boot => {
            let n = state.store.boot_script_pending(name).await?;
            (n > 0).then(|| format!("boot script {name} has {n} queued job(s); cancel them first"))
        }
    };
    if let Some(message) = in_use {
        return Err(Error::Conflict {
            message,
            details: None,
        }
        .into());
    }
    state.store.delete_script(kind.as_str(), name).await?;
    Ok(ScriptDeleted::Deleted)
}

/// A profile name a template or guest may use: shipped or stored.
pub async fn require_profile(state: &AppState, name: &str) -> Result<(), Error> {
    if catalog::shipped(Kind::Profile, name).is_some()
        || state
            .store
            .script(Kind::Profile.as_str(), name)
            .await?
            .is_some()
    {
        Ok(())
    } else {
        Err(Error::Unprocessable(format!(
            "OS-init profile {name} does not exist (GET /os-init-profiles lists them)"
        )))
    }
}

pub struct ScriptApi;

#[OpenApi(tag = "super::system::Tag::Scripts")]
impl ScriptApi {
    /// List OS-init profiles, shipped and users'.
    #[oai(
        path = "/os-init-profiles",
        method = "get",
        operation_id = "profile_list"
    )]
    async fn profile_list(
        &self,
        auth: Auth,
        state: Data<&AppState>,
    ) -> ApiResult<Json<Vec<ScriptView>>> {
        Ok(Json(list(&state, Kind::Profile, &auth, true).await?))
    }

    /// Create an OS-init profile. The script must define `fn plan(guest)` and plan a sample
    /// guest without error.
    #[oai(
        path = "/os-init-profiles",
        method = "post",
        operation_id = "profile_create"
    )]
    async fn profile_create(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<NewScript>,
    ) -> ApiResult<ScriptCreated> {
        Ok(ScriptCreated::Created(Json(
            create(&state, Kind::Profile, &auth, body.0).await?,
        )))
    }

    #[oai(
        path = "/os-init-profiles/:name",
        method = "get",
        operation_id = "profile_get"
    )]
    async fn profile_get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> ApiResult<Json<ScriptView>> {
        Ok(Json(get(&state, Kind::Profile, &auth, &name).await?))
    }

    /// Replace a profile's script (validated first). Guests being created pick it up at
    /// their next step; existing guests are not re-initialised.
    #[oai(
        path = "/os-init-profiles/:name",
        method = "put",
        operation_id = "profile_update"
    )]
    async fn profile_update(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        name: Path<String>,
        body: Json<ScriptSource>,
    ) -> ApiResult<Json<ScriptView>> {
        Ok(Json(
            update(&state, Kind::Profile, &auth, &name, body.0).await?,
        ))
    }

    /// Delete a profile no template uses.
    #[oai(
        path = "/os-init-profiles/:name",
        method = "delete",
        operation_id = "profile_delete"
    )]
    async fn profile_delete(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> ApiResult<ScriptDeleted> {
        delete(&state, Kind::Profile, &auth, &name).await
    }

    /// List boot scripts. Shipped ones are system jobs, listed for administrators who ask
    /// with `include_system=true` (S21).
    #[oai(
        path = "/boot-scripts",
        method = "get",
        operation_id = "boot_script_list"
    )]
    async fn boot_list(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        #[oai(default)] include_system: Query<bool>,
    ) -> ApiResult<Json<Vec<ScriptView>>> {
        Ok(Json(
            list(&state, Kind::Boot, &auth, include_system.0).await?,
        ))
    }

    /// Create a boot script (S13): `fn actions(guest, params)` returning guest-agent actions.
    #[oai(
        path = "/boot-scripts",
        method = "post",
        operation_id = "boot_script_create"
    )]
    async fn boot_create(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<NewScript>,
    ) -> ApiResult<ScriptCreated> {
        Ok(ScriptCreated::Created(Json(
            create(&state, Kind::Boot, &auth, body.0).await?,
        )))
    }

    #[oai(
        path = "/boot-scripts/:name",
        method = "get",
        operation_id = "boot_script_get"
    )]
    async fn boot_get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> ApiResult<Json<ScriptView>> {
        Ok(Json(get(&state, Kind::Boot, &auth, &name).await?))
    }

    #[oai(
        path = "/boot-scripts/:name",
        method = "put",
        operation_id = "boot_script_update"
    )]
    async fn boot_update(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        name: Path<String>,
        body: Json<ScriptSource>,
    ) -> ApiResult<Json<ScriptView>> {
        Ok(Json(
            update(&state, Kind::Boot, &auth, &name, body.0).await?,
        ))
    }

    /// Delete a boot script with no queued jobs.
    #[oai(
        path = "/boot-scripts/:name",
        method = "delete",
        operation_id = "boot_script_delete"
    )]
    async fn boot_delete(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> ApiResult<ScriptDeleted> {
        delete(&state, Kind::Boot, &auth, &name).await
    }
}
