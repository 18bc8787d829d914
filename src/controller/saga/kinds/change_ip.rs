//! Changing a guest's IP (S63) as one `guest.change_ip` operation, so the record, the
//! guest's network configuration and the pool change together or not at all:
//!
//! 1. `reserve` (controller): lease the new address: the next free one of the guest's pool,
//!    or the one asked for, refused when any guest holds it or it is reserved or disabled.
//!    Undo releases it.
//! 2. `refresh_seed` (node): rebuild the seed with the new address. Undo rebuilds it from
//!    the record (the old address).
//! 3. `apply` (node, only when the guest runs): the shipped `change-ip` boot script through
//!    the guest agent: the interface found by MAC moves to the new address, and the
//!    persistent network files corral's profiles wrote follow. Undo moves it back.
//! 4. `commit` (controller): the record takes the new address and the old lease is dropped.
//!    The old address becomes allocatable again only if it lies inside the pool's ranges
//!    (an address set by hand outside them is simply forgotten). A guest that is not
//!    running gets the `change-ip` boot job for its next boot instead of step 3.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::alloc;
use crate::controller::saga::initplan::{guest_facts, script_source};
use crate::controller::saga::kinds::boot_jobs::refresh_seed_action;
use crate::controller::saga::steps::{guest_of, StepError};
use crate::controller::store::{self as st, events, GuestRow, OpRow, StoreError, Tx};
use crate::model::{AgentBatch, GuestState, NodeAction};
use crate::script::catalog::Kind as ScriptKind;

/// Payload of `guest.change_ip`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeIpPayload {
    /// The address asked for; None: the next free one of the guest's pool.
    #[serde(default)]
    pub address: Option<String>,
    /// Filled by `reserve`: the leased address and its pool.
    #[serde(default)]
    pub new_ip: Option<String>,
    #[serde(default)]
    pub pool_id: Option<String>,
}

super::steps! {
    pub enum Step {
        Reserve = StepDef::controller("reserve", "leasing the new address").undoable(),
        RefreshSeed = StepDef::node("refresh_seed", "rebuilding the init seed").undoable(),
        Apply = StepDef::node("apply", "changing the address in the guest").undoable().weight(3).lease_secs(420),
        Commit = StepDef::controller("commit", "recording"),
    }
}

/// The payload as `reserve` left it in the row (it records the leased address there).
fn payload(op: &OpRow) -> Result<ChangeIpPayload, StepError> {
    serde_json::from_str(&op.payload)
        .map_err(|e| StepError::failed("payload of guest.change_ip is corrupt", e))
}

/// `guest.change_ip`: move a guest to another IP address: lease, seed, live change, record.
pub struct ChangeIp;

impl Kind for ChangeIp {
    const NAME: &'static str = "guest.change_ip";
    const DESCRIPTION: &'static str =
        "Move a guest to another IP address: lease, seed, live change, record.";
    type Payload = ChangeIpPayload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        _p: &ChangeIpPayload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let g = guest_of(cx.tx, cx.op).await?;
        let action = match (step, undo) {
            (Step::Reserve, false) => {
                reserve(cx.tx, cx.op, &g).await?;
                None
            }
            (Step::Reserve, true) => {
                unreserve(cx.tx, cx.op, &g).await?;
                None
            }
            (Step::RefreshSeed, undo) => {
                // Forward: the seed for the new address; undo: from the record (the old one).
                let new = if undo { None } else { new_address(cx.op)? };
                let ip = new.as_ref().map(|(i, p)| (i.as_str(), p.as_str()));
                refresh_seed_action(cx.tx, &g, ip).await?
            }
            (Step::Apply, undo) => apply_action(cx.tx, cx.op, &g, undo).await?,
            (Step::Commit, false) => {
                commit(cx.tx, cx.op, &g).await?;
                None
            }
            (Step::Commit, true) => None,
        };
        Ok(super::on_guest_node(&g, action))
    }
}

async fn reserve(tx: &mut Tx<'_>, op: &mut OpRow, g: &GuestRow) -> Result<(), StepError> {
    let mut p = payload(op)?;
    if p.new_ip.is_some() {
        return Ok(()); // already reserved by an earlier run of this step
    }
    let pools = st::pools_in(tx).await?;
    let (pool, ip) = match &p.address {
        Some(addr) => {
            // The NIC stays where it is: only pools on the guest's network qualify.
            let net = pools
                .iter()
                .find(|p| Some(&p.id) == g.pool_id.as_ref())
                .map(|p| (p.bridge.clone(), p.vlan));
            let same: Vec<st::PoolRow> = pools
                .iter()
                .filter(|p| {
                    net.as_ref()
                        .is_none_or(|n| *n == (p.bridge.clone(), p.vlan))
                })
                .cloned()
                .collect();
            let (pool, ip) =
                alloc::lease_given(tx, &same, addr, alloc::Within::Network, &g.id).await?;
            (pool.id, ip.to_string())
        }
        None => {
            let own: Vec<st::PoolRow> = pools
                .into_iter()
                .filter(|x| Some(&x.id) == g.pool_id.as_ref())
                .collect();
            if own.is_empty() {
                return Err(StepError::Permanent(format!(
                    "guest {} has no IP pool: give an address",
                    g.name
                )));
            }
            let (pool, ip) = alloc::allocate_ip(tx, &own, None, &g.id).await?;
            (pool.id, ip.to_string())
        }
    };
    p.new_ip = Some(ip);
    p.pool_id = Some(pool);
    op.payload = serde_json::to_string(&p).map_err(StoreError::from)?;
    Ok(())
}

