//! Shared types: what the controller stores, what travels over Redis, what nodes report.
//!
//! The wire between controller and node is two typed enums and nothing else:
//! [`NodeJob`] goes down a node's own apalis-redis queue, [`NodeEvent`] comes back up the
//! one Redis Stream (S26). Both are serde JSON so a job survives a Redis restart as data.

use serde::{Deserialize, Serialize};

use crate::guestinit::AgentAction;

/// Milliseconds since the Unix epoch: the one clock format stored in rows and events.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 rendering of a stored timestamp, for the API.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Where a saga step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunsOn {
    Controller,
    Node,
}

/// The state of one saga step, stored inside the operation row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    Undoing,
    Undone,
    /// Its undo could not complete: what it made may still exist (on the node's cleanup
    /// list), and the resources it used stay held.
    UndoFailed,
    /// Given up while its node was offline (a cancel, the node's removal): what it may
    /// have made is on the node's cleanup list.
    Abandoned,
}

/// One step of an operation, as recorded (and shown by `GET /operations/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub runs_on: RunsOn,
    pub state: StepState,
    /// Dispatch counter: a node result is accepted only for the current attempt,
    /// so a duplicate delivery of an old job can never advance the saga twice.
    pub attempt: u32,
    /// Tries in the current direction (forward or undo), for the retry budget.
    #[serde(default)]
    pub tries: u32,
    pub dispatched_at: Option<i64>,
    /// The lease of the current dispatch, when the action's own time limit makes it longer
    /// than the step's declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub error: Option<String>,
    /// The node's typed reason, when it refused the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// What the step reported beyond success (a guest-agent run's per-action results).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

/// Whether a data disk or a snapshot exists yet: `creating` while the operation that
/// makes it runs, then `ready`. Stored as text: a value no version wrote fails the row's
/// decoding with the value named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum ReadyState {
    Creating,
    Ready,
}

impl ReadyState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyState::Creating => "creating",
            ReadyState::Ready => "ready",
        }
    }
}

impl std::fmt::Display for ReadyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle of a boot job: `pending` → `running` (claimed by a run) → `done` or
/// `failed`; `cancelled` when withdrawn while pending. Stored as text: a value no version
/// wrote fails the row's decoding with the value named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum BootJobState {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl BootJobState {
    pub fn as_str(self) -> &'static str {
        match self {
            BootJobState::Pending => "pending",
            BootJobState::Running => "running",
            BootJobState::Done => "done",
            BootJobState::Failed => "failed",
            BootJobState::Cancelled => "cancelled",
        }
    }
}

/// Lifecycle of an operation. Stored as text: a value no version wrote fails the row's
/// decoding with the value named, instead of reading as some default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum OpState {
    Pending,
    Running,
    /// A step failed or a cancel arrived: completed steps are being undone in reverse.
    Undoing,
    Succeeded,
    Failed,
    Cancelled,
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Pending => "pending",
            OpState::Running => "running",
            OpState::Undoing => "undoing",
            OpState::Succeeded => "succeeded",
            OpState::Failed => "failed",
            OpState::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => OpState::Pending,
            "running" => OpState::Running,
            "undoing" => OpState::Undoing,
            "succeeded" => OpState::Succeeded,
            "failed" => OpState::Failed,
            "cancelled" => OpState::Cancelled,
            _ => return None,
        })
    }
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OpState::Succeeded | OpState::Failed | OpState::Cancelled
        )
    }
}

/// Guest states as corral stores and reports them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, poem_openapi::Enum, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
#[sqlx(type_name = "TEXT", rename_all = "snake_case")]
pub enum GuestState {
    /// Its `guest.create` operation is under way.
    Creating,
    Running,
    Paused,
    Shutoff,
    Crashed,
    /// Its node stopped heartbeating (S95).
    Unknown,
    /// Its node no longer has the domain (reconcile, S73).
    Missing,
    /// A create or delete failed; only delete is possible.
    Error,
    /// Its `guest.delete` operation is under way.
    Deleting,
    /// Its `guest.migrate` operation is moving it to another node.
    Migrating,
}

