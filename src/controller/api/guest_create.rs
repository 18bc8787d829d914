//! `POST /guests`, parsed at the edge: [`validate`] turns a [`CreateGuest`] into a
//! [`ValidCreate`] (every field checked, the template, pool and profile resolved, the
//! password hashed) or a 4xx saying what to fix, without writing anything; [`rows`]
//! makes the guest rows. The handler (`guests.rs`) checks access, calls them, inserts the
//! rows with one `guest.create` operation each, and answers.

use super::error::Error;
use super::guests::{check_maxima, check_tags, valid_name, CreateGuest};
use super::{access, AppState};
use crate::controller::alloc;
use crate::controller::api::auth::Caller;
use crate::controller::store::{self as st, GuestRow, PoolRow, TemplateRow};
use crate::guestinit::crypt_password;
use crate::model::{new_id, now_ms, GuestState};
use crate::script::catalog::default_profile;

/// Guests one request may create.
const MAX_COUNT: u32 = 100;

/// A create request that passed every check.
#[derive(Debug)]
pub struct ValidCreate {
    pub count: u32,
    /// The name, or with `count` > 1 the prefix of `<base>-<i>`.
    pub base: String,
    pub hostname: Option<String>,
    pub template: TemplateRow,
    pub pool: Option<PoolRow>,
    pub ip: Option<String>,
    pub node: Option<String>,
    pub cpus: u32,
    pub memory_mib: u32,
    pub max_cpus: Option<u32>,
    pub max_memory_mib: Option<u32>,
    pub profile: String,
    /// Stored as JSON on the guest rows.
    pub tags: String,
    pub bandwidth: Option<String>,
    /// The password's hash and the SSH keys (`InitSecrets`), as stored on the guest rows;
    /// the operation carries nothing secret.
    pub secrets: String,
}

/// Checks `req` for `caller`; nothing is written.
pub async fn validate(
    state: &AppState,
    caller: &Caller,
    req: CreateGuest,
) -> Result<ValidCreate, Error> {
    if req.node.is_some() {
        access::operator(caller, "placing a guest on a chosen node")?;
    }
    let count = req.count.unwrap_or(1);
    check_shape(&req, count)?;
    let template = template(state, caller, &req).await?;
    if let Some(n) = &req.node {
        if state.store.node(n).await?.is_none() {
            return Err(Error::Unprocessable(format!(
                "unknown node {n:?}: see GET /api/v1/nodes"
            )));
        }
    }
    let pool = match &req.pool {
        Some(p) => Some(state.store.pool_by(p).await?.ok_or_else(|| {
            Error::Unprocessable(format!("unknown IP pool {p:?}: see GET /api/v1/ip-pools"))
        })?),
        None => None,
    };
    addresses(state, &req, count, pool.as_ref()).await?;
    let profile = match req
        .os_init_profile
        .clone()
        .or(template.os_init_profile.clone())
    {
        Some(p) => {
            super::scripts::require_profile(state, &p).await?;
            p
        }
        None => default_profile(&template.os_type).to_string(),
    };
    let secrets = secrets(&req, &template)?;
    Ok(ValidCreate {
        count,
        base: req.name.unwrap_or_else(|| format!("vm-{}", &new_id()[..8])),
        hostname: req.hostname,
        ip: req.ip,
        node: req.node,
        cpus: req.cpus,
        memory_mib: req.memory_mib,
        max_cpus: req.max_cpus,
        max_memory_mib: req.max_memory_mib,
        tags: serde_json::to_string(&check_tags(req.tags.as_deref().unwrap_or_default())?)
            .map_err(st::StoreError::from)?,
        bandwidth: req
            .bandwidth
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(st::StoreError::from)?,
        template,
        pool,
        profile,
        secrets,
    })
}

/// What needs no lookup: counts, sizes, names, limits.
fn check_shape(req: &CreateGuest, count: u32) -> Result<(), Error> {
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(Error::BadRequest(format!(
            "count must be 1–{MAX_COUNT}, not {count}"
        )));
    }
    if !(1..=64).contains(&req.cpus) {
        return Err(Error::BadRequest(format!(
            "cpus must be 1–64, not {}",
            req.cpus
        )));
    }
    check_maxima(req.cpus, req.memory_mib, req.max_cpus, req.max_memory_mib)?;
    if let Some(n) = req.name.as_ref().filter(|n| !valid_name(n)) {
        return Err(Error::BadRequest(format!(
            "name {n:?} is invalid: use lowercase letters, digits and '-', start with a letter, at most 63"
        )));
    }
    if let Some(h) = req.hostname.as_ref().filter(|h| !valid_name(h)) {
        return Err(Error::BadRequest(format!("hostname {h:?} is invalid")));
    }
    if let Some(b) = &req.bandwidth {
        b.validate()
            .map_err(|e| Error::BadRequest(format!("bandwidth: {e}")))?;
    }
    if req.ip.is_some() && count != 1 {
        return Err(Error::BadRequest(
            "ip can only be given with count 1".into(),
        ));
    }
    if req.password.as_deref() == Some("") {
        return Err(Error::BadRequest("password must not be empty".into()));
    }
    Ok(())
}

