//! Operation kinds: one module each (Oxide omicron's sagas are the model).
//!
//! A kind module holds:
//! * its steps as an enum ([`steps!`]) whose serde names are the names stored in operation
//!   rows and declared, with their stage, weight and lease, in `jobs/<kind>.toml`;
//! * its typed payload (part of [`Request`], the one request type stored as an operation's
//!   payload; the kind derives from it);
//! * `run`: each step's do and undo side by side, in one exhaustive `match` over the step
//!   enum, so a step without a handler does not compile;
//! * `on_finish`: what the kind does to its guest or node when the operation ends.
//!
//! A controller step does its work in the engine's transaction and answers
//! [`Effect::Done`]; a node step answers [`Effect::Node`] with the action to dispatch, or
//! [`Effect::Done`] when there is nothing to do on a node (the guest never got one).
//! The catalog (`crate::jobs`) refuses to load when a kind's declared step list differs
//! from its enum, so a misspelled step in `jobs/` fails at start and in the unit tests.

pub mod boot_jobs;
pub mod change_ip;
pub mod console;
pub mod create;
pub mod delete;
pub mod disk_attach;
pub mod disk_create;
pub mod disk_delete;
pub mod disk_detach;
pub mod disk_limits;
pub mod disk_resize;
pub mod node_cleanup;
pub mod node_remove;
pub mod power;
pub mod resize;
pub mod set_bandwidth;
pub mod snapshot_create;
pub mod snapshot_delete;
pub mod snapshot_revert;
pub mod to_template;

use serde::de::DeserializeOwned;

use super::steps::{StepEnv, StepError};
use crate::controller::store::{OpRow, StoreError, Tx};
use crate::model::{NodeAction, OpState};

/// Declares a kind's step enum: variants with their stable stored names, `ALL` in order,
/// `name()` and `parse()`.
macro_rules! steps {
    ($(#[$m:meta])* pub enum $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl $name {
            /// Every step, in the order the kind runs them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The stored name (append-only: rows in the field carry it).
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }
    };
}
pub(crate) use steps;

/// Every operation kind. The stored names are append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    GuestCreate,
    GuestDelete,
    GuestStart,
    GuestShutdown,
    GuestPoweroff,
    GuestReboot,
    GuestReset,
    GuestSuspend,
    GuestResume,
    GuestSetBandwidth,
    GuestBootJobs,
    GuestChangeIp,
    NodeRemove,
    NodeCleanup,
    GuestConsole,
    DiskCreate,
    DiskAttach,
    DiskDetach,
    DiskResize,
    DiskSetLimits,
    DiskDelete,
    SnapshotCreate,
    SnapshotRevert,
    SnapshotDelete,
    GuestResize,
    TemplateFromGuest,
}