impl GuestState {
    pub const ALL: &'static [GuestState] = &[
        GuestState::Creating,
        GuestState::Running,
        GuestState::Paused,
        GuestState::Shutoff,
        GuestState::Crashed,
        GuestState::Unknown,
        GuestState::Missing,
        GuestState::Error,
        GuestState::Deleting,
        GuestState::Migrating,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GuestState::Creating => "creating",
            GuestState::Running => "running",
            GuestState::Paused => "paused",
            GuestState::Shutoff => "shutoff",
            GuestState::Crashed => "crashed",
            GuestState::Unknown => "unknown",
            GuestState::Missing => "missing",
            GuestState::Error => "error",
            GuestState::Deleting => "deleting",
            GuestState::Migrating => "migrating",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        GuestState::ALL.iter().copied().find(|g| g.as_str() == s)
    }

    /// States an operation in flight owns: what a node reports must not overwrite them.
    pub fn owned_by_operation(self) -> bool {
        matches!(
            self,
            GuestState::Creating | GuestState::Deleting | GuestState::Error | GuestState::Migrating
        )
    }
}

impl std::fmt::Display for GuestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-guest traffic limits (S54), as libvirt takes them: KiB/s and KiB.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, poem_openapi::Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct Bandwidth {
    /// Traffic into the guest.
    pub inbound: Option<Rate>,
    /// Traffic out of the guest.
    pub outbound: Option<Rate>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, poem_openapi::Object)]
#[oai(skip_serializing_if_is_none, deny_unknown_fields)]
pub struct Rate {
    /// Average rate, KiB/s (at least 1).
    pub average_kbps: u32,
    /// Peak rate, KiB/s.
    pub peak_kbps: Option<u32>,
    /// Burst size at peak, KiB.
    pub burst_kb: Option<u32>,
}

