//! IP pools (S62, S81, S97): pools bound to a network, their ranges, every address with its
//! state (free, allocated, reserved, disabled), and changing those states.
//!
//! Reserved addresses are the blacklist (VIPs and the like, with a note): never handed out.
//! Disabled addresses are out of service. Neither can be set on an allocated address
//! (409): the guest holding it must give it up first.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::error::{ApiResult, Error};
use super::pages::{Cached, Clock};
use super::resources::{Created, Deleted};
use super::{access, AppState, Auth};
use crate::controller::alloc::{self, Holder};
use crate::controller::store::{leases, PoolRow};
use crate::model::{new_id, now_ms, rfc3339};

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    /// Network, e.g. `198.51.100.0/24`.
    pub cidr: String,
    /// First allocatable address of the first range.
    pub range_start: String,
    /// Last allocatable address of the first range.
    pub range_end: String,
    /// Default gateway: inside the network, outside the allocatable ranges.
    pub gateway: Option<String>,
    #[oai(default)]
    pub dns: Vec<String>,
    /// Bridge of the network the pool belongs to; guests taking an address from this pool
    /// attach to it. Empty: the node's `vm_network_bridge`.
    #[oai(default)]
    pub bridge: String,
    /// 802.1Q VLAN tag on that network, 1–4094 (needs an Open vSwitch bridge).
    pub vlan: Option<u16>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Range {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Pool {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub ranges: Vec<Range>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    pub bridge: String,
    pub vlan: Option<u16>,
    /// Allocatable addresses (the gateway excluded).
    pub size: u64,
    pub free: u64,
    pub used: u64,
    pub reserved: u64,
    pub disabled: u64,
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum AddressState {
    Free,
    Allocated,
    Reserved,
    Disabled,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Address {
    pub ip: String,
    pub state: AddressState,
    /// The guest holding it, when allocated.
    pub guest_id: Option<String>,
    /// Why it is reserved or disabled.
    pub note: Option<String>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct SetAddressState {
    /// First address.
    pub start: String,
    /// Last address (default: `start`); at most 65,536 addresses at once.
    pub end: Option<String>,
    /// `free` clears a reservation or re-enables; `reserved` or `disabled` takes addresses
    /// out of allocation. `allocated` is not accepted: guests allocate.
    pub state: AddressState,
    /// Why (shown with the address).
    #[oai(default)]
    pub note: String,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct StateChanged {
    pub changed: u64,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct AddRange {
    pub start: String,
    pub end: String,
}

fn parse_ip(field: &str, v: &str) -> Result<Ipv4Addr, Error> {
    v.parse()
        .map_err(|_| Error::BadRequest(format!("{field} {v:?} is not an IPv4 address")))
}

fn state_of(h: Option<&Holder>) -> AddressState {
    match h {
        None => AddressState::Free,
        Some(Holder::Guest(_)) => AddressState::Allocated,
        Some(Holder::Mark { state, .. }) if state == "reserved" => AddressState::Reserved,
        Some(Holder::Mark { .. }) => AddressState::Disabled,
    }
}

fn address(ip: Ipv4Addr, h: Option<&Holder>) -> Address {
    Address {
        ip: ip.to_string(),
        state: state_of(h),
        guest_id: match h {
            Some(Holder::Guest(g)) => Some(g.clone()),
            _ => None,
        },
        note: match h {
            Some(Holder::Mark { note, .. }) => Some(note.clone()),
            _ => None,
        },
    }
}

async fn view(state: &AppState, p: PoolRow) -> Result<Pool, Error> {
    let (range, stats) = alloc::pool_stats(&state.store, &p)
        .await
        .map_err(Error::from)?;
    Ok(Pool {
        dns: p.dns_list(),
        ranges: range
            .ranges
            .iter()
            .map(|(a, b)| Range {
                start: a.to_string(),
                end: b.to_string(),
            })
            .collect(),
        size: stats.size,
        free: stats.free(),
        used: stats.allocated,
        reserved: stats.reserved,
        disabled: stats.disabled,
        id: p.id,
        name: p.name,
        cidr: p.cidr,
        gateway: p.gateway,
        bridge: p.bridge,
        vlan: p.vlan.map(|v| v as u16),
        created_at: rfc3339(p.created_at),
    })
}

/// A range must lie in the network, be ordered, leave the gateway out, and not overlap
/// another range of any pool on the same network (bridge).
async fn check_range(
    state: &AppState,
    net: Ipv4Net,
    bridge: &str,
    gateway: Option<Ipv4Addr>,
    start: Ipv4Addr,
    end: Ipv4Addr,
) -> Result<(), Error> {
    if !net.contains(&start) || !net.contains(&end) {
        return Err(Error::BadRequest(format!(
            "range {start}-{end} must lie inside {net}"
        )));
    }
    if start > end {
        return Err(Error::BadRequest(format!(
            "range start {start} is after its end {end}"
        )));
    }
    if let Some(g) = gateway {
        if g >= start && g <= end {
            return Err(Error::BadRequest(format!(
                "gateway {g} must lie outside the allocatable range {start}-{end}"
            )));
        }
    }
    for other in state.store.pools().await? {
        if other.bridge != bridge {
            continue;
        }
        let r = alloc::load_pool(&state.store, &other)
            .await
            .map_err(Error::from)?;
        if let Some((a, b)) = r.ranges.iter().find(|(a, b)| start <= *b && *a <= end) {
            return Err(Error::Conflict {
                message: format!(
                    "range {start}-{end} overlaps pool {} ({a}-{b}) on the same network",
                    other.name
                ),
                details: None,
            });
        }
    }
    Ok(())
}

async fn pool_of(state: &AppState, id: &str) -> Result<PoolRow, Error> {
    state
        .store
        .pool_by(id)
        .await?
        .ok_or_else(|| Error::not_found("IP pool", id.to_string()))
}

/// One page of `p`'s addresses in list order (range by range, ascending, gateway
/// excluded), `offset` and `limit` counted among those in state `filter`.
async fn addresses_page(
    state: &AppState,
    p: &PoolRow,
    filter: Option<AddressState>,
    offset: u64,
    limit: usize,
) -> Result<Vec<Address>, Error> {
    let range = alloc::load_pool(&state.store, p)
        .await
        .map_err(Error::from)?;
    Ok(match filter {
        // The page's addresses are computed; only their holders are looked up.
        None => {
            let ips: Vec<Ipv4Addr> = range.addresses_from(offset).take(limit).collect();
            let held = alloc::holders_of(&state.store, &p.id, &ips)
                .await
                .map_err(Error::from)?;
            ips.into_iter()
                .map(|ip| address(ip, held.get(&ip)))
                .collect()
        }
        Some(AddressState::Free) => {
            let held = alloc::holders(&state.store, &p.id)
                .await
                .map_err(Error::from)?;
            range
                .addresses()
                .filter(|ip| !held.contains_key(ip))
                .skip(offset as usize)
                .take(limit)
                .map(|ip| address(ip, None))
                .collect()
        }
        // Held addresses in list order: range by range, ascending, gateway excluded.
        Some(want) => {
            let held = alloc::holders(&state.store, &p.id)
                .await
                .map_err(Error::from)?;
            range
                .ranges
                .iter()
                .flat_map(|(a, b)| held.range(*a..=*b))
                .filter(|(ip, h)| Some(**ip) != range.gateway && state_of(Some(h)) == want)
                .skip(offset as usize)
                .take(limit)
                .map(|(ip, h)| address(*ip, Some(h)))
                .collect()
        }
    })
}

/// For a user (`viewer` is their owner scope), drops the guest from addresses held by
/// guests that are not theirs: they see that the address is allocated, not by whom.
/// An admin (`None`) sees every holder.
async fn hide_others_guests(
    state: &AppState,
    viewer: Option<&str>,
    out: Vec<Address>,
) -> Result<Vec<Address>, Error> {
    let Some(me) = viewer else {
        return Ok(out);
    };
    let mine = state.store.guest_ids_of_owner(me).await?;
    Ok(out
        .into_iter()
        .map(|mut a| {
            if a.guest_id.as_ref().is_some_and(|g| !mine.contains(g)) {
                a.guest_id = None;
            }
            a
        })
        .collect())
}

pub struct PoolApi;

#[OpenApi(tag = "super::system::Tag::Resources")]
impl PoolApi {
    /// Create an IP pool on a network. Each error names the field at fault.
    #[oai(path = "/ip-pools", method = "post", operation_id = "pool_create")]
    async fn create(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        body: Json<CreatePool>,
    ) -> ApiResult<Created<Pool>> {
        access::admin(&auth.0, "creating a pool")?;
        let b = body.0;
        if !super::guests::valid_name(&b.name) {
            return Err(Error::BadRequest(format!("name {:?} is invalid", b.name)).into());
        }
        let net: Ipv4Net = b.cidr.parse().map_err(|_| {
            Error::BadRequest(format!(
                "cidr {:?} is not an IPv4 network like 198.51.100.0/24",
                b.cidr
            ))
        })?;
        let start = parse_ip("range_start", &b.range_start)?;
        let end = parse_ip("range_end", &b.range_end)?;
        let gateway = match &b.gateway {
            Some(g) => {
                let g = parse_ip("gateway", g)?;
                if !net.contains(&g) {
                    return Err(
                        Error::BadRequest(format!("gateway {g} must lie inside {net}")).into(),
                    );
                }
                Some(g)
            }
            None => None,
        };
        for d in &b.dns {
            parse_ip("dns", d)?;
        }
        if let Some(v) = b.vlan {
            if !(1..=4094).contains(&v) {
                return Err(Error::BadRequest(format!("vlan {v} must be 1–4094")).into());
            }
        }
        if !b.bridge.is_empty() && !super::guests::valid_ifname(&b.bridge) {
            return Err(Error::BadRequest(format!(
                "bridge {:?} is not a valid interface name",
                b.bridge
            ))
            .into());
        }
        check_range(&state, net, &b.bridge, gateway, start, end).await?;
        let row = PoolRow {
            id: new_id(),
            name: b.name.clone(),
            cidr: net.to_string(),
            range_start: start.to_string(),
            range_end: end.to_string(),
            gateway: gateway.map(|g| g.to_string()),
            dns: serde_json::to_string(&b.dns).unwrap_or_else(|_| "[]".into()),
            created_at: now_ms(),
            bridge: b.bridge,
            vlan: b.vlan.map(i64::from),
        };
        match state.store.insert_pool(&row).await {
            Err(e) if e.is_unique_violation() => Err(Error::Conflict {
                message: format!("a pool named {} already exists", b.name),
                details: None,
            }
            .into()),
            r => {
                r?;
                Ok(Created::Created(Json(view(&state, row).await?)))
            }
        }
    }

    #[oai(path = "/ip-pools", method = "get", operation_id = "pool_list")]
    async fn list(&self, _auth: Auth, state: Data<&AppState>) -> ApiResult<Json<Vec<Pool>>> {
        let mut out = Vec::new();
        for p in state.store.pools().await? {
            out.push(view(&state, p).await?);
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
        let p = pool_of(&state, &id).await?;
        Ok(Json(view(&state, p).await?))
    }

    /// Delete an IP pool; refused while any address is in use.
    #[oai(
        path = "/ip-pools/:id",
        method = "delete",
        operation_id = "pool_delete"
    )]
    async fn delete(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
    ) -> ApiResult<Deleted> {
        access::admin(&auth.0, "deleting a pool")?;
        let p = pool_of(&state, &id).await?;
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

    /// Add an allocatable range to a pool.
    #[oai(
        path = "/ip-pools/:id/ranges",
        method = "post",
        operation_id = "pool_add_range"
    )]
    async fn add_range(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<AddRange>,
    ) -> ApiResult<Json<Pool>> {
        access::admin(&auth.0, "changing a pool's ranges")?;
        let p = pool_of(&state, &id).await?;
        let net: Ipv4Net = p
            .cidr
            .parse()
            .map_err(|_| Error::Unprocessable(format!("pool {} has a bad cidr", p.name)))?;
        let start = parse_ip("start", &body.start)?;
        let end = parse_ip("end", &body.end)?;
        let gateway = p.gateway.as_deref().and_then(|g| g.parse().ok());
        check_range(&state, net, &p.bridge, gateway, start, end).await?;
        leases::insert_range(&state.store, &p.id, &start.to_string(), &end.to_string()).await?;
        Ok(Json(view(&state, p).await?))
    }

    /// Every address of the pool's ranges with its state, in order; filter by state. A user
    /// sees which guest holds an address only for their own guests; another's address
    /// reads `allocated`, with no guest.
    #[oai(
        path = "/ip-pools/:id/addresses",
        method = "get",
        operation_id = "pool_addresses"
    )]
    async fn addresses(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        #[oai(name = "state")] filter: Query<Option<AddressState>>,
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "4096"))
        )]
        limit: Query<u64>,
        #[oai(default)] offset: Query<u64>,
    ) -> ApiResult<Cached<Vec<Address>>> {
        let viewer = auth.0.owner_scope().map(str::to_string);
        let key = format!(
            "addresses/{}?{:?}&{}&{}&{}",
            id.0,
            filter.0,
            limit.0,
            offset.0,
            access::view_key(&auth.0)
        );
        let tables = ["ip_pools", "ip_ranges", "ip_leases", "ip_marks", "guests"];
        state
            .pages
            .page(key, &tables, async {
                let p = pool_of(&state, &id).await?;
                let out = addresses_page(&state, &p, filter.0, offset.0, limit.0 as usize).await?;
                let out = hide_others_guests(&state, viewer.as_deref(), out).await?;
                Ok((out, Clock::Independent))
            })
            .await
    }

    /// Reserve (blacklist, S97), disable (S81) or free / re-enable an address or a range of
    /// addresses. All or nothing: an allocated address in the range refuses the whole
    /// change with 409.
    #[oai(
        path = "/ip-pools/:id/addresses/state",
        method = "post",
        operation_id = "pool_set_address_state"
    )]
    async fn set_state(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        body: Json<SetAddressState>,
    ) -> ApiResult<Json<StateChanged>> {
        access::admin(&auth.0, "reserving or disabling addresses")?;
        let p = pool_of(&state, &id).await?;
        let net: Ipv4Net = p
            .cidr
            .parse()
            .map_err(|_| Error::Unprocessable(format!("pool {} has a bad cidr", p.name)))?;
        let start = parse_ip("start", &body.start)?;
        let end = match &body.end {
            Some(e) => parse_ip("end", e)?,
            None => start,
        };
        if start > end || !net.contains(&start) || !net.contains(&end) {
            return Err(Error::BadRequest(format!(
                "{start}-{end} must be an ordered range inside {net}"
            ))
            .into());
        }
        let count = u64::from(u32::from(end)) - u64::from(u32::from(start)) + 1;
        if count > 65_536 {
            return Err(
                Error::BadRequest(format!("{count} addresses at once; at most 65536")).into(),
            );
        }
        let mark = match body.state {
            AddressState::Allocated => {
                return Err(Error::BadRequest(
                    "state allocated cannot be set: guests allocate addresses".into(),
                )
                .into())
            }
            AddressState::Free => None,
            AddressState::Reserved => Some("reserved"),
            AddressState::Disabled => Some("disabled"),
        };
        let ips: Vec<String> = (u32::from(start)..=u32::from(end))
            .map(|a| Ipv4Addr::from(a).to_string())
            .collect();
        let mut tx = state.store.begin().await?;
        let mut held = leases::leased_among(&mut tx, &ips).await?;
        held.sort();
        if let Some((ip, guest)) = held.first() {
            return Err(Error::Conflict {
                message: format!("{ip} is allocated to guest {guest}; delete the guest or change its address first"),
                details: Some(serde_json::json!({"ip": ip, "guest_id": guest, "allocated_in_range": held.len()})),
            }
            .into());
        }
        let mut changed = 0;
        for ip in &ips {
            let m = mark.map(|m| (m, body.note.as_str()));
            changed += u64::from(leases::set_mark(&mut tx, ip, &p.id, m).await?);
        }
        state.store.commit(tx).await?;
        Ok(Json(StateChanged { changed }))
    }
}

fn default_limit() -> u64 {
    256
}