impl OpKind {
    pub const ALL: &'static [OpKind] = &[
        OpKind::GuestCreate,
        OpKind::GuestDelete,
        OpKind::GuestStart,
        OpKind::GuestShutdown,
        OpKind::GuestPoweroff,
        OpKind::GuestReboot,
        OpKind::GuestReset,
        OpKind::GuestSuspend,
        OpKind::GuestResume,
        OpKind::GuestSetBandwidth,
        OpKind::GuestBootJobs,
        OpKind::GuestChangeIp,
        OpKind::NodeRemove,
        OpKind::NodeCleanup,
        OpKind::GuestConsole,
        OpKind::DiskCreate,
        OpKind::DiskAttach,
        OpKind::DiskDetach,
        OpKind::DiskResize,
        OpKind::DiskSetLimits,
        OpKind::DiskDelete,
        OpKind::SnapshotCreate,
        OpKind::SnapshotRevert,
        OpKind::SnapshotDelete,
        OpKind::GuestResize,
        OpKind::TemplateFromGuest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::GuestCreate => "guest.create",
            OpKind::GuestDelete => "guest.delete",
            OpKind::GuestStart => "guest.start",
            OpKind::GuestShutdown => "guest.shutdown",
            OpKind::GuestPoweroff => "guest.poweroff",
            OpKind::GuestReboot => "guest.reboot",
            OpKind::GuestReset => "guest.reset",
            OpKind::GuestSuspend => "guest.suspend",
            OpKind::GuestResume => "guest.resume",
            OpKind::GuestSetBandwidth => "guest.set_bandwidth",
            OpKind::GuestBootJobs => "guest.boot_jobs",
            OpKind::GuestChangeIp => "guest.change_ip",
            OpKind::NodeRemove => "node.remove",
            OpKind::NodeCleanup => "node.cleanup",
            OpKind::GuestConsole => "guest.console",
            OpKind::DiskCreate => "disk.create",
            OpKind::DiskAttach => "disk.attach",
            OpKind::DiskDetach => "disk.detach",
            OpKind::DiskResize => "disk.resize",
            OpKind::DiskSetLimits => "disk.set_limits",
            OpKind::DiskDelete => "disk.delete",
            OpKind::SnapshotCreate => "snapshot.create",
            OpKind::SnapshotRevert => "snapshot.revert",
            OpKind::SnapshotDelete => "snapshot.delete",
            OpKind::GuestResize => "guest.resize",
            OpKind::TemplateFromGuest => "template.from_guest",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        OpKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// The kind's step names, in order, from its step enum.
    pub fn step_names(self) -> Vec<&'static str> {
        fn names<S: Copy>(all: &[S], name: fn(S) -> &'static str) -> Vec<&'static str> {
            all.iter().map(|s| name(*s)).collect()
        }
        match self {
            OpKind::GuestCreate => names(create::Step::ALL, create::Step::name),
            OpKind::GuestDelete => names(delete::Step::ALL, delete::Step::name),
            OpKind::GuestStart
            | OpKind::GuestShutdown
            | OpKind::GuestPoweroff
            | OpKind::GuestReboot
            | OpKind::GuestReset
            | OpKind::GuestSuspend
            | OpKind::GuestResume => vec![power::Power::step_of(self).name()],
            OpKind::GuestSetBandwidth => names(set_bandwidth::Step::ALL, set_bandwidth::Step::name),
            OpKind::GuestConsole => names(console::Step::ALL, console::Step::name),
            OpKind::DiskCreate => names(disk_create::Step::ALL, disk_create::Step::name),
            OpKind::DiskAttach => names(disk_attach::Step::ALL, disk_attach::Step::name),
            OpKind::DiskDetach => names(disk_detach::Step::ALL, disk_detach::Step::name),
            OpKind::DiskResize => names(disk_resize::Step::ALL, disk_resize::Step::name),
            OpKind::DiskSetLimits => names(disk_limits::Step::ALL, disk_limits::Step::name),
            OpKind::DiskDelete => names(disk_delete::Step::ALL, disk_delete::Step::name),
            OpKind::SnapshotCreate => {
                names(snapshot_create::Step::ALL, snapshot_create::Step::name)
            }
            OpKind::SnapshotRevert => {
                names(snapshot_revert::Step::ALL, snapshot_revert::Step::name)
            }
            OpKind::SnapshotDelete => {
                names(snapshot_delete::Step::ALL, snapshot_delete::Step::name)
            }
            OpKind::GuestResize => names(resize::Step::ALL, resize::Step::name),
            OpKind::TemplateFromGuest => names(to_template::Step::ALL, to_template::Step::name),
            OpKind::GuestBootJobs => names(boot_jobs::Step::ALL, boot_jobs::Step::name),
            OpKind::GuestChangeIp => names(change_ip::Step::ALL, change_ip::Step::name),
            OpKind::NodeRemove => names(node_remove::Step::ALL, node_remove::Step::name),
            OpKind::NodeCleanup => names(node_cleanup::Step::ALL, node_cleanup::Step::name),
        }
    }

