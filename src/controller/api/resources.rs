//! Templates (OS images, S07/S37) and IP pools.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::{AppState, Auth};
use crate::controller::alloc::PoolRange;
use crate::controller::store::{PoolRow, TemplateRow};
use crate::model::{new_id, now_ms, rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum OsType {
    Linux,
    /// Gets `<clock offset='localtime'>` (S38).
    Windows,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateTemplate {
    /// Unique name.
    pub name: String,
    /// Full path of the qcow2 image on the nodes (S07). Guests get linked clones of it.
    pub path: String,
    pub os_type: OsType,
    /// Smallest memory a guest of this template may have (default 64).
    pub min_memory_mib: Option<u32>,
}

#[derive(Debug, Object)]
pub struct Template {
    pub id: String,
    pub name: String,
    pub path: String,
    pub os_type: String,
    pub min_memory_mib: u32,
    pub created_at: String,
}

fn template_view(t: TemplateRow) -> Template {
    Template {
        id: t.id,
        name: t.name,
        path: t.path,
        os_type: t.os_type,
        min_memory_mib: t.min_memory_mib as u32,
        created_at: rfc3339(t.created_at),
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

pub struct TemplateApi;

#[OpenApi(tag = "super::system::Tag::Resources")]
impl TemplateApi {
    /// Register a template image.
    #[oai(path = "/templates", method = "post", operation_id = "template_create")]
    async fn create(
        &self,
        _auth: Auth,
        state: Data<&AppState>,
        body: Json<CreateTemplate>,
    ) -> ApiResult<Created<Template>> {
        let b = body.0;
        if !super::guests::valid_name(&b.name) {
            return Err(Error::BadRequest(format!(
                "name {:?} is invalid: lowercase letters, digits and '-', starting with a letter",
                b.name
            ))
            .into());
        }
        let p = std::path::Path::new(&b.path);
        if !p.is_absolute() || b.path.contains("/../") || b.path.ends_with('/') {
            return Err(Error::BadRequest(format!(
                "path {:?} must be a full path to an image file",
                b.path
            ))
            .into());
        }
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
        };
        match state.store.insert_template(&row).await {
            Err(e) if e.is_unique_violation() => Err(Error::Conflict {
                message: format!("a template named {} already exists", b.name),
                details: None,
            }
            .into()),
            r => {
                r?;
                Ok(Created::Created(Json(template_view(row))))
            }
        }
    }

    #[oai(path = "/templates", method = "get", operation_id = "template_list")]
    async fn list(&self, _auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Vec<Template>>> {
        Ok(Json(
            state
                .store
                .templates()
                .await?
                .into_iter()
                .map(template_view)
                .collect(),
        ))
    }

    #[oai(path = "/templates/:id", method = "get", operation_id = "template_get")]
    async fn get(
        &self,
        _auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Template>> {
        let t = state
            .store
            .template(&id)
            .await?
            .ok_or_else(|| Error::not_found("template", id.0.clone()))?;
        Ok(Json(template_view(t)))
    }

    /// Remove a template record. Refused while guests use it: their disks are linked clones
    /// of the image (S53). The image file itself is never deleted by corral.
    #[oai(
        path = "/templates/:id",
        method = "delete",
        operation_id = "template_delete"
    )]
    async fn delete(
        &self,
        _auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Deleted> {
        let t = state
            .store
            .template(&id)
            .await?
            .ok_or_else(|| Error::not_found("template", id.0.clone()))?;
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
        Ok(Deleted::Deleted)
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    /// Network, e.g. `192.0.2.0/24`.
    pub cidr: String,
    /// First allocatable address.
    pub range_start: String,
    /// Last allocatable address.
    pub range_end: String,
    /// Default gateway; inside the network, never handed out.
    pub gateway: Option<String>,
    #[oai(default)]
    pub dns: Vec<String>,
}

#[derive(Debug, Object)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub range_start: String,
    pub range_end: String,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    pub used: u32,
    pub created_at: String,
}

fn pool_view(p: PoolRow, used: i64) -> Pool {
    Pool {
        dns: p.dns_list(),
        id: p.id,
        name: p.name,
        cidr: p.cidr,
        range_start: p.range_start,
        range_end: p.range_end,
        gateway: p.gateway,
        used: used as u32,
        created_at: rfc3339(p.created_at),
    }
}

fn parse_ip(field: &str, v: &str) -> Result<Ipv4Addr, Error> {
    v.parse()
        .map_err(|_| Error::BadRequest(format!("{field} {v:?} is not an IPv4 address")))
}

/// Checks a pool definition; each error names the field.
fn validate_pool(b: &CreatePool) -> Result<(Ipv4Net, Ipv4Addr, Ipv4Addr), Error> {
    let net: Ipv4Net = b.cidr.parse().map_err(|_| {
        Error::BadRequest(format!(
            "cidr {:?} is not an IPv4 network like 192.0.2.0/24",
            b.cidr
        ))
    })?;
    let start = parse_ip("range_start", &b.range_start)?;
    let end = parse_ip("range_end", &b.range_end)?;
    if !net.contains(&start) || !net.contains(&end) {
        return Err(Error::BadRequest(format!(
            "range {start}-{end} must lie inside {net}"
        )));
    }
    if start > end {
        return Err(Error::BadRequest(format!(
            "range_start {start} is after range_end {end}"
        )));
    }
    if let Some(g) = &b.gateway {
        let g = parse_ip("gateway", g)?;
        if !net.contains(&g) {
            return Err(Error::BadRequest(format!(
                "gateway {g} must lie inside {net}"
            )));
        }
    }
    for d in &b.dns {
        parse_ip("dns", d)?;
    }
    Ok((net, start, end))
}

pub struct PoolApi;

#[OpenApi(tag = "super::system::Tag::Resources")]
impl PoolApi {
    /// Create an IP pool.
    #[oai(path = "/ip-pools", method = "post", operation_id = "pool_create")]
    async fn create(
        &self,
        _auth: Auth,
        state: Data<&AppState>,
        body: Json<CreatePool>,
    ) -> ApiResult<Created<Pool>> {
        let b = body.0;
        if !super::guests::valid_name(&b.name) {
            return Err(Error::BadRequest(format!("name {:?} is invalid", b.name)).into());
        }
        let (_, start, end) = validate_pool(&b)?;
        for other in state.store.pools().await? {
            if let Ok(r) = PoolRange::parse(&other) {
                if start <= r.end && r.start <= end {
                    return Err(Error::Conflict {
                        message: format!(
                            "range {start}-{end} overlaps pool {} ({}-{})",
                            other.name, r.start, r.end
                        ),
                        details: None,
                    }
                    .into());
                }
            }
        }
        let row = PoolRow {
            id: new_id(),
            name: b.name.clone(),
            cidr: b.cidr,
            range_start: start.to_string(),
            range_end: end.to_string(),
            gateway: b.gateway,
            dns: serde_json::to_string(&b.dns).unwrap_or_else(|_| "[]".into()),
            created_at: now_ms(),
        };
        match state.store.insert_pool(&row).await {
            Err(e) if e.is_unique_violation() => Err(Error::Conflict {
                message: format!("a pool named {} already exists", b.name),
                details: None,
            }
            .into()),
            r => {
                r?;
                Ok(Created::Created(Json(pool_view(row, 0))))
            }
        }
    }

    #[oai(path = "/ip-pools", method = "get", operation_id = "pool_list")]
    async fn list(&self, _auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Vec<Pool>>> {
        let mut out = Vec::new();
        for p in state.store.pools().await? {
            let used = state.store.pool_used(&p.id).await?;
            out.push(pool_view(p, used));
        }
        Ok(Json(out))
    }

    #[oai(path = "/ip-pools/:id", method = "get", operation_id = "pool_get")]
    async fn get(
        &self,
        _auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Pool>> {
        let p = state
            .store
            .pool_by(&id)
            .await?
            .ok_or_else(|| Error::not_found("IP pool", id.0.clone()))?;
        let used = state.store.pool_used(&p.id).await?;
        Ok(Json(pool_view(p, used)))
    }

    /// Delete an IP pool; refused while any address is in use.
    #[oai(
        path = "/ip-pools/:id",
        method = "delete",
        operation_id = "pool_delete"
    )]
    async fn delete(
        &self,
        _auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Deleted> {
        let p = state
            .store
            .pool_by(&id)
            .await?
            .ok_or_else(|| Error::not_found("IP pool", id.0.clone()))?;
        let used = state.store.pool_used(&p.id).await?;
        if used > 0 {
            return Err(Error::Conflict {
                message: format!("pool {} has {used} address(es) in use", p.name),
                details: None,
            }
            .into());
        }
        state.store.delete_pool(&p.id).await?;
        Ok(Deleted::Deleted)
    }
}
