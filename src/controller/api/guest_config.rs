//! Changes inside a guest: hostname (S78), password (S12, S46) and IP (S63).
//!
//! * The hostname is recorded and the `set-hostname` system job queued: it runs now when the
//!   guest is running (and free), otherwise at its next boot.
//! * A password reset queues `reset-password` with the SHA-512 crypt hash: the agent sets
//!   it with `guest-set-user-password` (crypted), online when the guest runs. A generated
//!   password (24 characters from 62) is returned in this one answer and nowhere else;
//!   corral keeps only the hash.
//! * An IP change is the `guest.change_ip` operation (see `saga::kinds::change_ip`). The request is
//!   checked here first, so a taken, reserved or disabled address is a 409 at once.

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::bootjobs::{queue, run_now};
use super::error::{ApiResult, Error};
use super::guests::{submit, OpResponse};
use super::{AppState, Auth};
use crate::controller::alloc;
use crate::controller::saga::kinds::change_ip::ChangeIpPayload;
use crate::controller::saga::kinds::Request;
use crate::controller::store::Requester;
use crate::controller::store::{self as st, GuestRow};
use crate::guestinit::{check_user, crypt_password};
use crate::model::random_secret;
use crate::model::GuestState;
use crate::script::guest::check_hostname;

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct UpdateGuest {
    /// New hostname inside the guest (S78): recorded, and set in the guest now when it is
    /// running, otherwise at its next boot.
    pub hostname: Option<String>,
    /// The guest's tags, all of them (S61): recorded at once; the guest is not touched.
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct GuestChange {
    pub guest_id: String,
    /// The boot job that applies the change in the guest.
    pub boot_job_id: Option<String>,
    /// The run started now (the guest is running); absent: at its next boot.
    pub operation_id: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ResetPassword {
    /// Account; default `root`.
    pub user: Option<String>,
    /// The new password. Give this or `generate: true`.
    #[oai(write_only)]
    pub password: Option<String>,
    /// Generate a strong random password and return it (once) in the answer.
    #[oai(default)]
    pub generate: bool,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct PasswordReset {
    pub guest_id: String,
    pub boot_job_id: String,
    pub operation_id: Option<String>,
    /// The generated password: shown this once, never stored.
    pub password: Option<String>,
}

#[derive(ApiResponse)]
pub enum PasswordResponse {
    /// Queued; it runs now when the guest is running (follow `operation_id`).
    #[oai(status = 202)]
    Accepted(Json<PasswordReset>),
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct AddSshKeys {
    /// Public keys to add to the user's `authorized_keys` (1–100; keys already there are
    /// skipped).
    pub keys: Vec<String>,
    /// Account; default `root`.
    pub user: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct ChangeIp {
    /// The new address; absent: the next free address of the guest's pool.
    pub ip: Option<String>,
}

/// Queues a system boot job for `g` and starts its run when the guest is running.
async fn system_job(
    state: &AppState,
    g: &GuestRow,
    script: &str,
    params: &serde_json::Value,
    by: Requester<'_>,
) -> Result<(String, Option<String>), Error> {
    let mut tx = state.store.begin().await?;
    let job = queue(state, &mut tx, &g.id, script, params, true, by).await?;
    let op = run_now(state, &mut tx, g, vec![job.clone()], by).await?;
    state.store.commit(tx).await?;
    if let Some(op) = &op {
        state.waker.wake(op);
    }
    Ok((job, op))
}

/// Boot jobs run `/bin/sh` in the guest: Windows guests have none.
fn posix_only(g: &GuestRow, what: &str) -> Result<(), Error> {
    if g.os_type == "windows" {
        return Err(Error::Unprocessable(format!(
            "{what} runs a shell in the guest, which Windows guests lack; change it inside Windows"
        )));
    }
    Ok(())
}

async fn guest(state: &AppState, auth: &Auth, id: &str) -> Result<GuestRow, Error> {
    super::access::guest(state, &auth.0, id).await
}

pub struct GuestConfigApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl GuestConfigApi {
    /// Reset a password inside the guest (S12, S46), online when it runs.
    #[oai(
        path = "/guests/:id/password",
        method = "post",
        operation_id = "guest_reset_password"
    )]
    async fn reset_password(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<ResetPassword>,
    ) -> ApiResult<PasswordResponse> {
        let g = guest(&state, &auth, &id).await?;
        let b = body.0;
        let user = b.user.unwrap_or_else(|| "root".into());
        check_user(&user).map_err(Error::BadRequest)?;
        if g.os_type == "windows" {
            return Err(Error::Unprocessable(
                "Windows guests cannot take a crypt hash and corral never sends a plain password; reset it inside Windows".into(),
            )
            .into());
        }
        let (password, shown) = match (b.password, b.generate) {
            (Some(_), true) => {
                return Err(
                    Error::BadRequest("give password or generate: true, not both".into()).into(),
                )
            }
            (None, false) => {
                return Err(Error::BadRequest("give password, or generate: true".into()).into())
            }
            (Some(p), false) if p.len() < 8 => {
                return Err(
                    Error::BadRequest("password must be at least 8 characters".into()).into(),
                )
            }
            (Some(p), false) => (p, None),
            (None, true) => {
                let p = random_secret(24);
                (p.clone(), Some(p))
            }
        };
        let hash = crypt_password(&password).map_err(|e| Error::Unavailable(e.to_string()))?;
        drop(password);
        if matches!(g.state, GuestState::Creating | GuestState::Deleting) {
            return Err(Error::Conflict {
                message: format!(
                    "guest {} is {}; reset the password once that is done",
                    g.name, g.state
                ),
                details: None,
            }
            .into());
        }
        let params = serde_json::json!({ "user": user, "password_hash": hash });
        let (job, op) = system_job(
            &state,
            &g,
            "reset-password",
            &params,
            Requester::user(&auth.0.user),
        )
        .await?;
        Ok(PasswordResponse::Accepted(Json(PasswordReset {
            guest_id: g.id,
            boot_job_id: job,
            operation_id: op,
            password: shown,
        })))
    }

    /// Add SSH public keys inside the guest (the `inject-ssh-keys` system job): now when it
    /// runs, otherwise at its next boot.
    #[oai(
        path = "/guests/:id/ssh-keys",
        method = "post",
        operation_id = "guest_add_ssh_keys"
    )]
    async fn add_ssh_keys(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<AddSshKeys>,
    ) -> ApiResult<Json<GuestChange>> {
        let g = guest(&state, &auth, &id).await?;
        let b = body.0;
        let user = b.user.unwrap_or_else(|| "root".into());
        check_user(&user).map_err(Error::BadRequest)?;
        posix_only(&g, "adding SSH keys")?;
        if b.keys.is_empty() || b.keys.len() > 100 {
            return Err(Error::BadRequest("keys must hold 1 to 100 public keys".into()).into());
        }
        for (i, k) in b.keys.iter().enumerate() {
            let parts: Vec<&str> = k.split_whitespace().collect();
            let ok = parts.len() >= 2
                && (parts[0].starts_with("ssh-")
                    || parts[0].starts_with("ecdsa-")
                    || parts[0].starts_with("sk-"))
                && !k.contains(['\n', '\r']);
            if !ok {
                return Err(Error::BadRequest(format!(
                    "keys[{i}] is not an OpenSSH public key (\"ssh-ed25519 AAAA... comment\")"
                ))
                .into());
            }
        }
        let params = serde_json::json!({ "user": user, "keys": b.keys });
        let (job, op) = system_job(
            &state,
            &g,
            "inject-ssh-keys",
            &params,
            Requester::user(&auth.0.user),
        )
        .await?;
        Ok(Json(GuestChange {
            guest_id: g.id,
            boot_job_id: Some(job),
            operation_id: op,
        }))
    }

    /// Move a guest to another IP (S63): from its pool, or an address given by hand (409
    /// when a guest or a reservation holds it). Record, pool and guest change together.
    #[oai(
        path = "/guests/:id/change-ip",
        method = "post",
        operation_id = "guest_change_ip"
    )]
    async fn change_ip(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<ChangeIp>,
    ) -> ApiResult<OpResponse> {
        let g = guest(&state, &auth, &id).await?;
        if g.ip.is_none() || g.mac.is_none() {
            return Err(
                Error::Unprocessable(format!("guest {} has no address to change", g.name)).into(),
            );
        }
        match &body.ip {
            Some(addr) => precheck_manual(&state, &g, addr).await?,
            None => {
                let Some(pid) = &g.pool_id else {
                    return Err(Error::Unprocessable(format!(
                        "guest {} has no IP pool: give ip",
                        g.name
                    ))
                    .into());
                };
                let pool = state
                    .store
                    .pools()
                    .await?
                    .into_iter()
                    .find(|p| &p.id == pid);
                if let Some(p) = pool {
                    let range = alloc::load_pool(&state.store, &p)
                        .await
                        .map_err(|e| Error::Unprocessable(e.to_string()))?;
                    if range.size() <= state.store.pool_used(&p.id).await? as u64 {
                        return Err(Error::Conflict {
                            message: format!(
                                "IP pool {} has no free address; add a range or give ip",
                                p.name
                            ),
                            details: None,
                        }
                        .into());
                    }
                }
            }
        }
        let req = Request::GuestChangeIp(ChangeIpPayload {
            address: body.0.ip,
            ..Default::default()
        });
        Ok(submit(&state, &req, &g.id, Requester::user(&auth.0.user)).await?)
    }
}