    /// The kind's declaration in `jobs/` (stage labels, weights, leases).
    pub fn declaration(self) -> &'static str {
        match self {
            OpKind::GuestCreate => include_str!("../../../../jobs/guest.create.toml"),
            OpKind::GuestDelete => include_str!("../../../../jobs/guest.delete.toml"),
            OpKind::GuestStart => include_str!("../../../../jobs/guest.start.toml"),
            OpKind::GuestShutdown => include_str!("../../../../jobs/guest.shutdown.toml"),
            OpKind::GuestPoweroff => include_str!("../../../../jobs/guest.poweroff.toml"),
            OpKind::GuestReboot => include_str!("../../../../jobs/guest.reboot.toml"),
            OpKind::GuestReset => include_str!("../../../../jobs/guest.reset.toml"),
            OpKind::GuestSuspend => include_str!("../../../../jobs/guest.suspend.toml"),
            OpKind::GuestResume => include_str!("../../../../jobs/guest.resume.toml"),
            OpKind::GuestConsole => include_str!("../../../../jobs/guest.console.toml"),
            OpKind::DiskCreate => include_str!("../../../../jobs/disk.create.toml"),
            OpKind::DiskAttach => include_str!("../../../../jobs/disk.attach.toml"),
            OpKind::DiskDetach => include_str!("../../../../jobs/disk.detach.toml"),
            OpKind::DiskResize => include_str!("../../../../jobs/disk.resize.toml"),
            OpKind::DiskSetLimits => include_str!("../../../../jobs/disk.set_limits.toml"),
            OpKind::DiskDelete => include_str!("../../../../jobs/disk.delete.toml"),
            OpKind::SnapshotCreate => include_str!("../../../../jobs/snapshot.create.toml"),
            OpKind::SnapshotRevert => include_str!("../../../../jobs/snapshot.revert.toml"),
            OpKind::SnapshotDelete => include_str!("../../../../jobs/snapshot.delete.toml"),
            OpKind::GuestResize => include_str!("../../../../jobs/guest.resize.toml"),
            OpKind::TemplateFromGuest => include_str!("../../../../jobs/template.from_guest.toml"),
            OpKind::GuestSetBandwidth => {
                include_str!("../../../../jobs/guest.set_bandwidth.toml")
            }
            OpKind::GuestBootJobs => include_str!("../../../../jobs/guest.boot_jobs.toml"),
            OpKind::GuestChangeIp => include_str!("../../../../jobs/guest.change_ip.toml"),
            OpKind::NodeRemove => include_str!("../../../../jobs/node.remove.toml"),
            OpKind::NodeCleanup => include_str!("../../../../jobs/node.cleanup.toml"),
        }
    }

    /// A successful run of this kind boots the guest (its boot jobs become due).
    pub fn boots_guest(self) -> bool {
        matches!(
            self,
            OpKind::GuestCreate | OpKind::GuestStart | OpKind::GuestReboot | OpKind::GuestReset
        )
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The typed request of an operation: what the API (or the controller itself) asked for.
/// Stored as the operation's `kind` and `payload` columns; decoded strictly, so a corrupt
/// payload fails its operation with a message instead of running with defaults.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The guest row holds the whole request (sizes, template, pool, secrets).
    GuestCreate,
    GuestDelete,
    Power(power::Power),
    SetBandwidth(set_bandwidth::Payload),
    Console(console::Payload),
    DiskCreate(disk_create::DiskRef),
    DiskAttach(disk_attach::Payload),
    DiskDetach(disk_create::DiskRef),
    DiskResize(disk_resize::Payload),
    DiskSetLimits(disk_limits::Payload),
    DiskDelete(disk_create::DiskRef),
    SnapshotCreate(snapshot_create::SnapshotRef),
    SnapshotRevert(snapshot_create::SnapshotRef),
    SnapshotDelete(snapshot_create::SnapshotRef),
    Resize(resize::Payload),
    ToTemplate(to_template::Payload),
    BootJobs(boot_jobs::RunPayload),
    ChangeIp(change_ip::ChangeIpPayload),
    NodeRemove(node_remove::Payload),
    NodeCleanup,
}

