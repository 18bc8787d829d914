//! Guests: create (batch), list, show, delete, power actions. Writes answer 202 with the
//! operation's URL; the saga engine does the work.

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::guest_config;
use super::operations::{start_op, Target};
use super::pages::{Cached, Clock};
use super::{access, AppState, Auth};
use crate::controller::alloc;
use crate::controller::saga::kinds::power::Power;
use crate::controller::saga::kinds::{self, set_bandwidth, Request};
use crate::controller::store::Requester;
use crate::controller::store::{self as st, GuestRow};
use crate::model::GuestState;
use crate::model::{rfc3339, Bandwidth};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct CreateGuest {
    /// Guest name (lowercase letters, digits, `-`; starts with a letter; ≤ 63). With
    /// `count` > 1 it is a prefix: `web` gives `web-1`, `web-2`, ... Default: `vm-<random>`.
    pub name: Option<String>,
    /// Template id or name.
    pub template: String,
    /// vCPUs, 1–64.
    pub cpus: u32,
    /// Memory in MiB; at least the template's minimum.
    pub memory_mib: u32,
    /// vCPUs the guest can grow to while running (hot-plug), `cpus`–256; default `cpus`
    /// (no live growth). Hot-plugged vCPUs are onlined through the guest agent.
    pub max_cpus: Option<u32>,
    /// Memory in MiB the guest can grow to while running (balloon), `memory_mib`–1048576;
    /// default `memory_mib`. The guest needs a virtio balloon driver; placement counts
    /// `memory_mib`.
    pub max_memory_mib: Option<u32>,
    /// How many guests, 1–100 (S27: spread over nodes, lightest first).
    pub count: Option<u32>,
    /// Node id to place on (S50); default: automatic placement.
    pub node: Option<String>,
    /// IP pool id or name; default: the first pool with a free address.
    pub pool: Option<String>,
    /// A specific IPv4 address from a pool (only with count 1).
    pub ip: Option<String>,
    /// Hostname inside the guest; default: the name.
    pub hostname: Option<String>,
    /// Root password, set through the init seed. Stored only as a SHA-512 crypt hash.
    #[oai(write_only)]
    pub password: Option<String>,
    /// SSH public keys for root.
    pub ssh_keys: Option<Vec<String>>,
    /// NIC traffic limits (S54); default unlimited.
    pub bandwidth: Option<Bandwidth>,
    /// OS-init profile for this guest; default: the template's (S02).
    pub os_init_profile: Option<String>,
    /// Labels for grouping and filtering (S61): up to 32, each 1–64 of letters, digits and
    /// `.`, `_`, `-`, `:`, `=`, `/`.
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct CorrectIp {
    /// The address the guest really uses: inside a pool's range, free, not reserved or
    /// disabled.
    pub ip: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct DomainXml {
    /// The domain definition as the node last reported it (S11).
    pub xml: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Accepted {
    pub guest_id: String,
    pub operation_id: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct AcceptedList {
    pub operations: Vec<Accepted>,
}

#[derive(ApiResponse)]
pub enum CreateResponse {
    /// Accepted; `Location` points at the (first) operation.
    #[oai(status = 202)]
    Accepted(Json<AcceptedList>, #[oai(header = "Location")] String),
}

#[derive(ApiResponse)]
pub enum OpResponse {
    /// Accepted; follow the operation at `Location`.
    #[oai(status = 202)]
    Accepted(Json<Accepted>, #[oai(header = "Location")] String),
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Disk {
    pub id: String,
    pub path: String,
    /// `system` or `seed`.
    pub kind: String,
    pub backing: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Guest {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub state: GuestState,
    pub node_id: Option<String>,
    pub template_id: String,
    pub os_type: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// What a live resize can grow `cpus` to.
    pub max_cpus: u32,
    /// What a live resize can grow `memory_mib` to.
    pub max_memory_mib: u32,
    pub ip: Option<String>,
    pub pool_id: Option<String>,
    pub mac: Option<String>,
    pub vnc_port: Option<u16>,
    /// The operation currently holding the guest.
    pub operation_id: Option<String>,
    /// NIC traffic limits; absent when unlimited.
    pub bandwidth: Option<Bandwidth>,
    pub tags: Vec<String>,
    pub disks: Vec<Disk>,
    /// HA (S74): restarted on another node when its node is fenced (`PUT
    /// /guests/{id}/ha`).
    pub ha: bool,
    /// Why the guest is in its state, when corral could not act (for example: its node
    /// is offline and the node's fence failed, so HA restarts nothing).
    pub state_reason: Option<String>,
    /// The user it belongs to; absent for guests from before owners existed.
    pub owner_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "snake_case")]
pub enum GuestAction {
    Start,
    /// ACPI shutdown; waits until off.
    Shutdown,
    /// Force off.
    Poweroff,
    /// ACPI reboot.
    Reboot,
    /// Force reset.
    Reset,
    Suspend,
    Resume,
}

/// Maxima for live growth are at least the size and at most what a domain can have.
pub(super) fn check_maxima(
    cpus: u32,
    memory_mib: u32,
    max_cpus: Option<u32>,
    max_memory_mib: Option<u32>,
) -> Result<(), Error> {
    if let Some(m) = max_cpus.filter(|m| !(cpus..=256).contains(m)) {
        return Err(Error::BadRequest(format!(
            "max_cpus must be between cpus ({cpus}) and 256, not {m}"
        )));
    }
    if let Some(m) = max_memory_mib.filter(|m| !(memory_mib..=1_048_576).contains(m)) {
        return Err(Error::BadRequest(format!(
            "max_memory_mib must be between memory_mib ({memory_mib}) and 1048576, not {m}"
        )));
    }
    Ok(())
}

fn view(g: &GuestRow, disks: Vec<st::DiskRow>) -> Guest {
    Guest {
        id: g.id.clone(),
        name: g.name.clone(),
        hostname: g.hostname.clone(),
        state: g.state,
        node_id: g.node_id.clone(),
        template_id: g.template_id.clone(),
        os_type: g.os_type.clone(),
        cpus: g.cpus as u32,
        memory_mib: g.memory_mib as u32,
        max_cpus: g.max_cpus(),
        max_memory_mib: g.max_memory_mib(),
        ip: g.ip.clone(),
        pool_id: g.pool_id.clone(),
        mac: g.mac.clone(),
        vnc_port: g.vnc_port.map(|p| p as u16),
        operation_id: g.lock_op.clone(),
        bandwidth: g.bandwidth(),
        tags: g.tags(),
        disks: disks
            .into_iter()
            .map(|d| Disk {
                id: d.id,
                path: d.path,
                kind: d.kind,
                backing: d.backing,
            })
            .collect(),
        ha: g.ha,
        state_reason: g.state_reason.clone(),
        owner_id: g.owner_id.clone(),
        created_at: rfc3339(g.created_at),
        updated_at: rfc3339(g.updated_at),
    }
}

/// The most tags a guest carries.
const MAX_TAGS: usize = 32;

/// A guest's tags as given, checked; duplicates go, the order stays.
pub fn check_tags(tags: &[String]) -> Result<Vec<String>, Error> {
    if tags.len() > MAX_TAGS {
        return Err(Error::BadRequest(format!(
            "{} tags given; a guest carries at most {MAX_TAGS}",
            tags.len()
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for t in tags {
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:=/".contains(c));
        if !ok {
            return Err(Error::BadRequest(format!(
                "tag {t:?} is not 1–64 letters, digits or . _ - : = /"
            )));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

/// Names and hostnames: RFC 1123 labels, lowercase.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Linux interface names: 1–15 characters, no '/', whitespace or ':'.
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The 202 answer for an operation on a guest.
pub fn accepted(guest_id: String, op_id: &str) -> OpResponse {
    OpResponse::Accepted(
        Json(Accepted {
            guest_id,
            operation_id: op_id.to_string(),
        }),
        op_location(op_id),
    )
}

/// Starts the operation `req` on guest `guest` (taking its lock) and answers 202.
pub async fn submit(
    state: &AppState,
    req: &Request,
    guest: &str,
    by: Requester<'_>,
) -> Result<OpResponse, Error> {
    let mut tx = state.store.begin().await?;
    let op = start_op(state, &mut tx, req, Target::Guest(guest), by, true).await?;
    state.store.commit(tx).await?;
    state.waker.wake(&op.id);
    Ok(accepted(guest.to_string(), &op.id))
}

pub(super) fn op_location(id: &str) -> String {
    format!("/api/v1/operations/{id}")
}

pub struct GuestApi;

#[OpenApi(tag = "super::system::Tag::Guests")]
impl GuestApi {
    /// Create one or more guests. Answers at once with one operation per guest.
    #[oai(path = "/guests", method = "post", operation_id = "guest_create")]
    async fn create(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<CreateGuest>,
    ) -> ApiResult<CreateResponse> {
        let mut req = body.0;
        plugin_before_create(&state, &auth, &mut req)?;
        let valid = super::guest_create::validate(&state, &auth.0, req).await?;
        let rows = super::guest_create::rows(&valid, &auth.0.id)?;
        let mut tx = state.store.begin().await?;
        let mut accepted = Vec::new();
        for row in rows {
            let (id, name) = (row.id.clone(), row.name.clone());
            match st::insert_guest(&mut tx, &row).await {
                Err(e) if e.is_unique_violation() => {
                    // Whose it is is said only to its owner (or an operator).
                    let theirs = access::guest(&state, &auth.0, &name).await.is_ok();
                    return Err(Error::Conflict {
                        message: if theirs {
                            format!("a guest named {name} already exists")
                        } else {
                            format!("the name {name} is taken: choose another")
                        },
                        details: None,
                    }
                    .into());
                }
                r => r?,
            }
            let op = start_op(
                &state,
                &mut tx,
                &Request::GuestCreate(kinds::NoPayload),
                Target::Guest(&id),
                Requester::user(&auth.0.user),
                true,
            )
            .await?;
            accepted.push(Accepted {
                guest_id: id,
                operation_id: op.id,
            });
        }
        state.store.commit(tx).await?;
        for a in &accepted {
            state.waker.wake(&a.operation_id);
        }
        let location = op_location(&accepted[0].operation_id);
        Ok(CreateResponse::Accepted(
            Json(AcceptedList {
                operations: accepted,
            }),
            location,
        ))
    }

    /// List guests.
    #[oai(path = "/guests", method = "get", operation_id = "guest_list")]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// Only guests in this state.
        #[oai(name = "state")]
        guest_state: Query<Option<GuestState>>,
        /// Only guests on this node.
        node: Query<Option<String>>,
        /// Only guests carrying this tag.
        tag: Query<Option<String>>,
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "1000"))
        )]
        limit: Query<i64>,
        #[oai(default, validator(minimum(value = "0")))] offset: Query<i64>,
    ) -> ApiResult<Cached<Vec<Guest>>> {
        let key = format!(
            "guests/{}?{:?}&{:?}&{:?}&{}&{}",
            access::view_key(&auth.0),
            guest_state.0,
            node.0,
            tag.0,
            limit.0,
            offset.0
        );
        let owner = auth.0.owner_scope().map(String::from);
        let store = &state.store;
        state
            .pages
            .page(key, &["guests", "disks"], async {
                let rows = store
                    .guests(
                        guest_state.0.map(GuestState::as_str),
                        node.0.as_deref(),
                        owner.as_deref(),
                        tag.0.as_deref(),
                        limit.0,
                        offset.0,
                    )
                    .await?;
                // One query for the disks of the whole page, not one per guest.
                let ids: Vec<&str> = rows.iter().map(|g| g.id.as_str()).collect();
                let mut disks: std::collections::HashMap<String, Vec<st::DiskRow>> =
                    std::collections::HashMap::new();
                for d in store.disks_of_many(&ids).await? {
                    disks
                        .entry(d.guest_id.clone().unwrap_or_default())
                        .or_default()
                        .push(d);
                }
                let page: Vec<Guest> = rows
                    .iter()
                    .map(|g| view(g, disks.remove(&g.id).unwrap_or_default()))
                    .collect();
                Ok((page, Clock::Independent))
            })
            .await
    }

    /// One guest by id or name.
    #[oai(path = "/guests/:id", method = "get", operation_id = "guest_get")]
    async fn get(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<Guest>> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let disks = state.store.disks_of(&g.id).await?;
        Ok(Json(view(&g, disks)))
    }

    /// Change a guest's settings inside it: the hostname (S78).
    #[oai(path = "/guests/:id", method = "patch", operation_id = "guest_update")]
    async fn update(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<guest_config::UpdateGuest>,
    ) -> ApiResult<Json<guest_config::GuestChange>> {
        guest_config::update(auth, &state, &id, body.0).await
    }

    /// Delete a guest with its disk and seed; its IP, VNC port and MAC return to the pools.
    /// Works for guests whose creation failed (S30).
    #[oai(path = "/guests/:id", method = "delete", operation_id = "guest_delete")]
    async fn delete(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<OpResponse> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let mut tx = state.store.begin().await?;
        let op = start_op(
            &state,
            &mut tx,
            &Request::GuestDelete(kinds::NoPayload),
            Target::Guest(&g.id),
            Requester::user(&auth.0.user),
            true,
        )
        .await?;
        st::set_guest_state(&mut tx, &g.id, GuestState::Deleting).await?;
        state.store.commit(tx).await?;
        state.waker.wake(&op.id);
        Ok(accepted(g.id, &op.id))
    }

    /// Correct a guest's recorded IP (S98): the record and the pools change together; the
    /// guest itself is not touched (changing the address inside it is a boot job).
    #[oai(
        path = "/guests/:id/ip",
        method = "put",
        operation_id = "guest_correct_ip"
    )]
    async fn correct_ip(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<CorrectIp>,
    ) -> ApiResult<Json<Guest>> {
        access::operator(&auth.0, "correcting a guest's recorded address")?;
        let g = access::guest(&state, &auth.0, &id).await?;
        let addr: std::net::Ipv4Addr = body
            .ip
            .parse()
            .map_err(|_| Error::BadRequest(format!("ip {:?} is not an IPv4 address", body.ip)))?;
        if g.ip.as_deref() == Some(body.ip.as_str()) {
            let disks = state.store.disks_of(&g.id).await?;
            return Ok(Json(view(&g, disks)));
        }
        let mut tx = state.store.begin().await?;
        if let Err(holder) = st::lock_guest(&mut tx, &g.id, "ip-correction").await? {
            return Err(Error::Conflict {
                message: format!("guest {} is busy with operation {holder}", g.name),
                details: Some(serde_json::json!({"operation_id": holder})),
            }
            .into());
        }
        let pools: Vec<st::PoolRow> = state.store.pools().await?;
        alloc::release_ips(&mut tx, &g.id)
            .await
            .map_err(Error::from)?;
        let (pool, ip) = alloc::lease_given(
            &mut tx,
            &pools,
            &addr.to_string(),
            alloc::Within::Ranges,
            &g.id,
        )
        .await
        .map_err(Error::from)?;
        st::set_guest_address(&mut tx, &g.id, &ip.to_string(), &pool.id).await?;
        st::unlock_guest(&mut tx, &g.id, "ip-correction").await?;
        st::events::append(
            &mut tx,
            "guest.ip",
            &g.id,
            &serde_json::json!({"guest_id": g.id, "ip": ip.to_string(), "previous": g.ip}),
        )
        .await?;
        state.store.commit(tx).await?;
        let g = state
            .store
            .guest(&g.id)
            .await?
            .ok_or_else(|| Error::not_found("guest", id.0.clone()))?;
        let disks = state.store.disks_of(&g.id).await?;
        Ok(Json(view(&g, disks)))
    }

    /// The guest's libvirt domain XML as its node last pushed it (S11).
    #[oai(
        path = "/guests/:id/domain-xml",
        method = "get",
        operation_id = "guest_domain_xml"
    )]
    async fn domain_xml(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Json<DomainXml>> {
        let g = access::guest(&state, &auth.0, &id).await?;
        Ok(Json(DomainXml { xml: g.domain_xml }))
    }

    /// Change a guest's NIC traffic limits (S54): applied live when it runs and kept in its
    /// definition. Send `{}` to remove all limits.
    #[oai(
        path = "/guests/:id/bandwidth",
        method = "put",
        operation_id = "guest_set_bandwidth"
    )]
    async fn set_bandwidth(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<Bandwidth>,
    ) -> ApiResult<OpResponse> {
        let g = access::guest(&state, &auth.0, &id).await?;
        body.validate()
            .map_err(|e| Error::BadRequest(format!("bandwidth: {e}")))?;
        if g.domain_xml.is_none() || g.state.owned_by_operation() {
            return Err(Error::Conflict {
                message: format!(
                    "guest {} is {}; its limits can change once it exists on a node",
                    g.name, g.state
                ),
                details: None,
            }
            .into());
        }
        let empty = body.inbound.is_none() && body.outbound.is_none();
        let req = Request::GuestSetBandwidth(set_bandwidth::Payload {
            bandwidth: (!empty).then(|| body.0.clone()),
        });
        Ok(submit(&state, &req, &g.id, Requester::user(&auth.0.user)).await?)
    }

    /// Power actions: start, shutdown, poweroff, reboot, reset, suspend, resume.
    #[oai(
        path = "/guests/:id/actions/:action",
        method = "post",
        operation_id = "guest_action"
    )]
    async fn action(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        action: Path<GuestAction>,
        /// For `shutdown`: seconds to wait for the guest to power off (default 120).
        #[oai(validator(maximum(value = "3600")))]
        timeout_secs: Query<Option<u64>>,
    ) -> ApiResult<OpResponse> {
        let g = access::guest(&state, &auth.0, &id).await?;
        if g.state.owned_by_operation() && g.lock_op.is_none() {
            return Err(Error::Conflict {
                message: format!(
                    "guest {} is in state {}; only delete is possible",
                    g.name, g.state
                ),
                details: None,
            }
            .into());
        }
        let power = match action.0 {
            GuestAction::Start => Power::Start,
            GuestAction::Shutdown => Power::Shutdown {
                timeout_secs: timeout_secs.0,
            },
            GuestAction::Poweroff => Power::Poweroff,
            GuestAction::Reboot => Power::Reboot,
            GuestAction::Reset => Power::Reset,
            GuestAction::Suspend => Power::Suspend,
            GuestAction::Resume => Power::Resume,
        };
        Ok(submit(
            &state,
            &power.request(),
            &g.id,
            Requester::user(&auth.0.user),
        )
        .await?)
    }
}

/// Runs the plugins' `before:guest.create` hooks: a refusal is a 422 naming the plugin;
/// the name and hostname may come back adjusted (the rest of the request is checked after).
fn plugin_before_create(state: &AppState, auth: &Auth, req: &mut CreateGuest) -> Result<(), Error> {
    let view = serde_json::json!({"name": req.name, "hostname": req.hostname, "template": req.template,
        "cpus": req.cpus, "memory_mib": req.memory_mib, "count": req.count, "node": req.node,
        "pool": req.pool, "ip": req.ip, "os_init_profile": req.os_init_profile,
        "requested_by": auth.0.name});
    let adjusted = state
        .plugins
        .before("guest.create", &view)
        .map_err(|e| Error::Unprocessable(e.to_string()))?;
    for (field, slot) in [("name", &mut req.name), ("hostname", &mut req.hostname)] {
        if adjusted[field] != view[field] {
            *slot = adjusted[field].as_str().map(String::from);
        }
    }
    Ok(())
}

fn default_limit() -> i64 {
    100
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn names() {
        assert!(valid_name("web-1"));
        for bad in ["", "Web", "1web", "web-", "we_b", &"a".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