/// The guest's current pool.
async fn pools_of(state: &AppState, g: &GuestRow) -> Result<Option<st::PoolRow>, Error> {
    Ok(state
        .store
        .pools()
        .await?
        .into_iter()
        .find(|p| Some(&p.id) == g.pool_id.as_ref()))
}

/// The 409s and 422s of a hand-given address, before any operation starts.
async fn precheck_manual(state: &AppState, g: &GuestRow, addr: &str) -> Result<(), Error> {
    let ip: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| Error::BadRequest(format!("ip {addr:?} is not an IPv4 address")))?;
    if g.ip.as_deref() == Some(addr) {
        return Err(Error::Unprocessable(format!(
            "guest {} already has {addr}",
            g.name
        )));
    }
    if let Some((gid, name)) = state.store.address_holder(addr).await? {
        // Named only when the holder is the same owner's guest: another user's guest is
        // none of the caller's business, only that the address is taken.
        let same_owner = state
            .store
            .guest(&gid)
            .await?
            .is_some_and(|h| h.owner_id.is_some() && h.owner_id == g.owner_id);
        return Err(if same_owner {
            Error::Conflict {
                message: format!("IP {addr} is used by guest {name}"),
                details: Some(serde_json::json!({"guest_id": gid})),
            }
        } else {
            Error::Conflict {
                message: format!("IP {addr} is taken"),
                details: None,
            }
        });
    }
    if let Some((s, note)) = state.store.address_mark(addr).await? {
        return Err(Error::Conflict {
            message: format!(
                "IP {addr} is {s}{}",
                if note.is_empty() {
                    String::new()
                } else {
                    format!(" ({note})")
                }
            ),
            details: Some(serde_json::json!({"state": s})),
        });
    }
    for p in state.store.pools().await? {
        let range = alloc::load_pool(&state.store, &p)
            .await
            .map_err(|e| Error::Unprocessable(e.to_string()))?;
        if range.net.contains(&ip) {
            if let Some(cur) = pools_of(state, g).await? {
                if (&cur.bridge, cur.vlan) != (&p.bridge, p.vlan) {
                    return Err(Error::Unprocessable(format!(
                        "{ip} is in pool {} on another network (bridge {:?}, VLAN {:?}) than the guest's NIC \
                         (bridge {:?}, VLAN {:?}): an IP change keeps the guest on its network",
                        p.name, p.bridge, p.vlan, cur.bridge, cur.vlan
                    )));
                }
            }
            if ip == range.net.network() || ip == range.net.broadcast() || Some(ip) == range.gateway
            {
                return Err(Error::Unprocessable(format!(
                    "{ip} is the network, broadcast or gateway address of pool {}",
                    p.name
                )));
            }
            return Ok(());
        }
    }
    Err(Error::Unprocessable(format!(
        "{ip} is not inside any IP pool's network"
    )))
}