#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error("unknown operation kind {0}")]
    Unknown(String),
    #[error("payload of {kind} is corrupt: {source}")]
    Payload {
        kind: OpKind,
        #[source]
        source: serde_json::Error,
    },
}

fn typed<T: DeserializeOwned>(kind: OpKind, payload: &str) -> Result<T, KindError> {
    serde_json::from_str(payload).map_err(|source| KindError::Payload { kind, source })
}

/// The payload of kinds that take none: an empty object (or anything without meaning).
fn none(kind: OpKind, payload: &str) -> Result<(), KindError> {
    typed::<serde_json::Map<String, serde_json::Value>>(kind, payload).map(|_| ())
}

impl Request {
    pub fn kind(&self) -> OpKind {
        match self {
            Request::GuestCreate => OpKind::GuestCreate,
            Request::GuestDelete => OpKind::GuestDelete,
            Request::Power(p) => p.kind(),
            Request::SetBandwidth(_) => OpKind::GuestSetBandwidth,
            Request::Console(_) => OpKind::GuestConsole,
            Request::DiskCreate(_) => OpKind::DiskCreate,
            Request::DiskAttach(_) => OpKind::DiskAttach,
            Request::DiskDetach(_) => OpKind::DiskDetach,
            Request::DiskResize(_) => OpKind::DiskResize,
            Request::DiskSetLimits(_) => OpKind::DiskSetLimits,
            Request::DiskDelete(_) => OpKind::DiskDelete,
            Request::SnapshotCreate(_) => OpKind::SnapshotCreate,
            Request::SnapshotRevert(_) => OpKind::SnapshotRevert,
            Request::SnapshotDelete(_) => OpKind::SnapshotDelete,
            Request::Resize(_) => OpKind::GuestResize,
            Request::ToTemplate(_) => OpKind::TemplateFromGuest,
            Request::BootJobs(_) => OpKind::GuestBootJobs,
            Request::ChangeIp(_) => OpKind::GuestChangeIp,
            Request::NodeRemove(_) => OpKind::NodeRemove,
            Request::NodeCleanup => OpKind::NodeCleanup,
        }
    }

    /// The stored payload.
    pub fn payload(&self) -> Result<serde_json::Value, StoreError> {
        Ok(match self {
            Request::GuestCreate | Request::GuestDelete | Request::NodeCleanup => {
                serde_json::json!({})
            }
            Request::Power(p) => p.payload(),
            Request::SetBandwidth(p) => serde_json::to_value(p)?,
            Request::Console(p) => serde_json::to_value(p)?,
            Request::DiskCreate(p) | Request::DiskDetach(p) | Request::DiskDelete(p) => {
                serde_json::to_value(p)?
            }
            Request::DiskAttach(p) => serde_json::to_value(p)?,
            Request::DiskResize(p) => serde_json::to_value(p)?,
            Request::DiskSetLimits(p) => serde_json::to_value(p)?,
            Request::Resize(p) => serde_json::to_value(p)?,
            Request::ToTemplate(p) => serde_json::to_value(p)?,
            Request::SnapshotCreate(p)
            | Request::SnapshotRevert(p)
            | Request::SnapshotDelete(p) => serde_json::to_value(p)?,
            Request::BootJobs(p) => serde_json::to_value(p)?,
            Request::ChangeIp(p) => serde_json::to_value(p)?,
            Request::NodeRemove(p) => serde_json::to_value(p)?,
        })
    }