impl Bandwidth {
    /// Checks the numbers; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, r) in [("inbound", &self.inbound), ("outbound", &self.outbound)] {
            if let Some(r) = r {
                if r.average_kbps == 0 {
                    return Err(format!("{name}.average_kbps must be at least 1"));
                }
                if r.peak_kbps.is_some_and(|p| p < r.average_kbps) {
                    return Err(format!(
                        "{name}.peak_kbps must not be below {name}.average_kbps"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Why a guest under TCG keeps its vCPUs while it runs (the API and the node say it).
/// Seen with QEMU 7.2: `tcg_region_initial_alloc__locked: assertion failed`, the guest
/// gone, when a vCPU was plugged into a guest that had booted and run for a few seconds.
pub const TCG_VCPUS: &str = "which runs guests under TCG (QEMU without KVM): QEMU's \
    multi-threaded TCG aborts the guest when a vCPU is plugged after its translation \
    cache regions are used up, so vCPUs change while it is shut off (memory changes live)";

/// A guest's vCPUs and memory, and the ceiling up to which they grow while it runs
/// (vCPU hot-plug, balloon). A maximum of 0, or below the current size, means the
/// current size: no live growth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSize {
    pub cpus: u32,
    pub memory_mib: u32,
    #[serde(default)]
    pub max_cpus: u32,
    #[serde(default)]
    pub max_memory_mib: u32,
}

impl GuestSize {
    /// The same size with its maxima made explicit (never below the current size).
    pub fn normalized(self) -> GuestSize {
        GuestSize {
            max_cpus: self.max_cpus.max(self.cpus),
            max_memory_mib: self.max_memory_mib.max(self.memory_mib),
            ..self
        }
    }
}

/// Everything the node needs to define a guest's domain; rendered on the node so that
/// node facts (domain type, emulator) are applied where they are true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainSpec {
    pub guest_id: String,
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The live-growth ceiling (0: the current size).
    #[serde(default)]
    pub max_cpus: u32,
    #[serde(default)]
    pub max_memory_mib: u32,
    pub windows: bool,
    pub disk_path: String,
    pub seed_path: String,
    pub mac: String,
    pub bridge: String,
    /// Traffic limits of the guest's NIC (S54).
    #[serde(default)]
    pub bandwidth: Option<Bandwidth>,
    /// 802.1Q tag of the guest's network, when its pool has one.
    #[serde(default)]
    pub vlan: Option<u16>,
    pub vnc_port: u16,
    /// HA (S74): the definition carries corral's HA mark, which a self-fencing node
    /// looks for.
    #[serde(default)]
    pub ha: bool,
}

/// What a node is asked to do. Every action is idempotent: "define unless defined",
/// "create unless it exists", "remove unless gone", because jobs arrive at least once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum NodeAction {
    /// A guest's system disk: an overlay on its template's image, from `template_path`
    /// when the node sees it in its image directories, else from the node's cached copy
    /// of `template` (fetched from the controller on first use).
    CreateDisk {
        path: String,
        template_path: String,
        #[serde(default)]
        template: Option<TemplateSource>,
    },
    RemoveFile {
        path: String,
    },
    /// Writes the NoCloud seed of the plan the node computes from `init`.
    BuildSeed {
        path: String,
        init: Box<InitInput>,
        /// Write it even if it exists (the guest's record changed: hostname, IP, password).
        #[serde(default)]
        replace: bool,
    },
    Define {
        spec: Box<DomainSpec>,
    },
    /// Apply the NIC definition (bandwidth) live when running and to the persistent config.
    UpdateInterface {
        spec: Box<DomainSpec>,
    },
    Undefine {
        guest_id: String,
    },
    Start {
        guest_id: String,
    },
    Destroy {
        guest_id: String,
    },
    Shutdown {
        guest_id: String,
        timeout_secs: u64,
    },
    Reboot {
        guest_id: String,
    },
    Reset {
        guest_id: String,
    },
    Suspend {
        guest_id: String,
    },
    Resume {
        guest_id: String,
    },
    /// Runs actions inside the guest through the QEMU guest agent, batch by batch, once the
    /// agent answers (waiting up to `wait_secs`). A failed action ends its batch only.
    AgentRun {
        guest_id: String,
        batches: Vec<AgentBatch>,
        wait_secs: u64,
        /// Fail the step when a batch fails (an init plan); otherwise each batch's outcome
        /// is only reported (boot jobs succeed or fail one by one).
        #[serde(default)]
        strict: bool,
    },
    /// Applies the init plan through the guest agent when the plan asks for that delivery
    /// (images without cloud-init); otherwise there is nothing to do.
    AgentInit {
        guest_id: String,
        init: Box<InitInput>,
        wait_secs: u64,
    },
    /// Runs its sub-steps in order as one job, reporting each one's end as progress, and
    /// stops at the first failure. Every sub-step is idempotent, so the whole is too: a
    /// re-run skips what is already there.
    Sequence {
        steps: Vec<SubStep>,
    },
    /// Runs a node's cleanup list: only destroy, undefine (by the guest's uuid) and remove
    /// file (inside the disk-image directory). Each item is reported on its own in a
    /// [`CleanupReport`]; the step itself succeeds.
    Cleanup {
        items: Vec<CleanupItem>,
    },
    /// Creates an empty qcow2 data disk of `size_mib` unless it exists.
    CreateVolume {
        path: String,
        size_mib: u64,
    },
    /// Adds a data disk to a guest's definition, and to the running domain when it runs
    /// (hot-plug). A no-op when the definition already has it.
    AttachDisk {
        guest_id: String,
        path: String,
        target: String,
        #[serde(default)]
        limits: Option<IoTune>,
    },
    /// Removes a data disk from the running domain (when it runs) and the definition. A
    /// no-op when the definition no longer has it.
    DetachDisk {
        guest_id: String,
        path: String,
        target: String,
    },
    /// Grows a data disk to `size_mib`: through the running domain (`virDomainBlockResize`)
    /// when it is attached to a running guest, on the file otherwise. Never shrinks.
    GrowDisk {
        path: String,
        size_mib: u64,
        /// The guest and device when attached.
        #[serde(default)]
        attached: Option<(String, String)>,
    },
    /// Sets the I/O limits of data disk `path` (device `target`) of a guest: live and in
    /// the definition when it runs, in the definition otherwise. None lifts them.
    SetDiskLimits {
        guest_id: String,
        path: String,
        target: String,
        limits: Option<IoTune>,
    },
    /// Takes internal snapshot `name` of a guest (disks, and memory when it runs), its
    /// filesystems frozen through the guest agent first when the agent answers.
    CreateSnapshot {
        guest_id: String,
        name: String,
    },
    /// Returns a guest to snapshot `name` (its disks, and its memory and running state
    /// when the snapshot holds them).
    RevertSnapshot {
        guest_id: String,
        name: String,
    },
    /// Deletes snapshot `name`; a no-op when it is gone.
    DeleteSnapshot {
        guest_id: String,
        name: String,
    },
    /// Flattens a guest's disk (at internal snapshot `snapshot` when given) into a new
    /// qcow2 template image at `dest`, in one of the node's template directories;
    /// reports its progress and answers the image's SHA-256 and size.
    ConvertImage {
        source: String,
        #[serde(default)]
        snapshot: Option<String>,
        dest: String,
    },
    /// Removes a guest's copy that must not run here (a migration's leftovers): refused
    /// while the domain runs on this node; otherwise it is undefined and `paths` removed.
    DiscardCopy {
        guest_id: String,
        paths: Vec<String>,
    },
    /// Copies a stopped guest to another node (`node::cold`): each file of `paths` is
    /// uploaded through the target's libvirt (unless the storage is shared), then the
    /// definition (with the paths and the VNC port changed) and its snapshots' metadata
    /// are defined there. The copy here stays until the migration's `release`.
    /// Run whole by the node's job handler, which reports the bytes copied.
    CopyOut {
        guest_id: String,
        to: Box<MigrationTarget>,
        /// Each file's path here and on the target (the system disk, data disks, seed).
        paths: Vec<(String, String)>,
        /// The guest's VNC port on the target.
        vnc_port: u16,
    },
    /// Sets or clears the domain's HA mark (S74), which a self-fencing node looks for.
    SetHa {
        guest_id: String,
        on: bool,
    },
    /// Points a system disk copied from another node at this node's copy of its
    /// template (fetched first when this node lacks it); its data is left as it is.
    Rebase {
        path: String,
        template_path: String,
        #[serde(default)]
        template: Option<TemplateSource>,
    },
    /// Moves a running guest to another node's hypervisor, live (`node::migrate`): its
    /// definition follows with `paths` and the VNC port changed, its disks are copied
    /// unless the storage is shared, and the domain stays defined only on the target.
    /// Run whole by the node's job handler, which reports libvirt's job statistics.
    Migrate {
        guest_id: String,
        to: Box<MigrationTarget>,
        /// Each disk's path here and on the target (the system disk, data disks, seed).
        paths: Vec<(String, String)>,
        /// The guest's VNC port on the target.
        vnc_port: u16,
        #[serde(default)]
        tuning: MigrationTuning,
    },
    /// Sets a guest's vCPUs and memory: in its definition when it is stopped (the
    /// maxima too), live and in the definition when it runs (within the maxima).
    ResizeDomain {
        guest_id: String,
        #[serde(flatten)]
        size: GuestSize,
    },
    /// Sets a console ticket's password on the running domain, live only, expiring at
    /// `valid_until_ms` (libvirt's `passwdValidTo`).
    ConsoleTicket {
        guest_id: String,
        vnc_port: u16,
        password: String,
        valid_until_ms: i64,
    },
}

/// Which template a disk is made from, for a node that must fetch its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateSource {
    pub id: String,
    /// The image's SHA-256 when corral knows it; the fetched copy must match.
    pub sha256: Option<String>,
}

/// A data disk's I/O limits as libvirt's `<iotune>` takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoTune {
    pub total_iops_sec: Option<u64>,
    pub total_bytes_sec: Option<u64>,
}

