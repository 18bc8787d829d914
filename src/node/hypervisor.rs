//! The hypervisor behind a trait: libvirt for real (`qemu:///system`, `test:///default`),
//! a fake for unit tests of node logic.
//!
//! libvirt calls block, so the libvirt implementation runs each one on the blocking pool.
//! The connection is opened lazily and re-opened after a failure (libvirtd restarts).
//! Domains are addressed by UUID, which is the corral guest id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState, DomainStateEnum};
use virt::enumutil::Enum;
use virt::sys;

use crate::model::IoTune;

/// Domain states as corral names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomState {
    Running,
    Paused,
    Shutoff,
    /// Still running, on its way down (libvirt's "shutdown" state): neither off yet nor
    /// startable.
    ShuttingDown,
    Crashed,
    Other,
}

impl DomState {
    pub fn as_str(self) -> &'static str {
        match self {
            DomState::Running => "running",
            DomState::Paused => "paused",
            DomState::Shutoff => "shutoff",
            DomState::ShuttingDown => "running",
            DomState::Crashed => "crashed",
            DomState::Other => "unknown",
        }
    }
}

/// What went wrong in the hypervisor, classified by libvirt's error code (never by its
/// message), with libvirt's error (code, domain, message) kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    #[error("domain {0} not found")]
    NoDomain(String),
    #[error("the domain has no such snapshot")]
    NoSnapshot(#[source] Option<virt::error::Error>),
    /// The driver cannot do this at all (the test driver has no guest agent): waiting
    /// or trying again cannot help.
    #[error("the hypervisor does not support this")]
    Unsupported(#[source] virt::error::Error),
    /// The guest agent did not answer (the guest boots, or has no agent).
    #[error("the guest agent is not responding")]
    AgentUnresponsive(#[source] Option<virt::error::Error>),
    /// The domain's state does not allow it (libvirt's "operation invalid").
    #[error("the domain's state does not allow this")]
    InvalidState(#[source] virt::error::Error),
    #[error("libvirt")]
    Libvirt(#[source] virt::error::Error),
    /// The agent answered something that is not its protocol.
    #[error("the guest agent answered {answer:?}")]
    AgentAnswer {
        answer: String,
        #[source]
        source: serde_json::Error,
    },
    /// The agent's protocol went wrong in a way it reports no error for.
    #[error("guest agent: {0}")]
    Agent(String),
    /// The domain's definition could not be made for a migration's target.
    #[error("the definition for the migration's target")]
    Retarget(#[from] super::migrate::RetargetError),
    /// A local file a hypervisor operation reads (a cold copy's source).
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A cold copy stopped between chunks by a cancel.
    #[error("the copy was stopped")]
    Stopped,
    /// libvirt's stream accepted no byte of a chunk (a blocking stream never should).
    #[error("libvirt's stream took no data")]
    Stalled,
    /// What the fake hypervisor of the unit tests refuses.
    #[error("{0}")]
    Refused(String),
    #[error("the hypervisor's blocking task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("the hypervisor connection's lock is poisoned")]
    Poisoned,
}

impl From<virt::error::Error> for HvError {
    fn from(e: virt::error::Error) -> Self {
        use virt::error::ErrorNumber as N;
        match e.code() {
            Enum::Known(N::NoSupport | N::OperationUnsupported | N::ArgumentUnsupported) => {
                HvError::Unsupported(e)
            }
            Enum::Known(N::AgentUnresponsive | N::AgentUnsynced) => {
                HvError::AgentUnresponsive(Some(e))
            }
            Enum::Known(N::NoDomainSnapshot) => HvError::NoSnapshot(Some(e)),
            Enum::Known(N::OperationInvalid) => HvError::InvalidState(e),
            _ => HvError::Libvirt(e),
        }
    }
}

impl HvError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            HvError::AgentUnresponsive(_)
                | HvError::Agent(_)
                | HvError::Libvirt(_)
                | HvError::Join(_)
                | HvError::Poisoned
        )
    }
}

/// A domain as listed: uuid, name, state.
#[derive(Debug, Clone, PartialEq)]
pub struct DomEntry {
    pub uuid: String,
    pub name: String,
    pub state: DomState,
}

#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// State of the domain with this UUID, None when it does not exist.
    async fn state(&self, uuid: &str) -> Result<Option<DomState>, HvError>;
    async fn define(&self, xml: &str) -> Result<(), HvError>;
    async fn undefine(&self, uuid: &str) -> Result<(), HvError>;
    async fn start(&self, uuid: &str) -> Result<(), HvError>;
    async fn destroy(&self, uuid: &str) -> Result<(), HvError>;
    async fn shutdown(&self, uuid: &str) -> Result<(), HvError>;
    async fn reboot(&self, uuid: &str) -> Result<(), HvError>;
    async fn reset(&self, uuid: &str) -> Result<(), HvError>;
    async fn suspend(&self, uuid: &str) -> Result<(), HvError>;
    async fn resume(&self, uuid: &str) -> Result<(), HvError>;
    async fn xml(&self, uuid: &str) -> Result<String, HvError>;
    /// Updates a device in place: live when the domain runs, and in its persistent config.
    async fn update_device(&self, uuid: &str, xml: &str, live: bool) -> Result<(), HvError>;
    /// The persistent definition, secrets included (its VNC password): only for
    /// redefining the domain, never reported.
    async fn definition(&self, uuid: &str) -> Result<String, HvError>;
    /// Hot-plugs a device into the running domain and adds it to its definition.
    async fn attach_live(&self, uuid: &str, xml: &str) -> Result<(), HvError>;
    /// Unplugs a device from the running domain and removes it from its definition.
    async fn detach_live(&self, uuid: &str, xml: &str) -> Result<(), HvError>;
    /// Grows a disk of the running domain to `bytes`.
    async fn block_resize(&self, uuid: &str, target: &str, bytes: u64) -> Result<(), HvError>;
    /// Sets the I/O limits of disk `target` of a running domain, and in its definition.
    async fn set_disk_limits_live(
        &self,
        uuid: &str,
        target: &str,
        limits: Option<&IoTune>,
    ) -> Result<(), HvError>;
    /// Plugs or unplugs vCPUs of a running domain, and sets the same count in its
    /// definition.
    async fn set_vcpus_live(&self, uuid: &str, cpus: u32) -> Result<(), HvError>;
    /// Sets a running domain's balloon target, and the same current memory in its
    /// definition.
    async fn set_memory_live(&self, uuid: &str, memory_mib: u32) -> Result<(), HvError>;
    /// Whether the domain has snapshot `name`.
    async fn has_snapshot(&self, uuid: &str, name: &str) -> Result<bool, HvError>;
    /// Takes internal snapshot `name` (libvirt's default: disks, plus memory when running).
    async fn create_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError>;
    async fn revert_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError>;
    async fn delete_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError>;
    /// Updates the running domain's graphics device only, never its definition: a
    /// console ticket's password lives as long as the domain runs, at most.
    async fn update_graphics_live(&self, uuid: &str, xml: &str) -> Result<(), HvError>;
    async fn list(&self) -> Result<Vec<DomEntry>, HvError>;
    /// Every running domain's statistics, in one call (`node::domstats`).
    async fn domain_stats(&self) -> Result<Vec<super::domstats::DomainStats>, HvError>;
    /// libvirt and hypervisor versions, for the node's facts.
    async fn versions(&self) -> Result<(String, String), HvError>;
    /// Sends one QEMU guest agent command (JSON) and returns the agent's JSON answer.
    async fn agent(&self, uuid: &str, command: &str, timeout_secs: i32) -> Result<String, HvError>;
    /// Moves the running domain to another host live, as `plan` says; returns when
    /// libvirt has finished (the domain then runs there, defined there only) or failed
    /// (it still runs here).
    /// The figures of the finished migration come back, as the target reports them.
    async fn migrate(&self, uuid: &str, plan: MigrationPlan)
        -> Result<Option<JobFigures>, HvError>;
    /// The domain's running job's figures; None when no job runs.
    async fn job_stats(&self, uuid: &str) -> Result<Option<JobFigures>, HvError>;
    /// Aborts the domain's running job; a migration leaves the guest here.
    async fn abort_job(&self, uuid: &str) -> Result<(), HvError>;
    /// Switches the running migration to post-copy.
    async fn start_post_copy(&self, uuid: &str) -> Result<(), HvError>;
    /// The domain's state on the hypervisor at `uri` (another host's).
    async fn state_at(&self, uri: &str, uuid: &str) -> Result<Option<DomState>, HvError>;
    /// Whether the domain carries corral's HA mark (its metadata `urn:corral:ha:1`).
    async fn ha_mark(&self, uuid: &str) -> Result<bool, HvError>;
    /// Sets or clears the HA mark, in the definition and, when it runs, live.
    async fn set_ha_mark(&self, uuid: &str, on: bool) -> Result<(), HvError>;
    /// Copies the stopped domain to another host as `plan` says (`node::cold`): its
    /// files, then its definition and snapshots' metadata. `sent` hears the bytes sent;
    /// `stop` set ends the copy between chunks. (bytes sent, snapshots defined).
    async fn copy_out(
        &self,
        uuid: &str,
        plan: super::cold::CopyPlan,
        sent: super::cold::Sent,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(u64, u32), HvError>;
}

/// The namespace of corral's HA mark in a domain's metadata: the node stops the domains
/// that carry it when it fences itself.
pub const HA_NS: &str = "urn:corral:ha:1";

/// A live migration as the hypervisor runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationPlan {
    /// The target's libvirt URI and the address its QEMU takes the streams on.
    pub uri: String,
    pub address: String,
    /// Each disk's path here and on the target; the definition follows them.
    pub paths: Vec<(String, String)>,
    /// The guest's VNC port and listen address on the target.
    pub vnc_port: u16,
    pub vnc_listen: String,
    /// Copy the disks' own data (not their backing images) with the memory; false:
    /// the storage is shared.
    pub copy_storage: bool,
    pub bandwidth_mib: Option<u64>,
    pub auto_converge: bool,
    pub postcopy: bool,
}

/// libvirt's job statistics, the fields corral reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFigures {
    pub elapsed_ms: u64,
    pub data_processed: u64,
    pub data_remaining: u64,
    pub data_total: u64,
    pub mem_bps: u64,
    pub disk_bps: u64,
    pub dirty_rate: u64,
    pub iteration: u64,
    pub expected_downtime_ms: u64,
    pub downtime_ms: u64,
}