    /// Decodes a stored operation's request.
    pub fn decode(kind: &str, payload: &str) -> Result<Request, KindError> {
        let k = OpKind::parse(kind).ok_or_else(|| KindError::Unknown(kind.to_string()))?;
        Ok(match k {
            OpKind::GuestCreate => none(k, payload).map(|_| Request::GuestCreate)?,
            OpKind::GuestDelete => none(k, payload).map(|_| Request::GuestDelete)?,
            OpKind::GuestStart
            | OpKind::GuestShutdown
            | OpKind::GuestPoweroff
            | OpKind::GuestReboot
            | OpKind::GuestReset
            | OpKind::GuestSuspend
            | OpKind::GuestResume => {
                let p: power::PowerPayload = typed(k, payload)?;
                Request::Power(power::Power::from_kind(k, p.timeout_secs))
            }
            OpKind::GuestSetBandwidth => Request::SetBandwidth(typed(k, payload)?),
            OpKind::GuestConsole => Request::Console(typed(k, payload)?),
            OpKind::DiskCreate => Request::DiskCreate(typed(k, payload)?),
            OpKind::DiskAttach => Request::DiskAttach(typed(k, payload)?),
            OpKind::DiskDetach => Request::DiskDetach(typed(k, payload)?),
            OpKind::DiskResize => Request::DiskResize(typed(k, payload)?),
            OpKind::DiskSetLimits => Request::DiskSetLimits(typed(k, payload)?),
            OpKind::DiskDelete => Request::DiskDelete(typed(k, payload)?),
            OpKind::SnapshotCreate => Request::SnapshotCreate(typed(k, payload)?),
            OpKind::SnapshotRevert => Request::SnapshotRevert(typed(k, payload)?),
            OpKind::SnapshotDelete => Request::SnapshotDelete(typed(k, payload)?),
            OpKind::GuestResize => Request::Resize(typed(k, payload)?),
            OpKind::TemplateFromGuest => Request::ToTemplate(typed(k, payload)?),
            OpKind::GuestBootJobs => Request::BootJobs(typed(k, payload)?),
            OpKind::GuestChangeIp => Request::ChangeIp(typed(k, payload)?),
            OpKind::NodeRemove => Request::NodeRemove(typed(k, payload)?),
            OpKind::NodeCleanup => none(k, payload).map(|_| Request::NodeCleanup)?,
        })
    }

    /// The request stored in an operation row.
    pub fn of(op: &OpRow) -> Result<Request, KindError> {
        Request::decode(&op.kind, &op.payload)
    }
}

/// What a step came to.
#[derive(Debug)]
pub enum Effect {
    /// Finished here (a controller step's work is in the transaction), or nothing to do.
    Done,
    /// Dispatch this action to this node's queue and wait for its result.
    Node { node: String, action: NodeAction },
}

/// What a step works with: the engine's open transaction, the controller's settings, the
/// operation row (a step may record what it chose in the row: node, payload).
pub struct Ctx<'a, 'c> {
    pub tx: &'a mut Tx<'c>,
    pub env: &'a StepEnv,
    pub op: &'a mut OpRow,
    /// An undo of a node step failed earlier in this unwind: the node may still hold
    /// what the leases name, so undo steps keep them (marked for cleanup) instead of
    /// releasing them.
    pub keep_leases: bool,
}

/// A node action for the guest's node; nothing to do when there is no action or the guest
/// never got a node.
pub fn on_guest_node(g: &crate::controller::store::GuestRow, action: Option<NodeAction>) -> Effect {
    match (action, &g.node_id) {
        (Some(action), Some(node)) => Effect::Node {
            node: node.clone(),
            action,
        },
        _ => Effect::Done,
    }
}

fn unknown_step(kind: OpKind, name: &str) -> StepError {
    StepError::Permanent(format!("operation kind {kind} has no step {name}"))
}