/// One part of a [`NodeAction::Sequence`]: what it does and how the operation's stage
/// names it while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubStep {
    pub stage: String,
    pub action: NodeAction,
}

/// What a node needs to compute a guest's init plan itself: the profile, its source as
/// it was when the step was dispatched, and the facts the profile sees. Profiles run on
/// the node, never inside the controller's write transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitInput {
    pub profile: String,
    pub source: String,
    pub facts: crate::script::guest::GuestFacts,
}

/// One entry of a node's cleanup list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanupItem {
    pub id: i64,
    pub action: NodeAction,
}

/// A node action's typed report: what a successful step carries as its `output`, one
/// type per action that reports anything. The node encodes it ([`StepOutcome::reported`]),
/// the controller reads it back as the same type (`OpRow::report`), never by field name.
pub trait Report: Serialize + serde::de::DeserializeOwned {}

impl Report for CleanupReport {}
impl Report for AgentReport {}
impl Report for SnapshotReport {}
impl Report for ConvertReport {}
impl Report for ResizeReport {}
impl Report for MigrateReport {}
impl Report for CopyReport {}

/// What a node reports for [`NodeAction::CreateSnapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// The guest's state when it was taken (`running`, `shutoff`, …).
    pub vm_state: String,
    /// Whether its filesystems were frozen through the guest agent for it.
    pub quiesced: bool,
}