/// `PATCH /guests/{id}`: change a guest's settings inside it, the hostname (S78). The
/// route lives with the guest's other methods in `guests.rs`, so the path is declared once.
///
/// Tags and hostname change in one transaction: the tags are recorded, then the hostname
/// with its `set-hostname` job (and its run, when the guest runs); the run is woken once
/// the transaction is committed.
pub(super) async fn update(
    auth: Auth,
    state: &AppState,
    id: &str,
    body: UpdateGuest,
) -> ApiResult<Json<GuestChange>> {
    let g = guest(state, &auth, id).await?;
    // Everything is checked before anything is written: a bad field changes nothing.
    let tags = body
        .tags
        .as_deref()
        .map(super::guests::check_tags)
        .transpose()?;
    if let Some(hostname) = &body.hostname {
        check_hostname_change(&g, hostname)?;
    }
    let mut tx = state.store.begin().await?;
    if let Some(tags) = &tags {
        record_tags(&mut tx, &g, tags).await?;
    }
    let Some(hostname) = body.hostname else {
        state.store.commit(tx).await?;
        return Ok(Json(GuestChange {
            guest_id: g.id,
            boot_job_id: None,
            operation_id: None,
        }));
    };
    let by = Requester::user(&auth.0.user);
    let (job, op) = record_hostname(state, &mut tx, &g, &hostname, by).await?;
    state.store.commit(tx).await?;
    if let Some(op) = &op {
        state.waker.wake(op);
    }
    Ok(Json(GuestChange {
        guest_id: g.id,
        boot_job_id: Some(job),
        operation_id: op,
    }))
}