/// Runs step `name` of `req`, forward or as its undo.
pub async fn run(
    cx: &mut Ctx<'_, '_>,
    req: &Request,
    name: &str,
    undo: bool,
) -> Result<Effect, StepError> {
    let kind = req.kind();
    match req {
        Request::GuestCreate => {
            let s = create::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            create::run(cx, s, undo).await
        }
        Request::GuestDelete => {
            let s = delete::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            delete::run(cx, s, undo).await
        }
        Request::Power(p) => {
            if name != power::Power::step_of(kind).name() {
                return Err(unknown_step(kind, name));
            }
            power::run(cx, p, undo).await
        }
        Request::SetBandwidth(p) => {
            let s = set_bandwidth::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            set_bandwidth::run(cx, p, s, undo).await
        }
        Request::Console(p) => {
            let s = console::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            console::run(cx, p, s, undo).await
        }
        Request::DiskCreate(p) => {
            let s = disk_create::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            disk_create::run(cx, p, s, undo).await
        }
        Request::DiskAttach(p) => {
            let s = disk_attach::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            disk_attach::run(cx, p, s, undo).await
        }
        Request::DiskDetach(p) => {
            let s = disk_detach::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            disk_detach::run(cx, p, s, undo).await
        }
        Request::DiskResize(p) => {
            let s = disk_resize::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            disk_resize::run(cx, p, s, undo).await
        }
        Request::DiskSetLimits(p) => {
            let s = disk_limits::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            disk_limits::run(cx, p, s, undo).await
        }
        Request::DiskDelete(p) => {
            let s = disk_delete::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            disk_delete::run(cx, p, s, undo).await
        }
        Request::SnapshotCreate(p) => {
            let s = snapshot_create::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            snapshot_create::run(cx, p, s, undo).await
        }
        Request::SnapshotRevert(p) => {
            let s = snapshot_revert::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            snapshot_revert::run(cx, p, s, undo).await
        }
        Request::ToTemplate(p) => {
            let s = to_template::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            to_template::run(cx, p, s, undo).await
        }
        Request::Resize(p) => {
            let s = resize::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            resize::run(cx, p, s, undo).await
        }
        Request::SnapshotDelete(p) => {
            let s = snapshot_delete::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            snapshot_delete::run(cx, p, s, undo).await
        }
        Request::BootJobs(p) => {
            let s = boot_jobs::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            boot_jobs::run(cx, p, s, undo).await
        }
        Request::ChangeIp(_) => {
            let s = change_ip::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            change_ip::run(cx, s, undo).await
        }
        Request::NodeRemove(p) => {
            let s = node_remove::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            node_remove::run(cx, p, s, undo).await
        }
        Request::NodeCleanup => {
            let s = node_cleanup::Step::parse(name).ok_or_else(|| unknown_step(kind, name))?;
            node_cleanup::run(cx, s, undo).await
        }
    }
}