/// What a node reports for [`NodeAction::ConvertImage`]: the image it wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvertReport {
    pub sha256: String,
    pub size_bytes: u64,
    pub path: String,
}

/// Where a migration goes: the target node's hypervisor as the source reaches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationTarget {
    pub node_id: String,
    /// The target's libvirt URI, as its node reports it (`migration_uri`).
    pub libvirt_uri: String,
    /// The address the target's QEMU listens on for the memory and disk streams.
    pub address: String,
    /// The address VNC listens on there.
    pub vnc_listen: String,
    /// The disks live in storage both nodes see (no copy).
    #[serde(default)]
    pub shared_storage: bool,
}

/// How a migration may use the link and the guest (S65).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationTuning {
    /// MiB/s the migration may use; None: unlimited.
    #[serde(default)]
    pub bandwidth_mib: Option<u64>,
    /// Throttle the guest's vCPUs when it dirties memory faster than the link copies it.
    #[serde(default)]
    pub auto_converge: bool,
    /// Switch to post-copy when pre-copy does not converge.
    #[serde(default)]
    pub postcopy: bool,
}

/// A running migration, from libvirt's job statistics (polled about once a second).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrationStats {
    pub percent: u32,
    /// Memory and disk bytes processed, remaining and in all (libvirt's data_*).
    pub processed_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    /// Bytes per second the guest dirties, and the pre-copy pass.
    pub dirty_rate_bps: u64,
    pub iteration: u64,
    /// Transfer rate, bytes per second (memory and disk).
    pub rate_bps: u64,
    /// Downtime libvirt expects at the switch-over, ms.
    pub expected_downtime_ms: u64,
    /// Seconds left at the current rate; None before a rate is known.
    pub eta_secs: Option<u64>,
    pub elapsed_ms: u64,
}

/// What a node reports for [`NodeAction::Migrate`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MigrateReport {
    /// The last statistics before completion (libvirt's downtime is the real one).
    pub stats: MigrationStats,
    /// Downtime as libvirt measured it, ms (0 when it did not say).
    pub downtime_ms: u64,
    /// The domain already ran on the target when the job (re)ran: nothing was moved.
    pub already_there: bool,
}

/// What a node reports for [`NodeAction::CopyOut`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyReport {
    /// Bytes sent to the target (0 with shared storage).
    pub bytes: u64,
    /// Snapshots whose metadata was defined on the target.
    pub snapshots: u32,
    pub elapsed_ms: u64,
}

/// What a node reports for [`NodeAction::ResizeDomain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResizeReport {
    /// Resized while running (else in the definition).
    pub live: bool,
    /// vCPUs the guest reports online after a live resize, when its agent answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus_online: Option<u32>,
}

