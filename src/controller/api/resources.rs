//! Templates (OS images, S07/S37).

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::{access, AppState, Auth};
use crate::controller::store::TemplateRow;
use crate::model::{new_id, now_ms, rfc3339};
use crate::script::catalog::default_profile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum OsType {
    Linux,
    /// Gets `<clock offset='localtime'>` (S38).
    Windows,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct CreateTemplate {
    /// Unique name.
    pub name: String,
    /// Full path of the qcow2 image on the nodes (S07). Guests get linked clones of it.
    pub path: String,
    pub os_type: OsType,
    /// Smallest memory a guest of this template may have (default 64).
    pub min_memory_mib: Option<u32>,
    /// OS-init profile its guests get (S02); default: `cloud-init`, or `windows` for
    /// Windows templates.
    pub os_init_profile: Option<String>,
    /// Whether every user may use it. Default: public (only administrators register
    /// images by path).
    pub public: Option<bool>,
    /// Free text shown beside it (at most 1024 characters).
    #[oai(validator(max_length = 1024))]
    pub description: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct UpdateTemplate {
    /// The OS-init profile new guests of this template get (S02). Guests created earlier
    /// keep theirs. `null` returns to the default for the template's OS type; absent:
    /// unchanged.
    pub os_init_profile: MaybeUndefined<String>,
    /// Free text shown beside it (at most 1024 characters); `null` clears it; absent:
    /// unchanged.
    #[oai(validator(max_length = 1024))]
    pub description: MaybeUndefined<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub path: String,
    pub os_type: String,
    pub min_memory_mib: u32,
    /// The OS-init profile its guests get.
    pub os_init_profile: String,
    pub created_at: String,
    /// Every user may use a public template; a private one is its owner's.
    pub public: bool,
    /// The user who registered it; absent for templates from before owners existed.
    pub owner_id: Option<String>,
    /// SHA-256 of the image: recorded as corral writes an image (upload, from a guest),
    /// computed in the background for one registered by path (absent until then, or
    /// while the controller's host cannot read it).
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    /// Where the image downloads from (streamed, with `X-Checksum-Sha256`): the template
    /// list is the downloads list (S43).
    pub download_url: String,
    /// Free text shown beside it.
    pub description: Option<String>,
}

pub fn template_view(t: TemplateRow) -> Template {
    Template {
        download_url: format!("/api/v1/templates/{}/image", t.id),
        os_init_profile: t
            .os_init_profile
            .clone()
            .unwrap_or_else(|| default_profile(&t.os_type).to_string()),
        id: t.id,
        name: t.name,
        path: t.path,
        os_type: t.os_type,
        min_memory_mib: t.min_memory_mib as u32,
        created_at: rfc3339(t.created_at),
        public: t.public,
        owner_id: t.owner_id,
        sha256: t.sha256,
        size_bytes: t.size_bytes.map(|b| b.max(0) as u64),
        description: t.description,
    }
}

#[derive(ApiResponse)]
pub enum Created<T: poem_openapi::types::ToJSON + Send + Sync> {
    #[oai(status = 201)]
    Created(Json<T>),
}

#[derive(ApiResponse)]
pub enum Deleted {
    #[oai(status = 204)]
    Deleted,
}

/// The template if the caller may see it (its own, a public one, or any for operators).
async fn template_or_404(
    state: &AppState,
    caller: &super::auth::Caller,
    id: &str,
) -> Result<TemplateRow, Error> {
    state
        .store
        .template(id)
        .await?
        .filter(|t| access::sees_template(caller, t))
        .ok_or_else(|| Error::not_found("template", id))
}

/// 409 for a template name in use: whose template it is is said only to who may see it.
pub async fn refuse_taken_name(
    state: &AppState,
    caller: &super::auth::Caller,
    name: &str,
) -> Result<(), Error> {
    match state.store.template(name).await? {
        None => Ok(()),
        Some(t) => Err(Error::Conflict {
            message: if access::sees_template(caller, &t) {
                format!("a template named {name} exists")
            } else {
                format!("the name {name} is taken: choose another")
            },
            details: None,
        }),
    }
}

/// The template if the caller may change it; 403 for a public one that is not theirs.
async fn owned_template(
    state: &AppState,
    caller: &super::auth::Caller,
    id: &str,
) -> Result<TemplateRow, Error> {
    let t = template_or_404(state, caller, id).await?;
    if !access::owns_template(caller, &t) {
        return Err(Error::Forbidden(format!(
            "template {} is not yours: only its owner or an operator changes it",
            t.name
        )));
    }
    Ok(t)
}

pub struct TemplateApi;

#[OpenApi(tag = "super::system::Tag::Resources")]
impl TemplateApi {
    /// Register an image already on the hosts as a template, by its path
    /// (administrators). Everyone else uploads an image (`PUT /templates/{name}/image`)
    /// or makes one from a guest: a path names a file, and a file may be someone else's.
    #[oai(path = "/templates", method = "post", operation_id = "template_create")]
    async fn create(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<CreateTemplate>,
    ) -> ApiResult<Created<Template>> {
        access::admin(
            &auth.0,
            "registering an image by path (upload it with PUT /templates/{name}/image)",
        )?;
        let b = body.0;
        let public = b.public.unwrap_or(auth.0.sees_all());
        if public && !auth.0.sees_all() {
            return Err(Error::Forbidden(
                "publishing a template needs an operator or an administrator".into(),
            )
            .into());
        }
        if !super::guests::valid_name(&b.name) {
            return Err(Error::BadRequest(format!(
                "name {:?} is invalid: lowercase letters, digits and '-', starting with a letter",
                b.name
            ))
            .into());
        }
        check_image_path(&state, &b.path).await?;
        let row = TemplateRow {
            id: new_id(),
            name: b.name.clone(),
            path: b.path,
            os_type: match b.os_type {
                OsType::Linux => "linux".into(),
                OsType::Windows => "windows".into(),
            },
            min_memory_mib: i64::from(b.min_memory_mib.unwrap_or(64)),
            created_at: now_ms(),
            os_init_profile: b.os_init_profile.clone(),
            owner_id: Some(auth.0.id.clone()),
            public,
            sha256: None,
            size_bytes: None,
            description: b.description.clone(),
        };
        if let Some(p) = &row.os_init_profile {
            super::scripts::require_profile(&state, p).await?;
        }
        match state.store.insert_template(&row).await {
            Err(e) if e.is_unique_violation() => Err(Error::Conflict {
                message: format!("a template named {} already exists", b.name),
                details: None,
            }
            .into()),
            r => {
                r?;
                // Its checksum is computed in the background, starting now.
                let store = state.store.clone();
                tokio::spawn(async move { crate::controller::checksums::fill(&store).await });
                Ok(Created::Created(Json(template_view(row))))
            }
        }
    }

    #[oai(path = "/templates", method = "get", operation_id = "template_list")]
    async fn list(&self, auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Vec<Template>>> {
        Ok(Json(
            state
                .store
                .templates()
                .await?
                .into_iter()
                .filter(|t| access::sees_template(&auth.0, t))
                .map(template_view)
                .collect(),
        ))
    }

    #[oai(path = "/templates/:id", method = "get", operation_id = "template_get")]
    async fn get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Template>> {
        let t = template_or_404(&state, &auth.0, &id).await?;
        Ok(Json(template_view(t)))
    }

    /// Change a template's OS-init profile (S02) or its description; what the body leaves
    /// out is unchanged.
    #[oai(
        path = "/templates/:id",
        method = "patch",
        operation_id = "template_update"
    )]
    async fn update(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<UpdateTemplate>,
    ) -> ApiResult<Json<Template>> {
        let t = owned_template(&state, &auth.0, &id).await?;
        if let MaybeUndefined::Value(p) = &body.os_init_profile {
            super::scripts::require_profile(&state, p).await?;
        }
        if let Some(p) = body.os_init_profile.as_opt_deref() {
            state.store.set_template_profile(&t.id, p).await?;
        }
        if let Some(d) = body.description.as_opt_deref() {
            state.store.set_template_description(&t.id, d).await?;
        }
        let t = template_or_404(&state, &auth.0, &t.id).await?;
        Ok(Json(template_view(t)))
    }

    /// Remove a template. Refused while guests use it: their disks are linked clones of
    /// the image (S53). An image corral wrote (uploaded, or made from a guest) is deleted
    /// with it, on the controller at once and from each node's cache at the node's next
    /// sweep; an image registered by its path stays where it is.
    #[oai(
        path = "/templates/:id",
        method = "delete",
        operation_id = "template_delete"
    )]
    async fn delete(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Deleted> {
        let t = owned_template(&state, &auth.0, &id).await?;
        let n = state.store.guests_using_template(&t.id).await?;
        if n > 0 {
            return Err(Error::Conflict {
                message: format!(
                    "template {} is used by {n} guest(s); delete them first",
                    t.name
                ),
                details: Some(serde_json::json!({"guests": n})),
            }
            .into());
        }
        state.store.delete_template(&t.id).await?;
        if written_by_corral(&state, &t) {
            if let Err(e) = tokio::fs::remove_file(&t.path).await {
                tracing::warn!(template = t.name, "removing its image {}: {e}", t.path);
            }
        }
        Ok(Deleted::Deleted)
    }
}

