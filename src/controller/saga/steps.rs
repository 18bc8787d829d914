//! How each declared step runs: controller steps (inside the engine's transaction) and the
//! node action each node step dispatches, forward and undo.

use serde::{Deserialize, Serialize};

use super::initplan::plan_for;
use crate::controller::alloc::{self, AllocError};
use crate::controller::store::{self as st, GuestRow, OpRow, StoreError, Tx};
use crate::guestinit::Delivery;
use crate::model::AgentBatch;
use crate::model::{new_id, now_ms, DomainSpec, NodeAction, NodeFacts};

/// Payload of `guest.set_bandwidth`: the new limits (None: unlimited).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BandwidthPayload {
    pub bandwidth: Option<crate::model::Bandwidth>,
}

/// Payload of `node.remove`: what happens to the records of the node's guests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemoveNodePayload {
    /// Delete the guests' records (and disk records, leases) with the node; otherwise keep
    /// them, reading `unknown`, ready for the node's return under the same id.
    pub delete_guests: bool,
}

/// Payload of the power operations.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PowerPayload {
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Retry later without failing the step (database busy, node not registered yet).
    #[error("{0}")]
    Transient(String),
    /// The step cannot succeed: fail it and unwind.
    #[error("{0}")]
    Permanent(String),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Transient(e.to_string())
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        StepError::Transient(e.to_string())
    }
}

impl From<AllocError> for StepError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::Store(s) => StepError::Transient(s.to_string()),
            other => StepError::Permanent(other.to_string()),
        }
    }
}

/// Controller settings the steps need.
pub struct StepEnv {
    pub vnc_port_min: u16,
    pub vnc_port_max: u16,
    /// How long a create waits for a node to appear before giving up.
    pub placement_grace_ms: i64,
    pub thresholds: crate::controller::placement::Thresholds,
    /// OS-init profiles and boot scripts.
    pub scripts: std::sync::Arc<crate::script::Scripts>,
    pub plugins: std::sync::Arc<crate::controller::plugins::Plugins>,
}

fn system_disk_path(storage_dir: &str, guest: &str) -> String {
    format!("{}/{guest}.qcow2", storage_dir.trim_end_matches('/'))
}

fn seed_path(storage_dir: &str, guest: &str) -> String {
    format!("{}/{guest}-seed.iso", storage_dir.trim_end_matches('/'))
}

async fn guest_of(tx: &mut Tx<'_>, op: &OpRow) -> Result<GuestRow, StepError> {
    let id = op.guest_id.as_deref().unwrap_or_default();
    st::guest_in(tx, id)
        .await?
        .ok_or_else(|| StepError::Permanent(format!("guest {id} no longer exists")))
}

async fn node_facts(
    tx: &mut Tx<'_>,
    node: &str,
) -> Result<Option<(bool, bool, NodeFacts)>, StepError> {
    let row: Option<(bool, bool, String)> =
        sqlx::query_as("SELECT online, accept_auto, facts FROM nodes WHERE id = ?")
            .bind(node)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.map(|(o, a, f)| (o, a, serde_json::from_str(&f).unwrap_or_default())))
}