async fn unreserve(tx: &mut Tx<'_>, op: &OpRow, g: &GuestRow) -> Result<(), StepError> {
    if let Some(ip) = payload(op)?.new_ip.filter(|ip| Some(ip) != g.ip.as_ref()) {
        alloc::release_ip(tx, &ip, &g.id).await?;
    }
    Ok(())
}

/// The new address and its pool, once reserved.
fn new_address(op: &OpRow) -> Result<Option<(String, String)>, StepError> {
    let p = payload(op)?;
    Ok(p.new_ip.zip(p.pool_id))
}

/// The `change-ip` boot script's actions, moving the guest from `from` to `to`.
/// The `change-ip` batch: the script (possibly an administrator's version) with its
/// parameters and the guest's facts, evaluated by the node, never in this transaction.
async fn change_ip_batch(
    tx: &mut Tx<'_>,
    g: &GuestRow,
    to: (&str, &str),
    from: Option<(&str, &str)>,
) -> Result<AgentBatch, StepError> {
    let params = change_ip_params(tx, g, to, from).await?;
    let source = script_source(tx, ScriptKind::Boot, "change-ip")
        .await?
        .unwrap_or_default();
    let facts = guest_facts(tx, g, Some(to)).await?;
    Ok(AgentBatch {
        id: "change-ip".into(),
        actions: Vec::new(),
        script: Some(Box::new(crate::model::BatchScript {
            name: "change-ip".into(),
            source,
            params,
            facts,
        })),
    })
}

/// The parameters of the shipped `change-ip` script.
pub async fn change_ip_params(
    tx: &mut Tx<'_>,
    g: &GuestRow,
    to: (&str, &str),
    from: Option<(&str, &str)>,
) -> Result<serde_json::Value, StepError> {
    let new = guest_facts(tx, g, Some(to)).await?;
    let old = match from {
        Some(f) => guest_facts(tx, g, Some(f)).await?.address,
        None => None,
    };
    Ok(serde_json::json!({
        "address": new.address, "old_address": old, "gateway": new.gateway,
        "dns": new.dns, "mac": g.mac,
    }))
}

/// `apply` forward (`undo` false) or back: None when the guest does not run.
async fn apply_action(
    tx: &mut Tx<'_>,
    op: &OpRow,
    g: &GuestRow,
    undo: bool,
) -> Result<Option<NodeAction>, StepError> {
    let (Some((ip, pool)), Some(old_ip), Some(old_pool)) =
        (new_address(op)?, g.ip.clone(), g.pool_id.clone())
    else {
        return Ok(None);
    };
    if g.state != GuestState::Running {
        return Ok(None);
    }
    let (to, from) = if undo {
        (
            (old_ip.as_str(), old_pool.as_str()),
            (ip.as_str(), pool.as_str()),
        )
    } else {
        (
            (ip.as_str(), pool.as_str()),
            (old_ip.as_str(), old_pool.as_str()),
        )
    };
    let batch = change_ip_batch(tx, g, to, Some(from)).await?;
    Ok(Some(NodeAction::AgentRun {
        guest_id: g.id.clone(),
        batches: vec![batch],
        wait_secs: 30,
        strict: !undo,
    }))
}

async fn commit(tx: &mut Tx<'_>, op: &OpRow, g: &GuestRow) -> Result<(), StepError> {
    let Some((ip, pool)) = new_address(op)? else {
        return Err(StepError::Permanent("no address was reserved".into()));
    };
    let old = g.ip.clone();
    // A guest that is not running still uses its old address until its next boot runs the
    // change-ip job: the old lease is kept until that job is done (`bootjobs::complete`),
    // so the pool cannot hand the address to another guest meanwhile.
    let running = g.state == GuestState::Running;
    if let (Some(old), true) = (&old, running) {
        if *old != ip {
            alloc::release_ip(tx, old, &g.id).await?;
        }
    }
    let returned = running
        && match (&old, &g.pool_id) {
            (Some(old), Some(pid)) => match st::pool_in(tx, pid).await? {
                Some(p) => {
                    let range = alloc::PoolRange::load(tx, &p).await?;
                    old.parse().map(|a| range.contains(a)).unwrap_or(false)
                }
                None => false,
            },
            _ => false,
        };
    st::set_guest_address(tx, &g.id, &ip, &pool).await?;
    // A guest that is not running learns its new address at its next boot.
    let queued = if g.state != GuestState::Running {
        let (Some(old_ip), Some(old_pool)) = (old.clone(), g.pool_id.clone()) else {
            return Ok(());
        };
        let params = change_ip_params(
            tx,
            g,
            (ip.as_str(), pool.as_str()),
            Some((old_ip.as_str(), old_pool.as_str())),
        )
        .await?;
        let by = st::Requester {
            id: op.requested_by_id.as_deref(),
            name: &op.requested_by,
        };
        let mut job = st::BootJobRow::pending(&g.id, "change-ip", &params, true, by);
        job.source =
            crate::script::catalog::shipped(ScriptKind::Boot, "change-ip").map(String::from);
        st::insert_boot_job(tx, &job).await?;
        Some(job.id)
    } else {
        None
    };
    events::append(
        tx,
        "guest.ip",
        &g.id,
        &serde_json::json!({"guest_id": g.id, "ip": ip, "pool_id": pool, "old_ip": old,
                            "old_ip_returned_to_pool": returned, "boot_job_id": queued}),
    )
    .await?;
    Ok(())
}