/// What a node reports for a [`NodeAction::Cleanup`] (the step's `output`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub results: Vec<CleanupResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanupResult {
    pub id: i64,
    /// None when the object is gone (removed now, or already).
    pub error: Option<String>,
}

/// A group of agent actions with one outcome: one boot job, or one init plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentBatch {
    pub id: String,
    pub actions: Vec<AgentAction>,
    /// A boot job's script (source pinned at queue time), evaluated by the node right
    /// before the run, under its own deadline: its actions replace `actions`. No user
    /// script runs in the controller, so none holds its writer transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<Box<BatchScript>>,
}

/// What a node needs to evaluate a boot job's script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchScript {
    pub name: String,
    pub source: String,
    pub params: serde_json::Value,
    pub facts: crate::script::guest::GuestFacts,
}

/// What a node reports for an [`NodeAction::AgentRun`] (the step's `output`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// How long the agent took to answer after the job arrived.
    pub agent_wait_ms: u64,
    /// From the agent's first answer to the last action's end.
    pub run_ms: u64,
    pub batches: Vec<BatchReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    pub id: String,
    pub ok: bool,
    pub error: Option<String>,
    pub results: Vec<ActionReport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionReport {
    pub action: String,
    pub ok: bool,
    pub exit_code: Option<i64>,
    /// The first KiB of stdout and stderr.
    pub output: String,
}

impl NodeAction {
    /// The action's name, as in the wire format.
    pub fn name(&self) -> &'static str {
        match self {
            NodeAction::CreateDisk { .. } => "create_disk",
            NodeAction::RemoveFile { .. } => "remove_file",
            NodeAction::BuildSeed { .. } => "build_seed",
            NodeAction::Define { .. } => "define",
            NodeAction::UpdateInterface { .. } => "update_interface",
            NodeAction::Undefine { .. } => "undefine",
            NodeAction::Start { .. } => "start",
            NodeAction::Destroy { .. } => "destroy",
            NodeAction::Shutdown { .. } => "shutdown",
            NodeAction::Reboot { .. } => "reboot",
            NodeAction::Reset { .. } => "reset",
            NodeAction::Suspend { .. } => "suspend",
            NodeAction::Resume { .. } => "resume",
            NodeAction::AgentRun { .. } => "agent_run",
            NodeAction::AgentInit { .. } => "agent_init",
            NodeAction::Sequence { .. } => "sequence",
            NodeAction::Cleanup { .. } => "cleanup",
            NodeAction::ConsoleTicket { .. } => "console_ticket",
            NodeAction::CreateVolume { .. } => "create_volume",
            NodeAction::AttachDisk { .. } => "attach_disk",
            NodeAction::DetachDisk { .. } => "detach_disk",
            NodeAction::GrowDisk { .. } => "grow_disk",
            NodeAction::SetDiskLimits { .. } => "set_disk_limits",
            NodeAction::CreateSnapshot { .. } => "create_snapshot",
            NodeAction::ResizeDomain { .. } => "resize_domain",
            NodeAction::Migrate { .. } => "migrate",
            NodeAction::DiscardCopy { .. } => "discard_copy",
            NodeAction::CopyOut { .. } => "copy_out",
            NodeAction::Rebase { .. } => "rebase",
            NodeAction::SetHa { .. } => "set_ha",
            NodeAction::ConvertImage { .. } => "convert_image",
            NodeAction::RevertSnapshot { .. } => "revert_snapshot",
            NodeAction::DeleteSnapshot { .. } => "delete_snapshot",
        }
    }

    /// The single actions this one consists of, in order (a sequence's sub-steps).
    pub fn flatten(&self) -> Vec<&NodeAction> {
        match self {
            NodeAction::Sequence { steps } => {
                steps.iter().flat_map(|s| s.action.flatten()).collect()
            }
            other => vec![other],
        }
    }

    /// The action's own time limit, when it has one: its step's lease must outlast it,
    /// or the step would be dispatched again while the first run still waits.
    pub fn time_limit_secs(&self) -> Option<u64> {
        match self {
            NodeAction::Shutdown { timeout_secs, .. } => Some(*timeout_secs),
            NodeAction::AgentRun { wait_secs, .. } | NodeAction::AgentInit { wait_secs, .. } => {
                Some(*wait_secs)
            }
            NodeAction::Sequence { steps } => steps
                .iter()
                .filter_map(|s| s.action.time_limit_secs())
                .reduce(u64::saturating_add),
            _ => None,
        }
    }
}