/// Runs controller step `name` of `op` (forward or undo) inside `tx`.
pub async fn run_controller(
    tx: &mut Tx<'_>,
    env: &StepEnv,
    op: &mut OpRow,
    name: &str,
    undo: bool,
) -> Result<(), StepError> {
    if name == "remove_node" {
        return remove_node(tx, op).await;
    }
    let mut g = guest_of(tx, op).await?;
    match (name, undo) {
        ("place", false) => {
            let node = place(tx, env, op, &g).await?;
            sqlx::query("UPDATE guests SET node_id = ?, updated_at = ? WHERE id = ?")
                .bind(&node)
                .bind(now_ms())
                .bind(&g.id)
                .execute(&mut **tx)
                .await?;
            op.node_id = Some(node);
        }
        ("place", true) => {
            sqlx::query("UPDATE guests SET node_id = NULL WHERE id = ?")
                .bind(&g.id)
                .execute(&mut **tx)
                .await?;
        }
        ("allocate", false) => allocate(tx, env, &mut g).await?,
        ("allocate", true) | ("release", true) => {
            alloc::release_all(tx, &g.id).await?;
            sqlx::query("DELETE FROM disks WHERE guest_id = ?")
                .bind(&g.id)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "UPDATE guests SET ip = NULL, vnc_port = NULL, vnc_password = NULL, mac = NULL WHERE id = ?",
            )
            .bind(&g.id)
            .execute(&mut **tx)
            .await?;
        }
        ("claim", false) => super::bootjobs::claim(tx, &env.scripts, op, &g).await?,
        ("claim", true) => super::bootjobs::unclaim(tx, op).await?,
        ("complete", false) => super::bootjobs::complete(tx, op, &g).await?,
        ("reserve", false) => super::changeip::reserve(tx, op, &g).await?,
        ("reserve", true) => super::changeip::unreserve(tx, op, &g).await?,
        ("commit", false) => super::changeip::commit(tx, op, &g).await?,
        ("finish", _) => {
            sqlx::query("UPDATE guests SET state = 'running', updated_at = ? WHERE id = ? AND state = 'creating'")
                .bind(now_ms())
                .bind(&g.id)
                .execute(&mut **tx)
                .await?;
        }
        ("record_bandwidth", false) => {
            let p: BandwidthPayload = serde_json::from_str(&op.payload).unwrap_or_default();
            let json = p
                .bandwidth
                .map(|b| serde_json::to_string(&b))
                .transpose()
                .map_err(StoreError::from)?;
            sqlx::query("UPDATE guests SET bandwidth = ?, updated_at = ? WHERE id = ?")
                .bind(json)
                .bind(now_ms())
                .bind(&g.id)
                .execute(&mut **tx)
                .await?;
        }
        ("release", false) => {
            alloc::release_all(tx, &g.id).await?;
            st::delete_guest(tx, &g.id).await?;
        }
        _ => return Err(StepError::Permanent(format!("no controller step {name}"))),
    }
    Ok(())
}

/// Removes a node row; with `delete_guests`, its guests' records, disks and leases too.
/// Files on an unreachable node cannot be deleted from here: the event lists them.
async fn remove_node(tx: &mut Tx<'_>, op: &OpRow) -> Result<(), StepError> {
    let node = op.node_id.clone().unwrap_or_default();
    let p: RemoveNodePayload = serde_json::from_str(&op.payload).unwrap_or_default();
    let row: Option<(bool,)> = sqlx::query_as("SELECT online FROM nodes WHERE id = ?")
        .bind(&node)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((online,)) = row else {
        return Err(StepError::Permanent(format!(
            "node {node} is not registered"
        )));
    };
    let guests: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT id, name, lock_op FROM guests WHERE node_id = ?")
            .bind(&node)
            .fetch_all(&mut **tx)
            .await?;
    if online && !guests.is_empty() {
        return Err(StepError::Permanent(format!(
            "node {node} is online with {} guest(s): delete or move them first, or stop the node",
            guests.len()
        )));
    }
    if let Some((_, name, Some(holder))) = guests.iter().find(|g| g.2.is_some()) {
        return Err(StepError::Permanent(format!(
            "guest {name} is busy with operation {holder}"
        )));
    }
    let mut left_files = Vec::new();
    if p.delete_guests {
        for (id, _, _) in &guests {
            let disks = st::disks_of_in(tx, id).await?;
            left_files.extend(disks.into_iter().map(|d| d.path));
            alloc::release_all(tx, id).await?;
            st::delete_guest(tx, id).await?;
            st::events::append(
                tx,
                "guest.state",
                id,
                &serde_json::json!({"guest_id": id, "state": "deleted"}),
            )
            .await?;
        }
    }
    sqlx::query("DELETE FROM nodes WHERE id = ?")
        .bind(&node)
        .execute(&mut **tx)
        .await?;
    st::events::append(
        tx,
        "node.state",
        &node,
        &serde_json::json!({"node_id": node, "removed": true, "guests_deleted": p.delete_guests,
                            "guests": guests.len(), "files_left_on_node": left_files}),
    )
    .await?;
    Ok(())
}