/// Whether corral wrote template `t`'s image: an upload or a guest's disk made a template
/// is named by the template's id in the first template directory; nothing registered by
/// its path can be (the id is new when the record is made).
fn written_by_corral(state: &AppState, t: &crate::controller::store::TemplateRow) -> bool {
    let p = std::path::Path::new(&t.path);
    state.image_dirs.first().map(std::path::PathBuf::as_path) == p.parent()
        && p.file_stem().and_then(|s| s.to_str()) == Some(t.id.as_str())
}

/// An image registered by path: a full path, inside the template image directories, and
/// never a guest's disk (nothing inside a node's disk-image directory, even when an image
/// directory contains it).
async fn check_image_path(state: &AppState, path: &str) -> Result<(), Error> {
    let p = std::path::Path::new(path);
    if !p.is_absolute() || path.contains("/../") || path.ends_with('/') {
        return Err(Error::BadRequest(format!(
            "path {path:?} must be a full path to an image file"
        )));
    }
    for n in state.store.nodes().await? {
        let storage = n.node_facts().storage_dir;
        if !storage.is_empty()
            && crate::config::in_dirs(&[std::path::PathBuf::from(&storage)], path)
        {
            return Err(Error::Unprocessable(format!(
                "path {path} is inside node {}'s disk-image directory {storage}: guests' disks \
                 are not templates (make one from a guest instead)",
                n.id
            )));
        }
    }
    if !crate::config::in_dirs(&state.image_dirs, path) {
        let dirs: Vec<String> = state
            .image_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        return Err(Error::Unprocessable(format!(
            "path {path} is outside the template image directories ({}): put the image in \
             one of them, or an administrator adds its directory to image_dirs",
            dirs.join(", ")
        )));
    }
    Ok(())
}