/// The template the caller may use, big enough for the memory asked.
async fn template(
    state: &AppState,
    caller: &Caller,
    req: &CreateGuest,
) -> Result<TemplateRow, Error> {
    let template = state
        .store
        .template(&req.template)
        .await?
        .filter(|t| access::sees_template(caller, t))
        .ok_or_else(|| {
            Error::Unprocessable(format!(
                "unknown template {:?}: register it with POST /api/v1/templates or pick one from GET /api/v1/templates",
                req.template
            ))
        })?;
    let min = template.min_memory_mib.max(64);
    if i64::from(req.memory_mib) < min {
        return Err(Error::Unprocessable(format!(
            "memory_mib {} is below the minimum of template {} ({min} MiB)",
            req.memory_mib, template.name
        )));
    }
    Ok(template)
}

/// A requested address lies in a pool; otherwise the pools have a free address per guest
/// (checked up front for a clear answer: the saga still guards each lease).
async fn addresses(
    state: &AppState,
    req: &CreateGuest,
    count: u32,
    pool: Option<&PoolRow>,
) -> Result<(), Error> {
    let pools = match pool {
        Some(p) => vec![p.clone()],
        None => state.store.pools().await?,
    };
    if let Some(ip) = &req.ip {
        let addr: std::net::Ipv4Addr = ip
            .parse()
            .map_err(|_| Error::BadRequest(format!("ip {ip:?} is not an IPv4 address")))?;
        for p in &pools {
            if alloc::load_pool(&state.store, p).await?.contains(addr) {
                return Ok(());
            }
        }
        return Err(Error::Unprocessable(format!(
            "ip {ip} is not inside an IP pool's allocatable range"
        )));
    }
    if pools.is_empty() {
        return Ok(());
    }
    let mut free = 0;
    for p in &pools {
        free += alloc::pool_stats(&state.store, p).await?.1.free();
    }
    if free < u64::from(count) {
        let what = match pool {
            Some(p) => format!("IP pool {}", p.name),
            None => "the IP pools".to_string(),
        };
        return Err(Error::Conflict {
            message: format!(
                "{what} have {free} free address(es); {count} requested. Add addresses or free some."
            ),
            details: Some(serde_json::json!({"free": free, "requested": count})),
        });
    }
    Ok(())
}

/// The initial password's hash and the SSH keys, as stored.
fn secrets(req: &CreateGuest, template: &TemplateRow) -> Result<String, Error> {
    let password_hash = match &req.password {
        Some(p) => Some(crypt_password(p).map_err(|e| Error::Unavailable(e.to_string()))?),
        None => None,
    };
    if template.os_type == "windows" && password_hash.is_some() {
        return Err(Error::Unprocessable(
            "Windows guests take no initial password from corral: Windows cannot use a crypt \
             hash and corral never keeps a password in plain text. Give ssh_keys, or set the \
             password in the template image."
                .into(),
        ));
    }
    Ok(serde_json::to_string(&st::InitSecrets {
        password_hash,
        ssh_keys: req.ssh_keys.clone().unwrap_or_default(),
    })
    .map_err(st::StoreError::from)?)
}

/// The guest rows of `v`, owned by `owner`: `<base>` alone, or `<base>-1` … `<base>-<count>`.
pub fn rows(v: &ValidCreate, owner: &str) -> Result<Vec<GuestRow>, Error> {
    let mut out = Vec::with_capacity(v.count as usize);
    for i in 1..=v.count {
        let name = if v.count == 1 {
            v.base.clone()
        } else {
            format!("{}-{i}", v.base)
        };
        if name.len() > 63 {
            return Err(Error::BadRequest(format!(
                "name {name} is longer than 63 characters"
            )));
        }
        let now = now_ms();
        out.push(GuestRow {
            id: new_id(),
            hostname: v.hostname.clone().unwrap_or(name.clone()),
            name,
            template_id: v.template.id.clone(),
            template_path: v.template.path.clone(),
            os_type: v.template.os_type.clone(),
            cpus: i64::from(v.cpus),
            memory_mib: i64::from(v.memory_mib),
            max_cpus: v.max_cpus.map(i64::from),
            max_memory_mib: v.max_memory_mib.map(i64::from),
            ha: false,
            state_reason: None,
            node_id: None,
            requested_node: v.node.clone(),
            pool_id: v.pool.as_ref().map(|p| p.id.clone()),
            requested_ip: v.ip.clone(),
            ip: None,
            vnc_port: None,
            mac: None,
            state: GuestState::Creating,
            lock_op: None,
            domain_xml: None,
            created_at: now,
            updated_at: now,
            bandwidth: v.bandwidth.clone(),
            os_init_profile: Some(v.profile.clone()),
            init_secrets: Some(v.secrets.clone()),
            owner_id: Some(owner.to_string()),
            tags: v.tags.clone(),
        });
    }
    Ok(out)
}