/// Chooses the node (see `controller::placement`). Waiting for a node that is not there
/// yet is transient for a grace period (a fresh `corral up`, a node restarting); a node
/// that is there but cannot take the guest is a permanent refusal naming the reason.
async fn place(
    tx: &mut Tx<'_>,
    env: &StepEnv,
    op: &OpRow,
    g: &GuestRow,
) -> Result<String, StepError> {
    use crate::controller::placement::{self, Candidate, PlaceError};
    let rows: Vec<(String, String, bool, bool, i64, i64, i64)> = sqlx::query_as(
        "SELECT n.id, n.facts, n.online, n.accept_auto, \
           (SELECT COALESCE(SUM(memory_mib), 0) FROM guests WHERE node_id = n.id AND state != 'error'), \
           (SELECT COALESCE(SUM(cpus), 0) FROM guests WHERE node_id = n.id AND state != 'error'), \
           (SELECT COUNT(*) FROM guests WHERE node_id = n.id) \
         FROM nodes n ORDER BY n.id",
    )
    .fetch_all(&mut **tx)
    .await?;
    let candidates: Vec<Candidate> = rows
        .into_iter()
        .map(|(id, facts, online, accept_auto, mem, vcpus, guests)| {
            let f: NodeFacts = serde_json::from_str(&facts).unwrap_or_default();
            Candidate {
                id,
                online,
                accept_auto,
                cpus: f.cpus.max(1),
                memory_mib: f.memory_mib,
                load1: f.load1,
                cpu_overcommit: f.cpu_overcommit.unwrap_or(16.0),
                memory_overcommit: f.memory_overcommit.unwrap_or(1.0),
                used_memory_mib: mem.max(0) as u64,
                used_vcpus: vcpus.max(0) as u64,
                guests: guests.max(0) as u64,
                // Nodes that list their bridges are held to them.
                bridges: (!f.bridges.is_empty()).then_some(f.bridges),
            }
        })
        .collect();
    let young = now_ms() - op.created_at < env.placement_grace_ms;
    let pool_bridge = match &g.pool_id {
        Some(p) => st::pool_in(tx, p)
            .await?
            .map(|p| p.bridge)
            .filter(|b| !b.is_empty()),
        None => None,
    };
    let need = placement::Need {
        memory_mib: g.memory_mib as u64,
        cpus: g.cpus as u64,
        bridge: pool_bridge.as_deref(),
    };
    let request = serde_json::json!({"guest_id": g.id, "name": g.name, "cpus": g.cpus,
        "memory_mib": g.memory_mib, "pool_id": g.pool_id, "template_id": g.template_id,
        "os_type": g.os_type});
    let opinions = |eligible: &[&Candidate]| plugin_opinions(&env.plugins, &request, eligible);
    match placement::place_with(
        &candidates,
        need,
        g.requested_node.as_deref(),
        &env.thresholds,
        opinions,
    ) {
        Ok(node) => Ok(node),
        Err(PlaceError::NoNodes) if young => Err(StepError::Transient(
            "waiting for a node to register".into(),
        )),
        Err(PlaceError::Refused(r)) if young && r.iter().all(|r| r.reason == "offline") => Err(
            StepError::Transient("waiting for a node to come online".into()),
        ),
        Err(e) => Err(StepError::Permanent(e.to_string())),
    }
}

/// Placement plugins' verdicts on the eligible nodes (all zero without plugins).
fn plugin_opinions(
    plugins: &crate::controller::plugins::Plugins,
    request: &serde_json::Value,
    eligible: &[&crate::controller::placement::Candidate],
) -> Result<Vec<crate::controller::placement::Opinion>, String> {
    use crate::controller::placement::Opinion;
    use crate::controller::plugins::Verdict;
    if !plugins.has_placement() {
        return Ok(vec![Opinion::Score(0.0); eligible.len()]);
    }
    let nodes: Vec<serde_json::Value> = eligible
        .iter()
        .map(|c| {
            serde_json::json!({"id": c.id, "cpus": c.cpus, "memory_mib": c.memory_mib,
                "used_memory_mib": c.used_memory_mib, "used_vcpus": c.used_vcpus,
                // What the node has left for guests: its memory less what its guests have.
                "free_memory_mib": c.memory_mib.saturating_sub(c.used_memory_mib),
                "guests": c.guests, "load1": c.load1})
        })
        .collect();
    let verdicts = plugins.score(request, &nodes).map_err(|e| e.to_string())?;
    Ok(verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Score(s) => Opinion::Score(s),
            Verdict::Veto { plugin, reason } => Opinion::Veto(format!("plugin {plugin}: {reason}")),
        })
        .collect())
}