/// What the kind does when its operation ends (before the guest's lock is released).
pub async fn on_finish(
    tx: &mut Tx<'_>,
    req: &Request,
    op: &mut OpRow,
    state: OpState,
) -> Result<(), StoreError> {
    match req {
        Request::Console(p) => {
            // The ticket's password is forgotten as soon as its operation ends.
            op.payload = serde_json::to_string(&console::Payload {
                password: String::new(),
                ..p.clone()
            })?;
        }
        Request::DiskCreate(p) => disk_create::on_finish(tx, p, state).await?,
        Request::SnapshotCreate(p) => snapshot_create::on_finish(tx, p, state).await?,
        _ => {}
    }
    // A disk operation's hold on its disk ends with it.
    crate::controller::store::unlock_disks(tx, &op.id).await?;
    let Some(guest) = op.guest_id.as_deref() else {
        return Ok(());
    };
    match req {
        Request::GuestCreate => create::on_finish(tx, guest, state).await?,
        Request::GuestDelete => delete::on_finish(tx, guest, state).await?,
        Request::Power(_)
        | Request::SetBandwidth(_)
        | Request::Console(_)
        | Request::DiskCreate(_)
        | Request::DiskAttach(_)
        | Request::DiskDetach(_)
        | Request::DiskResize(_)
        | Request::DiskSetLimits(_)
        | Request::DiskDelete(_)
        | Request::SnapshotCreate(_)
        | Request::SnapshotRevert(_)
        | Request::SnapshotDelete(_)
        | Request::Resize(_)
        | Request::ToTemplate(_)
        | Request::BootJobs(_)
        | Request::ChangeIp(_)
        | Request::NodeRemove(_)
        | Request::NodeCleanup => {}
    }
    if state == OpState::Succeeded && req.kind().boots_guest() {
        // The guest has just booted: its pending boot jobs run once it is free.
        boot_jobs::mark_booted(tx, guest).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in OpKind::ALL {
            assert_eq!(OpKind::parse(k.as_str()), Some(*k));
            assert!(seen.insert(k.as_str()));
            assert!(!k.step_names().is_empty());
        }
    }

    #[test]
    fn requests_round_trip_through_their_stored_form() {
        let reqs = [
            Request::GuestCreate,
            Request::GuestDelete,
            Request::Power(power::Power::Shutdown {
                timeout_secs: Some(600),
            }),
            Request::Power(power::Power::Reset),
            Request::SetBandwidth(set_bandwidth::Payload { bandwidth: None }),
            Request::Console(console::Payload {
                password: "p".into(),
                valid_until_ms: 1,
            }),
            Request::DiskCreate(disk_create::DiskRef {
                disk_id: "d".into(),
            }),
            Request::DiskAttach(disk_attach::Payload {
                disk_id: "d".into(),
                target: "vdc".into(),
            }),
            Request::DiskDetach(disk_create::DiskRef {
                disk_id: "d".into(),
            }),
            Request::DiskResize(disk_resize::Payload {
                disk_id: "d".into(),
                size_mib: 2048,
            }),
            Request::DiskSetLimits(disk_limits::Payload {
                disk_id: "d".into(),
                limits: Some(crate::model::IoTune {
                    total_iops_sec: Some(100),
                    total_bytes_sec: None,
                }),
                old_limits: None,
            }),
            Request::DiskDelete(disk_create::DiskRef {
                disk_id: "d".into(),
            }),
            Request::SnapshotCreate(snapshot_create::SnapshotRef {
                snapshot_id: "s".into(),
            }),
            Request::SnapshotRevert(snapshot_create::SnapshotRef {
                snapshot_id: "s".into(),
            }),
            Request::SnapshotDelete(snapshot_create::SnapshotRef {
                snapshot_id: "s".into(),
            }),
            Request::Resize(resize::Payload {
                cpus: 2,
                memory_mib: 256,
                old_cpus: 1,
                old_memory_mib: 128,
                max_cpus: 4,
                ..Default::default()
            }),
            Request::ToTemplate(to_template::Payload {
                template_id: "t".into(),
                name: "n".into(),
                path: "/p".into(),
                os_type: "linux".into(),
                min_memory_mib: 64,
                os_init_profile: None,
                snapshot_id: Some("s".into()),
                owner_id: None,
            }),
            Request::BootJobs(boot_jobs::RunPayload {
                job_ids: Some(vec!["j".into()]),
            }),
            Request::ChangeIp(change_ip::ChangeIpPayload::default()),
            Request::NodeRemove(node_remove::Payload {
                delete_guests: true,
            }),
            Request::NodeCleanup,
        ];
        for r in reqs {
            let payload = r.payload().unwrap().to_string();
            assert_eq!(Request::decode(r.kind().as_str(), &payload).unwrap(), r);
        }
    }

    #[test]
    fn a_corrupt_payload_is_an_error_not_a_default() {
        let e = Request::decode("guest.set_bandwidth", r#"{"bandwidth": "fast"}"#).unwrap_err();
        assert!(e.to_string().contains("guest.set_bandwidth"), "{e}");
        assert!(Request::decode("guest.shutdown", r#"{"timeout_secs": "x"}"#).is_err());
        assert!(Request::decode("guest.create", "[]").is_err());
        assert!(matches!(
            Request::decode("guest.explode", "{}"),
            Err(KindError::Unknown(_))
        ));
    }
}