pub struct Libvirt {
    uri: String,
    conn: Arc<Mutex<Option<Arc<Connect>>>>,
}

fn map_state(s: DomainStateEnum) -> DomState {
    match s {
        Enum::Known(DomainState::Running | DomainState::Blocked) => DomState::Running,
        Enum::Known(DomainState::Paused | DomainState::PMSuspended) => DomState::Paused,
        Enum::Known(DomainState::Shutoff) => DomState::Shutoff,
        Enum::Known(DomainState::Shutdown) => DomState::ShuttingDown,
        Enum::Known(DomainState::Crashed) => DomState::Crashed,
        _ => DomState::Other,
    }
}

fn is_no_domain(e: &virt::error::Error) -> bool {
    e.code() == Enum::Known(virt::error::ErrorNumber::NoDomain)
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

impl Libvirt {
    pub fn new(uri: &str) -> Self {
        // libvirt prints every error to stderr by default; we report them ourselves.
        virt::error::clear_error_callback();
        Libvirt {
            uri: uri.to_string(),
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `f` with a connection on the blocking pool; drops the connection on a
    /// connection-level failure so the next call reconnects.
    async fn with<T, F>(&self, f: F) -> Result<T, HvError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, HvError> + Send + 'static,
    {
        let slot = self.conn.clone();
        let uri = self.uri.clone();
        tokio::task::spawn_blocking(move || {
            let conn = {
                let mut guard = slot.lock().map_err(|_| HvError::Poisoned)?;
                match guard.as_ref() {
                    Some(c) if c.is_alive().unwrap_or(false) => c.clone(),
                    _ => {
                        let c = Arc::new(Connect::open(Some(&uri))?);
                        *guard = Some(c.clone());
                        c
                    }
                }
            };
            f(&conn)
        })
        .await
        .map_err(HvError::Join)?
    }

    async fn on_domain<T, F>(&self, uuid: &str, f: F) -> Result<T, HvError>
    where
        T: Send + 'static,
        F: FnOnce(&Domain) -> Result<T, HvError> + Send + 'static,
    {
        let uuid = uuid.to_string();
        self.with(move |c| match c.lookup_domain_by_uuid_string(&uuid) {
            Ok(d) => f(&d),
            Err(e) if is_no_domain(&e) => Err(HvError::NoDomain(uuid)),
            Err(e) => Err(e.into()),
        })
        .await
    }
}

#[async_trait::async_trait]
impl Hypervisor for Libvirt {
    async fn state(&self, uuid: &str) -> Result<Option<DomState>, HvError> {
        match self.on_domain(uuid, |d| Ok(map_state(d.state()?.0))).await {
            Ok(s) => Ok(Some(s)),
            Err(HvError::NoDomain(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    async fn define(&self, xml: &str) -> Result<(), HvError> {
        let xml = xml.to_string();
        self.with(move |c| c.define_domain_xml(&xml).map(|_| ()).map_err(Into::into))
            .await
    }
    async fn undefine(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| {
            let flags = sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | sys::VIR_DOMAIN_UNDEFINE_NVRAM;
            // Drivers that refuse a flag (the test driver has no NVRAM) get fewer; the
            // snapshots' metadata must go with the domain, or libvirt keeps it.
            d.undefine_flags(flags)
                .or_else(|_| d.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA))
                .or_else(|_| d.undefine())?;
            Ok(())
        })
        .await
    }
    async fn start(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| d.create().map(|_| ()).map_err(Into::into))
            .await
    }
    async fn destroy(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| d.destroy().map_err(Into::into))
            .await
    }
    async fn shutdown(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| d.shutdown().map(|_| ()).map_err(Into::into))
            .await
    }
    async fn reboot(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| d.reboot(0).map_err(Into::into))
            .await
    }
    async fn reset(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| d.reset().map(|_| ()).map_err(Into::into))
            .await
    }
    async fn suspend(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| d.suspend().map(|_| ()).map_err(Into::into))
            .await
    }
    async fn resume(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| d.resume().map(|_| ()).map_err(Into::into))
            .await
    }
    async fn xml(&self, uuid: &str) -> Result<String, HvError> {
        self.on_domain(uuid, |d| d.xml_desc(0).map_err(Into::into))
            .await
    }
    async fn update_device(&self, uuid: &str, xml: &str, live: bool) -> Result<(), HvError> {
        let xml = xml.to_string();
        let flags =
            sys::VIR_DOMAIN_AFFECT_CONFIG | if live { sys::VIR_DOMAIN_AFFECT_LIVE } else { 0 };
        self.on_domain(uuid, move |d| {
            d.update_device_flags(&xml, flags).map_err(Into::into)
        })
        .await
    }
    async fn update_graphics_live(&self, uuid: &str, xml: &str) -> Result<(), HvError> {
        let xml = xml.to_string();
        self.on_domain(uuid, move |d| {
            d.update_device_flags(&xml, sys::VIR_DOMAIN_AFFECT_LIVE)
                .map_err(Into::into)
        })
        .await
    }
    async fn has_snapshot(&self, uuid: &str, name: &str) -> Result<bool, HvError> {
        let name = name.to_string();
        self.on_domain(uuid, move |d| {
            Ok(d.list_all_snapshots(0)?
                .iter()
                .any(|s| s.name().is_ok_and(|n| n == name)))
        })
        .await
    }
    async fn create_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError> {
        let xml = format!("<domainsnapshot><name>{name}</name></domainsnapshot>");
        self.on_domain(uuid, move |d| {
            d.create_snapshot_xml(&xml, 0)
                .map(|_| ())
                .map_err(Into::into)
        })
        .await
    }
    async fn revert_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError> {
        let name = name.to_string();
        self.on_domain(uuid, move |d| {
            virt::domain::Domain::lookup_snapshot_by_name(d, &name, 0)?
                .revert(0)
                .map_err(Into::into)
        })
        .await
    }
    async fn delete_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError> {
        let name = name.to_string();
        self.on_domain(uuid, move |d| {
            virt::domain::Domain::lookup_snapshot_by_name(d, &name, 0)?
                .delete(0)
                .map_err(Into::into)
        })
        .await
    }
    async fn definition(&self, uuid: &str) -> Result<String, HvError> {
        self.on_domain(uuid, |d| {
            d.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE | sys::VIR_DOMAIN_XML_SECURE)
                .map_err(Into::into)
        })
        .await
    }
    async fn attach_live(&self, uuid: &str, xml: &str) -> Result<(), HvError> {
        let xml = xml.to_string();
        let flags = sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG;
        self.on_domain(uuid, move |d| {
            d.attach_device_flags(&xml, flags).map_err(Into::into)
        })
        .await
    }
    async fn detach_live(&self, uuid: &str, xml: &str) -> Result<(), HvError> {
        let xml = xml.to_string();
        let flags = sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG;
        self.on_domain(uuid, move |d| {
            d.detach_device_flags(&xml, flags).map_err(Into::into)
        })
        .await
    }
    async fn block_resize(&self, uuid: &str, target: &str, bytes: u64) -> Result<(), HvError> {
        let target = target.to_string();
        self.on_domain(uuid, move |d| {
            d.block_resize(&target, bytes, sys::VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                .map_err(Into::into)
        })
        .await
    }
    async fn set_disk_limits_live(
        &self,
        uuid: &str,
        target: &str,
        limits: Option<&IoTune>,
    ) -> Result<(), HvError> {
        let (target, limits) = (target.to_string(), limits.cloned());
        // Live, then the definition: not every driver takes both in one call.
        self.on_domain(uuid, move |d| {
            super::iotune::set(d, &target, limits.as_ref(), sys::VIR_DOMAIN_AFFECT_LIVE)?;
            super::iotune::set(d, &target, limits.as_ref(), sys::VIR_DOMAIN_AFFECT_CONFIG)
                .map_err(Into::into)
        })
        .await
    }
    async fn set_vcpus_live(&self, uuid: &str, cpus: u32) -> Result<(), HvError> {
        let flags = sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG;
        self.on_domain(uuid, move |d| {
            d.set_vcpus_flags(cpus, flags).map_err(Into::into)
        })
        .await
    }
    async fn set_memory_live(&self, uuid: &str, memory_mib: u32) -> Result<(), HvError> {
        // Two calls: some drivers (the test driver) refuse LIVE and CONFIG together here.
        self.on_domain(uuid, move |d| {
            let kib = u64::from(memory_mib) * 1024;
            d.set_memory_flags(kib, sys::VIR_DOMAIN_AFFECT_LIVE)?;
            d.set_memory_flags(kib, sys::VIR_DOMAIN_AFFECT_CONFIG)
                .map_err(Into::into)
        })
        .await
    }
    async fn list(&self) -> Result<Vec<DomEntry>, HvError> {
        self.with(|c| {
            let mut out = Vec::new();
            for d in c.list_all_domains(0)? {
                let (Ok(uuid), Ok(name), Ok((state, _))) = (d.uuid_string(), d.name(), d.state())
                else {
                    continue; // vanished while listing
                };
                out.push(DomEntry {
                    uuid,
                    name,
                    state: map_state(state),
                });
            }
            Ok(out)
        })
        .await
    }
    async fn agent(&self, uuid: &str, command: &str, timeout_secs: i32) -> Result<String, HvError> {
        let command = command.to_string();
        self.on_domain(uuid, move |d| {
            Ok(d.qemu_agent_command(&command, timeout_secs, 0)?)
        })
        .await
    }
    async fn migrate(
        &self,
        uuid: &str,
        plan: MigrationPlan,
    ) -> Result<Option<JobFigures>, HvError> {
        self.on_domain(uuid, move |d| super::migrate::libvirt_migrate(d, &plan))
            .await
    }
    async fn job_stats(&self, uuid: &str) -> Result<Option<JobFigures>, HvError> {
        self.on_domain(uuid, |d| Ok(super::jobctl::stats(d, 0)?))
            .await
    }
    async fn abort_job(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| Ok(super::jobctl::abort(d)?)).await
    }
    async fn start_post_copy(&self, uuid: &str) -> Result<(), HvError> {
        self.on_domain(uuid, |d| Ok(super::jobctl::start_post_copy(d)?))
            .await
    }
    async fn ha_mark(&self, uuid: &str) -> Result<bool, HvError> {
        self.on_domain(uuid, |d| {
            match d.metadata(sys::VIR_DOMAIN_METADATA_ELEMENT as i32, Some(HA_NS), 0) {
                Ok(_) => Ok(true),
                Err(e) if e.code() == Enum::Known(virt::error::ErrorNumber::NoDomainMetadata) => {
                    Ok(false)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }
    async fn set_ha_mark(&self, uuid: &str, on: bool) -> Result<(), HvError> {
        self.on_domain(uuid, move |d| {
            let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
            if d.is_active()? {
                flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            let (element, key) = if on {
                (Some("<ha/>"), Some("corralha"))
            } else {
                (None, None)
            };
            d.set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                element,
                key,
                Some(HA_NS),
                flags,
            )?;
            Ok(())
        })
        .await
    }
    async fn copy_out(
        &self,
        uuid: &str,
        plan: super::cold::CopyPlan,
        sent: super::cold::Sent,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(u64, u32), HvError> {
        self.on_domain(uuid, move |d| {
            super::cold::libvirt_copy_out(d, &plan, &sent, &stop)
        })
        .await
    }
    async fn state_at(&self, uri: &str, uuid: &str) -> Result<Option<DomState>, HvError> {
        let (uri, uuid) = (uri.to_string(), uuid.to_string());
        tokio::task::spawn_blocking(move || {
            let c = Connect::open(Some(&uri))?;
            let r = match c.lookup_domain_by_uuid_string(&uuid) {
                Ok(d) => Ok(Some(map_state(d.state()?.0))),
                Err(e) if is_no_domain(&e) => Ok(None),
                Err(e) => Err(e.into()),
            };
            // Dropping the connection closes it.
            r
        })
        .await
        .map_err(HvError::Join)?
    }
    async fn domain_stats(&self) -> Result<Vec<super::domstats::DomainStats>, HvError> {
        self.with(|c| Ok(super::domstats::all(c)?)).await
    }
    async fn versions(&self) -> Result<(String, String), HvError> {
        self.with(|c| {
            let lib = c.lib_version().map(version_string).unwrap_or_default();
            let hv = c.hyp_version().map(version_string).unwrap_or_default();
            Ok((lib, hv))
        })
        .await
    }
}

/// In-memory hypervisor for unit tests of node logic.
#[derive(Default)]
pub struct Fake {
    pub domains: Mutex<HashMap<String, (String, DomState)>>,
    pub agent_log: Mutex<Vec<String>>,
}

impl Fake {
    fn with_dom<T>(
        &self,
        uuid: &str,
        f: impl FnOnce(&mut (String, DomState)) -> T,
    ) -> Result<T, HvError> {
        let mut m = self.domains.lock().map_err(|_| HvError::Poisoned)?;
        m.get_mut(uuid)
            .map(f)
            .ok_or_else(|| HvError::NoDomain(uuid.into()))
    }
    fn set(&self, uuid: &str, s: DomState) -> Result<(), HvError> {
        self.with_dom(uuid, |d| d.1 = s)
    }
}

fn xml_field(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].to_string())
}

#[async_trait::async_trait]
impl Hypervisor for Fake {
    async fn state(&self, uuid: &str) -> Result<Option<DomState>, HvError> {
        match self.with_dom(uuid, |d| d.1) {
            Ok(s) => Ok(Some(s)),
            Err(HvError::NoDomain(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
    async fn define(&self, xml: &str) -> Result<(), HvError> {
        let uuid =
            xml_field(xml, "uuid").ok_or_else(|| HvError::Refused("the XML has no uuid".into()))?;
        let mut m = self.domains.lock().map_err(|_| HvError::Poisoned)?;
        // Defining again replaces the definition, as libvirt does.
        let e = m
            .entry(uuid)
            .or_insert_with(|| (String::new(), DomState::Shutoff));
        e.0 = xml.to_string();
        Ok(())
    }
    async fn undefine(&self, uuid: &str) -> Result<(), HvError> {
        let mut m = self.domains.lock().map_err(|_| HvError::Poisoned)?;
        m.remove(uuid)
            .map(|_| ())
            .ok_or_else(|| HvError::NoDomain(uuid.into()))
    }
    async fn start(&self, uuid: &str) -> Result<(), HvError> {
        self.set(uuid, DomState::Running)
    }
    async fn destroy(&self, uuid: &str) -> Result<(), HvError> {
        self.set(uuid, DomState::Shutoff)
    }
    async fn shutdown(&self, uuid: &str) -> Result<(), HvError> {
        self.set(uuid, DomState::Shutoff)
    }
    async fn reboot(&self, uuid: &str) -> Result<(), HvError> {
        self.set(uuid, DomState::Running)
    }
    async fn reset(&self, uuid: &str) -> Result<(), HvError> {
        self.set(uuid, DomState::Running)
    }
    async fn suspend(&self, uuid: &str) -> Result<(), HvError> {
        self.set(uuid, DomState::Paused)
    }
    async fn resume(&self, uuid: &str) -> Result<(), HvError> {
        self.set(uuid, DomState::Running)
    }
    async fn xml(&self, uuid: &str) -> Result<String, HvError> {
        self.with_dom(uuid, |d| d.0.clone())
    }
    async fn update_device(&self, uuid: &str, _xml: &str, _live: bool) -> Result<(), HvError> {
        self.with_dom(uuid, |_| ())
    }
    async fn update_graphics_live(&self, uuid: &str, _xml: &str) -> Result<(), HvError> {
        self.with_dom(uuid, |_| ())
    }
    async fn definition(&self, uuid: &str) -> Result<String, HvError> {
        self.with_dom(uuid, |d| d.0.clone())
    }
    async fn has_snapshot(&self, uuid: &str, name: &str) -> Result<bool, HvError> {
        let tag = format!("<!--snapshot:{name}-->");
        self.with_dom(uuid, |d| d.0.contains(&tag))
    }
    async fn create_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError> {
        let tag = format!("<!--snapshot:{name}-->");
        self.with_dom(uuid, |d| d.0.push_str(&tag))
    }
    async fn revert_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError> {
        let tag = format!("<!--snapshot:{name}-->");
        match self.with_dom(uuid, |d| d.0.contains(&tag))? {
            true => Ok(()),
            false => Err(HvError::NoSnapshot(None)),
        }
    }
    async fn delete_snapshot(&self, uuid: &str, name: &str) -> Result<(), HvError> {
        let tag = format!("<!--snapshot:{name}-->");
        self.with_dom(uuid, |d| d.0 = d.0.replace(&tag, ""))
    }
    async fn attach_live(&self, uuid: &str, xml: &str) -> Result<(), HvError> {
        let xml = xml.to_string();
        self.with_dom(uuid, move |d| {
            d.0 = d.0.replace("</devices>", &format!("{xml}</devices>"));
        })
    }
    async fn detach_live(&self, uuid: &str, xml: &str) -> Result<(), HvError> {
        let xml = xml.to_string();
        self.with_dom(uuid, move |d| d.0 = d.0.replace(&xml, ""))
    }
    async fn block_resize(&self, uuid: &str, _target: &str, _bytes: u64) -> Result<(), HvError> {
        self.with_dom(uuid, |_| ())
    }
    async fn set_disk_limits_live(
        &self,
        uuid: &str,
        _target: &str,
        _limits: Option<&IoTune>,
    ) -> Result<(), HvError> {
        self.with_dom(uuid, |_| ())
    }
    async fn set_vcpus_live(&self, uuid: &str, _cpus: u32) -> Result<(), HvError> {
        self.with_dom(uuid, |_| ())
    }
    async fn set_memory_live(&self, uuid: &str, _memory_mib: u32) -> Result<(), HvError> {
        self.with_dom(uuid, |_| ())
    }
    async fn list(&self) -> Result<Vec<DomEntry>, HvError> {
        let m = self.domains.lock().map_err(|_| HvError::Poisoned)?;
        Ok(m.iter()
            .map(|(u, (x, s))| DomEntry {
                uuid: u.clone(),
                name: xml_field(x, "name").unwrap_or_default(),
                state: *s,
            })
            .collect())
    }
    /// Running domains with fixed figures: the `<memory>` of their definition as the
    /// balloon, and no CPU time.
    async fn domain_stats(&self) -> Result<Vec<super::domstats::DomainStats>, HvError> {
        let m = self.domains.lock().map_err(|_| HvError::Poisoned)?;
        Ok(m.iter()
            .filter(|(_, (_, s))| *s == DomState::Running)
            .map(|(u, (x, _))| {
                let kib = xml_field(x, "memory")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                super::domstats::DomainStats {
                    uuid: u.clone(),
                    params: [
                        ("cpu.time".to_string(), 0.0),
                        ("balloon.current".to_string(), kib),
                    ]
                    .into(),
                }
            })
            .collect())
    }
    /// A well-behaved agent in a running guest: every command succeeds, `guest-exec`
    /// exits 0 with no output. Commands are recorded in `agent_log`.
    async fn agent(
        &self,
        uuid: &str,
        command: &str,
        _timeout_secs: i32,
    ) -> Result<String, HvError> {
        if self.with_dom(uuid, |d| d.1)? != DomState::Running {
            return Err(HvError::AgentUnresponsive(None));
        }
        if let Ok(mut log) = self.agent_log.lock() {
            log.push(command.to_string());
        }
        let v: serde_json::Value = serde_json::from_str(command)
            .map_err(|_| HvError::Refused("the agent command is not JSON".into()))?;
        let answer = match v["execute"].as_str().unwrap_or_default() {
            "guest-exec" => serde_json::json!({"return": {"pid": 1}}),
            "guest-exec-status" => serde_json::json!({"return": {"exited": true, "exitcode": 0}}),
            _ => serde_json::json!({"return": {}}),
        };
        Ok(answer.to_string())
    }
    async fn versions(&self) -> Result<(String, String), HvError> {
        Ok(("fake".into(), "fake".into()))
    }
    async fn migrate(
        &self,
        _uuid: &str,
        _plan: MigrationPlan,
    ) -> Result<Option<JobFigures>, HvError> {
        Err(HvError::Refused(
            "the fake hypervisor does not migrate".into(),
        ))
    }
    async fn job_stats(&self, _uuid: &str) -> Result<Option<JobFigures>, HvError> {
        Ok(None)
    }
    async fn abort_job(&self, _uuid: &str) -> Result<(), HvError> {
        Ok(())
    }
    async fn start_post_copy(&self, _uuid: &str) -> Result<(), HvError> {
        Err(HvError::Refused(
            "the fake hypervisor does not migrate".into(),
        ))
    }
    async fn state_at(&self, _uri: &str, _uuid: &str) -> Result<Option<DomState>, HvError> {
        Ok(None)
    }
    async fn ha_mark(&self, uuid: &str) -> Result<bool, HvError> {
        self.with_dom(uuid, |d| d.0.contains(HA_NS))
    }
    async fn set_ha_mark(&self, uuid: &str, on: bool) -> Result<(), HvError> {
        self.with_dom(uuid, |d| {
            d.0 = d.0.replace(&format!("<ha xmlns='{HA_NS}'/>"), "");
            if on {
                d.0.push_str(&format!("<ha xmlns='{HA_NS}'/>"));
            }
        })
    }
    async fn copy_out(
        &self,
        _uuid: &str,
        _plan: super::cold::CopyPlan,
        _sent: super::cold::Sent,
        _stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<(u64, u32), HvError> {
        Err(HvError::Refused("the fake hypervisor does not copy".into()))
    }
}