async fn allocate(tx: &mut Tx<'_>, env: &StepEnv, g: &mut GuestRow) -> Result<(), StepError> {
    let node = g
        .node_id
        .clone()
        .ok_or_else(|| StepError::Permanent("guest has no node".into()))?;
    let Some((_, _, facts)) = node_facts(tx, &node).await? else {
        return Err(StepError::Permanent(format!(
            "node {node} is not registered"
        )));
    };
    // Pools: the requested one, else every pool in name order; no pools at all means DHCP.
    let pools: Vec<st::PoolRow> = match &g.pool_id {
        Some(p) => st::pool_in(tx, p).await?.into_iter().collect(),
        None => sqlx::query_as(
            "SELECT id, name, cidr, range_start, range_end, gateway, dns, created_at, bridge, vlan \
             FROM ip_pools ORDER BY name",
        )
        .fetch_all(&mut **tx)
        .await?,
    };
    let (pool_id, ip) = if pools.is_empty() {
        if g.requested_ip.is_some() {
            return Err(StepError::Permanent(
                "an IP was requested but no IP pool exists".into(),
            ));
        }
        (None, None)
    } else {
        let (pool, ip) = alloc::allocate_ip(tx, &pools, g.requested_ip.as_deref(), &g.id).await?;
        (Some(pool.id), Some(ip.to_string()))
    };
    // The node's own range when it reports one (allocation is per node).
    let (vmin, vmax) = facts
        .vnc_ports
        .unwrap_or((env.vnc_port_min, env.vnc_port_max));
    let port = alloc::allocate_vnc(tx, &node, vmin, vmax, &g.id).await?;
    let mac = alloc::allocate_mac(tx, &g.id).await?;
    let vnc_password = random_secret(8);
    sqlx::query(
        "UPDATE guests SET pool_id = ?, ip = ?, vnc_port = ?, vnc_password = ?, mac = ?, updated_at = ? WHERE id = ?",
    )
    .bind(&pool_id)
    .bind(&ip)
    .bind(i64::from(port))
    .bind(&vnc_password)
    .bind(&mac)
    .bind(now_ms())
    .bind(&g.id)
    .execute(&mut **tx)
    .await?;
    let now = now_ms();
    for (kind, path, backing) in [
        (
            "system",
            system_disk_path(&facts.storage_dir, &g.id),
            Some(g.template_path.clone()),
        ),
        ("seed", seed_path(&facts.storage_dir, &g.id), None),
    ] {
        st::insert_disk(
            tx,
            &st::DiskRow {
                id: new_id(),
                guest_id: Some(g.id.clone()),
                node_id: node.clone(),
                path,
                kind: kind.into(),
                backing,
                created_at: now,
            },
        )
        .await?;
    }
    Ok(())
}