/// A node job: one saga step (or its undo) for one operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeJob {
    pub op_id: String,
    pub step: usize,
    pub attempt: u32,
    pub undo: bool,
    pub action: NodeAction,
}

/// The outcome of a node job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StepOutcome {
    Ok {
        /// Guest state after the action, when the action changes it.
        guest_state: Option<String>,
        /// Domain XML after the action (S11), when it changed.
        domain_xml: Option<String>,
        /// Structured results ([`AgentReport`] for agent runs).
        #[serde(default)]
        output: Option<serde_json::Value>,
    },
    Failed {
        error: String,
        /// Permanent failures unwind at once; transient ones are re-dispatched.
        permanent: bool,
        /// Set when the node refused the job by its own rules.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refusal: Option<Refusal>,
    },
}

impl StepOutcome {
    /// A success carrying the action's typed report.
    pub fn reported<R: Report>(
        guest_state: Option<String>,
        domain_xml: Option<String>,
        report: &R,
    ) -> Result<StepOutcome, serde_json::Error> {
        Ok(StepOutcome::Ok {
            guest_state,
            domain_xml,
            output: Some(serde_json::to_value(report)?),
        })
    }
}

/// Why a node refused a job by its own rules, whatever the controller asked of it. The
/// code travels with the step's result, is kept on the failed step and shown as the
/// operation's `error_code`, so clients act on what was refused, never on a message's
/// wording. Codes are stored in rows: append only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, poem_openapi::Enum)]
#[serde(rename_all = "snake_case")]
#[oai(rename_all = "snake_case")]
pub enum Refusal {
    /// A NIC on a bridge outside the node's `allowed_bridges`.
    BridgeNotAllowed,
    /// A file outside the node's disk-image directory.
    OutsideStorage,
    /// A template image outside the node's image directories.
    OutsideImageDirs,
}

/// Facts a node reports with every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeFacts {
    pub hostname: String,
    pub address: String,
    pub domain_type: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub free_memory_mib: u64,
    pub load1: f64,
    pub storage_dir: String,
    /// `vm_network_bridge`: where guests' NICs attach by default (S68).
    pub bridge: String,
    /// `vm_manage_network_bridge`: VNC and migration traffic (S68).
    #[serde(default)]
    pub manage_bridge: String,
    pub hypervisor_uri: String,
    pub version: String,
    pub workers: Vec<WorkerStatus>,
    /// Linux bridges present on the host (placement needs the guest's network there).
    #[serde(default)]
    pub bridges: Vec<String>,
    /// CPU model and whether it has VT-x/AMD-V.
    #[serde(default)]
    pub cpu_model: String,
    #[serde(default)]
    pub cpu_virt: bool,
    /// Disk-image directory's filesystem: size and free space, MiB.
    #[serde(default)]
    pub storage_total_mib: u64,
    #[serde(default)]
    pub storage_free_mib: u64,
    /// Over-commit ratios the node allows (vCPUs per core, guest memory per MiB).
    #[serde(default)]
    pub cpu_overcommit: Option<f64>,
    #[serde(default)]
    pub memory_overcommit: Option<f64>,
    /// This node's VNC port range (allocation is per node).
    #[serde(default)]
    pub vnc_ports: Option<(u16, u16)>,
    /// How another node's agent reaches this node's libvirt for a migration, and where
    /// this node's QEMU listens for one (None: an older node, which cannot take guests).
    #[serde(default)]
    pub migration_uri: Option<String>,
    #[serde(default)]
    pub migration_address: Option<String>,
    /// `shared_storage`: this node's disk-image directory is shared storage that the
    /// nodes with the same tag mount at the same path (HA and copy-free migration).
    #[serde(default)]
    pub shared_storage: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WorkerStatus {
    pub name: String,
    pub state: String,
}