/// Whether `g` can take `hostname`: a valid hostname (400), a guest with a shell to set it
/// (422), and one that is not being created or deleted (409).
fn check_hostname_change(g: &GuestRow, hostname: &str) -> Result<(), Error> {
    check_hostname(hostname).map_err(Error::BadRequest)?;
    posix_only(g, "a hostname change")?;
    if matches!(g.state, GuestState::Creating | GuestState::Deleting) {
        return Err(Error::Conflict {
            message: format!(
                "guest {} is {}; change it once that is done",
                g.name, g.state
            ),
            details: None,
        });
    }
    Ok(())
}

/// Records `g`'s new tags, with their `guest.tags` event, in `tx`.
async fn record_tags(tx: &mut st::Tx<'_>, g: &GuestRow, tags: &[String]) -> Result<(), Error> {
    st::set_guest_tags(tx, &g.id, tags).await?;
    st::events::append(
        tx,
        "guest.tags",
        &g.id,
        &serde_json::json!({"guest_id": g.id, "tags": tags}),
    )
    .await?;
    Ok(())
}

/// Records `g`'s new hostname in `tx` and queues the `set-hostname` system job, with its
/// run when the guest is running, and the `guest.hostname` event: the job's id and the
/// run's, which the caller wakes once `tx` is committed.
async fn record_hostname(
    state: &AppState,
    tx: &mut st::Tx<'_>,
    g: &GuestRow,
    hostname: &str,
    by: Requester<'_>,
) -> Result<(String, Option<String>), Error> {
    st::set_guest_hostname(tx, &g.id, hostname).await?;
    let params = serde_json::json!({ "hostname": hostname });
    let job = queue(state, tx, &g.id, "set-hostname", &params, true, by).await?;
    let op = run_now(state, tx, g, vec![job.clone()], by).await?;
    st::events::append(
        tx,
        "guest.hostname",
        &g.id,
        &serde_json::json!({"guest_id": g.id, "hostname": hostname, "boot_job_id": job}),
    )
    .await?;
    Ok((job, op))
}