pub fn random_secret(len: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// The node and action of node step `name` (forward or undo). `None`: nothing to do
/// (the guest never reached a node, or the step has no undo), so the step is skipped.
pub async fn node_action(
    tx: &mut Tx<'_>,
    env: &StepEnv,
    op: &OpRow,
    name: &str,
    undo: bool,
) -> Result<Option<(String, NodeAction)>, StepError> {
    let g = guest_of(tx, op).await?;
    let Some(node) = g.node_id.clone() else {
        return Ok(None);
    };
    let disks = st::disks_of_in(tx, &g.id).await?;
    let disk = |kind: &str| {
        disks
            .iter()
            .find(|d| d.kind == kind)
            .map(|d| d.path.clone())
    };
    let id = g.id.clone();
    let action = match (name, undo) {
        ("create_disk", false) => NodeAction::CreateDisk {
            path: disk("system")
                .ok_or_else(|| StepError::Permanent("no system disk recorded".into()))?,
            template_path: g.template_path.clone(),
        },
        ("build_seed", false) => NodeAction::BuildSeed {
            path: disk("seed").ok_or_else(|| StepError::Permanent("no seed recorded".into()))?,
            plan: Box::new(plan_for(tx, &env.scripts, &g, None).await?),
            replace: false,
        },
        ("agent_init", false) => {
            // Images without cloud-init get the plan through the guest agent.
            let plan = plan_for(tx, &env.scripts, &g, None).await?;
            if plan.delivery != Delivery::Agent {
                return Ok(None);
            }
            NodeAction::AgentRun {
                guest_id: id,
                batches: vec![AgentBatch {
                    id: "init".into(),
                    actions: plan.agent_actions(),
                }],
                wait_secs: 600,
                strict: true,
            }
        }
        ("run", false) => match super::bootjobs::run_action(tx, op, &g).await? {
            Some(a) => a,
            None => return Ok(None),
        },
        ("refresh_seed", undo) => {
            // An IP change builds the seed for the new address; its undo, and every other
            // rebuild, from the record.
            let new = (op.kind == "guest.change_ip" && !undo)
                .then(|| super::changeip::new_address(op))
                .flatten();
            let ip = new.as_ref().map(|(i, p)| (i.as_str(), p.as_str()));
            match super::bootjobs::refresh_seed_action(tx, &env.scripts, &g, ip).await? {
                Some(a) => a,
                None => return Ok(None),
            }
        }
        ("apply", undo) => {
            match super::changeip::apply_action(tx, &env.scripts, op, &g, undo).await? {
                Some(a) => a,
                None => return Ok(None),
            }
        }
        ("define", false) => NodeAction::Define {
            spec: Box::new(domain_spec(tx, &g, &node, &disks, g.bandwidth()).await?),
        },
        ("update_interface", false) => {
            let p: BandwidthPayload = serde_json::from_str(&op.payload).unwrap_or_default();
            NodeAction::UpdateInterface {
                spec: Box::new(domain_spec(tx, &g, &node, &disks, p.bandwidth).await?),
            }
        }
        ("create_disk", true) | ("remove_disk", false) => match disk("system") {
            Some(path) => NodeAction::RemoveFile { path },
            None => return Ok(None),
        },
        ("build_seed", true) | ("remove_seed", false) => match disk("seed") {
            Some(path) => NodeAction::RemoveFile { path },
            None => return Ok(None),
        },
        ("define", true) | ("undefine", false) => NodeAction::Undefine { guest_id: id },
        ("start", true) | ("destroy", false) | ("poweroff", false) => {
            NodeAction::Destroy { guest_id: id }
        }
        ("start", false) => NodeAction::Start { guest_id: id },
        ("shutdown", false) => {
            let p: PowerPayload = serde_json::from_str(&op.payload).unwrap_or_default();
            NodeAction::Shutdown {
                guest_id: id,
                timeout_secs: p.timeout_secs.unwrap_or(120),
            }
        }
        ("reboot", false) => NodeAction::Reboot { guest_id: id },
        ("reset", false) => NodeAction::Reset { guest_id: id },
        ("suspend", false) => NodeAction::Suspend { guest_id: id },
        ("resume", false) => NodeAction::Resume { guest_id: id },
        _ => return Ok(None),
    };
    Ok(Some((node, action)))
}

/// The domain a guest's row describes, on `node`, with NIC limits `bandwidth`.
async fn domain_spec(
    tx: &mut Tx<'_>,
    g: &GuestRow,
    node: &str,
    disks: &[st::DiskRow],
    bandwidth: Option<crate::model::Bandwidth>,
) -> Result<DomainSpec, StepError> {
    // The pool's network decides the bridge; without one, the node's default.
    let (bridge, vlan): (String, Option<u16>) = match &g.pool_id {
        Some(p) => st::pool_in(tx, p)
            .await?
            .map(|p| (p.bridge, p.vlan.map(|v| v as u16)))
            .unwrap_or_default(),
        None => Default::default(),
    };
    let Some((_, _, facts)) = node_facts(tx, node).await? else {
        return Err(StepError::Permanent(format!(
            "node {node} is not registered"
        )));
    };
    let disk = |kind: &str| {
        disks
            .iter()
            .find(|d| d.kind == kind)
            .map(|d| d.path.clone())
    };
    Ok(DomainSpec {
        guest_id: g.id.clone(),
        name: g.name.clone(),
        cpus: g.cpus as u32,
        memory_mib: g.memory_mib as u32,
        windows: g.os_type == "windows",
        disk_path: disk("system").unwrap_or_default(),
        seed_path: disk("seed").unwrap_or_default(),
        mac: g.mac.clone().unwrap_or_default(),
        bridge: if bridge.is_empty() {
            facts.bridge
        } else {
            bridge
        },
        bandwidth,
        vlan,
        vnc_port: g.vnc_port.unwrap_or(0) as u16,
        vnc_password: g.vnc_password.clone().unwrap_or_default(),
    })
}