/// A domain as the node's hypervisor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainInfo {
    pub guest_id: String,
    pub name: String,
    pub state: String,
}

/// Everything a node tells the controller, through the Redis Stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeEvent {
    Heartbeat {
        node_id: String,
        facts: Box<NodeFacts>,
        /// Node clock (S86): the controller stores this, not its own receive time.
        at_ms: i64,
    },
    StepFinished {
        node_id: String,
        op_id: String,
        step: usize,
        attempt: u32,
        undo: bool,
        outcome: StepOutcome,
        /// What the node logged while it ran the step (older nodes send none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        log: Vec<LogLine>,
    },
    /// A sub-step of a [`NodeAction::Sequence`] ended; `done` of `of` are now done.
    StepProgress {
        node_id: String,
        op_id: String,
        step: usize,
        attempt: u32,
        undo: bool,
        done: u32,
        of: u32,
        /// The stage of the sub-step that runs next.
        stage: String,
        /// A migration's figures (older nodes send none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        migration: Option<Box<MigrationStats>>,
    },
    /// A guest's state changed (seen by the node's watcher).
    DomainState {
        node_id: String,
        guest_id: String,
        state: String,
        at_ms: i64,
    },
    /// A domain's live XML changed (device attached, resized, ...): the controller's copy
    /// follows (S11).
    DomainXml {
        node_id: String,
        guest_id: String,
        xml: String,
    },
    /// The node's full view of its corral domains, for the periodic reconcile (S73).
    Inventory {
        node_id: String,
        domains: Vec<DomainInfo>,
        at_ms: i64,
    },
    /// One sample of the host's and its guests' figures (S22, S77), taken at `at_ms` by
    /// the node's clock (S86). See [`crate::metrics`] for the names.
    Metrics {
        node_id: String,
        at_ms: i64,
        host: crate::metrics::Values,
        guests: Vec<GuestSample>,
    },
}

/// One guest's figures in a [`NodeEvent::Metrics`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestSample {
    pub guest_id: String,
    pub values: crate::metrics::Values,
}

/// One log line of a node step, sent with its result for the operation's log (S31).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// ms, the node's clock.
    pub at_ms: i64,
    pub level: String,
    /// The short message.
    pub message: String,
    /// The fields logged with it (`key=value`, space-separated); empty when none.
    #[serde(default)]
    pub detail: String,
}

impl NodeEvent {
    /// The node the event says it comes from; the controller believes it only when it is
    /// the node whose stream carried it.
    pub fn node_id(&self) -> &str {
        match self {
            NodeEvent::Heartbeat { node_id, .. }
            | NodeEvent::StepFinished { node_id, .. }
            | NodeEvent::StepProgress { node_id, .. }
            | NodeEvent::DomainState { node_id, .. }
            | NodeEvent::DomainXml { node_id, .. }
            | NodeEvent::Inventory { node_id, .. }
            | NodeEvent::Metrics { node_id, .. } => node_id,
        }
    }
}

/// A random alphanumeric secret of `len` characters.
pub fn random_secret(len: usize) -> String {
    use rand::distributions::Alphanumeric;
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_job_round_trips_as_tagged_json() {
        let job = NodeJob {
            op_id: "op".into(),
            step: 3,
            attempt: 2,
            undo: true,
            action: NodeAction::RemoveFile { path: "/x".into() },
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"action\":\"remove_file\""), "{text}");
        let back: NodeJob = serde_json::from_str(&text).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn op_state_parse_is_inverse_of_as_str() {
        for s in [
            OpState::Pending,
            OpState::Running,
            OpState::Undoing,
            OpState::Succeeded,
            OpState::Failed,
            OpState::Cancelled,
        ] {
            assert_eq!(OpState::parse(s.as_str()), Some(s));
        }
        assert_eq!(OpState::parse("bogus"), None);
    }
}
