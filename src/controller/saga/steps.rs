//! What every kind's steps share: the step error, the controller settings steps see, and
//! the lookups several kinds make (the guest of an operation, its node's facts, the domain
//! its record describes, where its files live).

use crate::controller::alloc::AllocError;
use crate::controller::store::{self as st, GuestRow, OpRow, StoreError, Tx};
use crate::model::{DomainSpec, NodeFacts};

/// Why a step did not finish. Variants that wrap an error keep it as their source; the
/// text the operation shows is the whole chain ([`crate::chain::chain`]), made by the
/// engine through [`StepError::message`].
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Retry later without failing the step (node not registered yet).
    #[error("{0}")]
    Transient(String),
    /// Keep what the step wrote (it asked for something to happen first) and run it again
    /// later; the message says what it waits for.
    #[error("{0}")]
    Waiting(String),
    /// The step cannot succeed: fail it and unwind.
    #[error("{0}")]
    Permanent(String),
    /// `what` failed for good because of `source`: fail the step and unwind.
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: crate::chain::Cause,
    },
    /// The database failed (busy, locked): retry later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An allocator refused (for good) or lost a race (retry).
    #[error(transparent)]
    Alloc(AllocError),
}

/// What the engine does about a [`StepError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepErrorClass {
    Transient,
    Waiting,
    Permanent,
}

impl StepError {
    /// `what` failed for good because of `e`.
    pub fn failed(
        what: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StepError::Failed {
            what: what.into(),
            source: Box::new(e),
        }
    }

    pub fn class(&self) -> StepErrorClass {
        match self {
            StepError::Transient(_) | StepError::Store(_) => StepErrorClass::Transient,
            StepError::Alloc(AllocError::Raced(_)) => StepErrorClass::Transient,
            StepError::Waiting(_) => StepErrorClass::Waiting,
            StepError::Permanent(_) | StepError::Failed { .. } | StepError::Alloc(_) => {
                StepErrorClass::Permanent
            }
        }
    }

    /// The text an operation shows: the whole chain.
    pub fn message(&self) -> String {
        crate::chain::chain(self)
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        StepError::Store(StoreError::Db(e))
    }
}

impl From<AllocError> for StepError {
    fn from(e: AllocError) -> Self {
        match e {
            AllocError::Store(s) => StepError::Store(s),
            other => StepError::Alloc(other),
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
    /// Opens boot jobs' sealed secret parameters just before they run.
    pub sealer: std::sync::Arc<crate::controller::sealed::Sealer>,
    /// The operation kinds (a drain starts an operation per guest).
    pub catalog: std::sync::Arc<crate::jobs::Catalog>,
    /// Runs nodes' fence commands (HA, S74).
    pub fencer: std::sync::Arc<crate::controller::fence::Fencer>,
}

pub fn system_disk_path(storage_dir: &str, guest: &str) -> String {
    format!("{}/{guest}.qcow2", storage_dir.trim_end_matches('/'))
}

pub fn seed_path(storage_dir: &str, guest: &str) -> String {
    format!("{}/{guest}-seed.iso", storage_dir.trim_end_matches('/'))
}

/// The bridge guest `g`'s NIC is on: its pool's, else its node's default (a node that
/// takes the guest must have it).
pub async fn guest_bridge(tx: &mut Tx<'_>, g: &GuestRow) -> Result<Option<String>, StepError> {
    if let Some(p) = &g.pool_id {
        if let Some(pool) = st::pool_in(tx, p).await? {
            if !pool.bridge.is_empty() {
                return Ok(Some(pool.bridge));
            }
        }
    }
    match &g.node_id {
        Some(n) => Ok(Some(facts_of(tx, n).await?.bridge).filter(|b| !b.is_empty())),
        None => Ok(None),
    }
}

/// The node a guest is on; a guest on none cannot have node work done.
pub fn node_of(g: &GuestRow) -> Result<String, StepError> {
    g.node_id
        .clone()
        .ok_or_else(|| StepError::Permanent(format!("guest {} is on no node", g.name)))
}

/// The guest the operation works on.
pub async fn guest_of(tx: &mut Tx<'_>, op: &OpRow) -> Result<GuestRow, StepError> {
    let id = op.guest_id.as_deref().unwrap_or_default();
    st::guest_in(tx, id)
        .await?
        .ok_or_else(|| StepError::Permanent(format!("guest {id} no longer exists")))
}

/// A registered node's facts; a node that is gone is a permanent refusal.
pub async fn facts_of(tx: &mut Tx<'_>, node: &str) -> Result<NodeFacts, StepError> {
    st::node_facts_in(tx, node)
        .await?
        .ok_or_else(|| StepError::Permanent(format!("node {node} is not registered")))
}

/// The path of a guest's disk of `kind` (`system`, `seed`), as recorded.
pub fn disk_path(disks: &[st::DiskRow], kind: &str) -> Option<String> {
    disks
        .iter()
        .find(|d| d.kind == kind)
        .map(|d| d.path.clone())
}

/// The domain a guest's row describes, on `node`, with NIC limits `bandwidth`.
pub async fn domain_spec(
    tx: &mut Tx<'_>,
    g: &GuestRow,
    node: &str,
    bandwidth: Option<crate::model::Bandwidth>,
) -> Result<DomainSpec, StepError> {
    let disks = st::disks_of_in(tx, &g.id).await?;
    // The pool's network decides the bridge; without one, the node's default.
    let (bridge, vlan): (String, Option<u16>) = match &g.pool_id {
        Some(p) => st::pool_in(tx, p)
            .await?
            .map(|p| (p.bridge, p.vlan.map(|v| v as u16)))
            .unwrap_or_default(),
        None => Default::default(),
    };
    let facts = facts_of(tx, node).await?;
    Ok(DomainSpec {
        guest_id: g.id.clone(),
        name: g.name.clone(),
        cpus: g.cpus as u32,
        memory_mib: g.memory_mib as u32,
        max_cpus: g.max_cpus(),
        max_memory_mib: g.max_memory_mib(),
        windows: g.os_type == "windows",
        disk_path: disk_path(&disks, "system").unwrap_or_default(),
        seed_path: disk_path(&disks, "seed").unwrap_or_default(),
        mac: g.mac.clone().unwrap_or_default(),
        bridge: if bridge.is_empty() {
            facts.bridge
        } else {
            bridge
        },
        bandwidth,
        vlan,
        vnc_port: g.vnc_port.unwrap_or(0) as u16,
        ha: g.ha,
    })
}
