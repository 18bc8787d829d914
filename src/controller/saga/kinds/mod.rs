//! Operation kinds: one module each (Oxide omicron's sagas are the model), registered by
//! one line in the [`kinds!`] table below.
//!
//! A kind module holds:
//! * its steps, once, as an enum ([`steps!`]): each variant's [`StepDef`] gives the name
//!   stored in operation rows, where it runs, whether it has an undo, its stage, weight and
//!   lease. The enum's order is the saga's;
//! * its typed payload (stored as the operation's payload, decoded strictly);
//! * a marker type implementing [`Kind`]: the stored name, the description, and `run`,
//!   each step's do and undo side by side in one exhaustive `match` over the step enum, so
//!   a step without a handler does not compile; optionally `on_finish`, what the kind does
//!   to its guest, disk or payload when the operation ends.
//!
//! From the table, [`kinds!`] builds [`OpKind`] (the kinds by name), [`Request`] (one
//! variant per kind, holding its payload: what the API or the controller asked for) and
//! their dispatch. Adding a kind is its module plus one line; a test walks the table
//! (names unique, every stored payload decodes back).
//!
//! A controller step does its work in the engine's transaction and answers
//! [`Effect::Done`]; a node step answers [`Effect::Node`] with the action to dispatch, or
//! [`Effect::Done`] when there is nothing to do on a node (the guest never got one).

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
pub mod drain;
pub mod guest_failover;
pub mod migrate;
pub mod migrate_cold;
pub mod node_cleanup;
pub mod node_failover;
pub mod node_remove;
pub mod power;
pub mod resize;
pub mod set_bandwidth;
pub mod set_ha;
pub mod snapshot_create;
pub mod snapshot_delete;
pub mod snapshot_revert;
pub mod to_template;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::steps::{StepEnv, StepError};
use crate::controller::store::{OpRow, StoreError, Tx};
use crate::jobs::KindDef;
pub use crate::jobs::StepDef;
use crate::model::{NodeAction, OpState};

/// Declares a kind's step enum, each variant with its [`StepDef`]:
/// ```ignore
/// steps! {
///     pub enum Step {
///         Place = StepDef::controller("place", "placing").undoable(),
///         Build = StepDef::node("build", "building the guest").undoable().weight(12),
///     }
/// }
/// ```
/// It implements [`StepSet`]: `ALL` in order, the definitions, `name()` and `parse()`.
macro_rules! steps {
    ($(#[$m:meta])* pub enum $name:ident { $($variant:ident = $def:expr),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl $crate::controller::saga::kinds::StepSet for $name {
            const ALL: &'static [$name] = &[$($name::$variant),+];
            const DEFS: &'static [$crate::jobs::StepDef] = &[$($def),+];
            fn index(self) -> usize {
                self as usize
            }
        }
        impl $name {
            /// The stored name (append-only: rows in the field carry it).
            pub fn name(self) -> &'static str {
                <$name as $crate::controller::saga::kinds::StepSet>::def(self).name
            }
        }
    };
}
pub(crate) use steps;

/// A kind's steps: an enum made by [`steps!`].
pub trait StepSet: Copy + Sized + 'static {
    /// Every step, in the order the kind runs them.
    const ALL: &'static [Self];
    /// Their definitions, in the same order.
    const DEFS: &'static [StepDef];
    /// The step's position in [`StepSet::ALL`].
    fn index(self) -> usize;
    fn def(self) -> &'static StepDef {
        &Self::DEFS[self.index()]
    }
    fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|s| Self::DEFS[s.index()].name == name)
    }
}

/// One operation kind, implemented by a marker type in the kind's module.
// The futures are never boxed or named: [`kinds!`] calls each impl by its concrete type,
// so whether they are `Send` is known there.
#[allow(async_fn_in_trait)]
pub trait Kind {
    /// The stored name (`guest.create`): append-only, rows in the field carry it.
    const NAME: &'static str;
    /// One sentence for people: `corral kinds`, the docs.
    const DESCRIPTION: &'static str;
    /// A successful run boots the guest (its boot jobs become due).
    const BOOTS_GUEST: bool = false;
    /// What the request carries, stored as the operation's payload.
    type Payload: Serialize + DeserializeOwned + Clone + PartialEq + Default + std::fmt::Debug;
    type Step: StepSet;

    /// Step `step`'s do (`undo = false`) or undo.
    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &Self::Payload,
        step: Self::Step,
        undo: bool,
    ) -> Result<Effect, StepError>;

    /// What the kind does when its operation ends (before the guest's lock is released);
    /// a change to `p` is stored as the operation's payload.
    async fn on_finish(
        tx: &mut Tx<'_>,
        p: &mut Self::Payload,
        guest: Option<&str>,
        state: OpState,
    ) -> Result<(), StoreError> {
        let _ = (tx, p, guest, state);
        Ok(())
    }
}

/// The payload of kinds that take none: stored as `{}`; any JSON object decodes to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoPayload;

impl Serialize for NoPayload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::ser::SerializeMap::end(s.serialize_map(Some(0))?)
    }
}

impl<'de> Deserialize<'de> for NoPayload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        std::collections::BTreeMap::<String, serde::de::IgnoredAny>::deserialize(d)
            .map(|_| NoPayload)
    }
}

/// Builds [`OpKind`], [`Request`] and their dispatch from one table of
/// `Variant => module::Marker` lines.
macro_rules! kinds {
    ($($variant:ident => $kind:ty),+ $(,)?) => {
        /// Every operation kind. The stored names are append-only.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum OpKind { $($variant),+ }

        impl OpKind {
            pub const ALL: &'static [OpKind] = &[$(OpKind::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(OpKind::$variant => <$kind as Kind>::NAME),+ }
            }

            /// The kind's table: name, description, steps.
            pub fn def(self) -> KindDef {
                match self {
                    $(OpKind::$variant => KindDef {
                        kind: <$kind as Kind>::NAME,
                        description: <$kind as Kind>::DESCRIPTION,
                        steps: <<$kind as Kind>::Step as StepSet>::DEFS,
                    }),+
                }
            }

            /// A successful run of this kind boots the guest (its boot jobs become due).
            pub fn boots_guest(self) -> bool {
                match self { $(OpKind::$variant => <$kind as Kind>::BOOTS_GUEST),+ }
            }
        }

        /// The typed request of an operation: what the API (or the controller itself)
        /// asked for. Stored as the operation's `kind` and `payload` columns; decoded
        /// strictly, so a corrupt payload fails its operation with a message instead of
        /// running with defaults.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Request { $($variant(<$kind as Kind>::Payload)),+ }

        impl Request {
            pub fn kind(&self) -> OpKind {
                match self { $(Request::$variant(_) => OpKind::$variant),+ }
            }

            /// The stored payload.
            pub fn payload(&self) -> Result<serde_json::Value, StoreError> {
                Ok(match self { $(Request::$variant(p) => serde_json::to_value(p)?),+ })
            }

            /// Decodes a stored operation's request.
            pub fn decode(kind: &str, payload: &str) -> Result<Request, KindError> {
                let k = OpKind::parse(kind).ok_or_else(|| KindError::Unknown(kind.to_string()))?;
                Ok(match k { $(OpKind::$variant => Request::$variant(typed(k, payload)?)),+ })
            }

            /// Runs step `name`, forward or as its undo.
            async fn run_step(
                &self,
                cx: &mut Ctx<'_, '_>,
                name: &str,
                undo: bool,
            ) -> Result<Effect, StepError> {
                match self {
                    $(Request::$variant(p) => {
                        let s = <<$kind as Kind>::Step as StepSet>::parse(name)
                            .ok_or_else(|| unknown_step(self.kind(), name))?;
                        <$kind as Kind>::run(cx, p, s, undo).await
                    }),+
                }
            }

            /// A request of kind `k` with the default payload (tests walk the registry).
            #[cfg(test)]
            pub fn sample(k: OpKind) -> Request {
                match k { $(OpKind::$variant => Request::$variant(Default::default())),+ }
            }

            /// The kind's own end (see [`Kind::on_finish`]).
            async fn finish(
                &mut self,
                tx: &mut Tx<'_>,
                guest: Option<&str>,
                state: OpState,
            ) -> Result<(), StoreError> {
                match self {
                    $(Request::$variant(p) => <$kind as Kind>::on_finish(tx, p, guest, state).await),+
                }
            }
        }
    };
}

kinds! {
    GuestCreate => create::Create,
    GuestDelete => delete::Delete,
    GuestStart => power::Start,
    GuestShutdown => power::Shutdown,
    GuestPoweroff => power::Poweroff,
    GuestReboot => power::Reboot,
    GuestReset => power::Reset,
    GuestSuspend => power::Suspend,
    GuestResume => power::Resume,
    GuestSetBandwidth => set_bandwidth::SetBandwidth,
    GuestBootJobs => boot_jobs::BootJobs,
    GuestChangeIp => change_ip::ChangeIp,
    NodeRemove => node_remove::NodeRemove,
    NodeCleanup => node_cleanup::NodeCleanup,
    GuestConsole => console::Console,
    DiskCreate => disk_create::DiskCreate,
    DiskAttach => disk_attach::DiskAttach,
    DiskDetach => disk_detach::DiskDetach,
    DiskResize => disk_resize::DiskResize,
    DiskSetLimits => disk_limits::DiskSetLimits,
    DiskDelete => disk_delete::DiskDelete,
    SnapshotCreate => snapshot_create::SnapshotCreate,
    SnapshotRevert => snapshot_revert::SnapshotRevert,
    SnapshotDelete => snapshot_delete::SnapshotDelete,
    GuestResize => resize::Resize,
    TemplateFromGuest => to_template::ToTemplate,
    GuestMigrate => migrate::Migrate,
    GuestMigrateCold => migrate_cold::MigrateCold,
    NodeDrain => drain::Drain,
    GuestSetHa => set_ha::SetHa,
    GuestFailover => guest_failover::GuestFailover,
    NodeFailover => node_failover::NodeFailover,
}

impl OpKind {
    pub fn parse(s: &str) -> Option<Self> {
        OpKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// The kind's step names, in order.
    pub fn step_names(self) -> Vec<&'static str> {
        self.def().steps.iter().map(|s| s.name).collect()
    }
}

impl std::fmt::Display for OpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error("unknown operation kind {0}")]
    Unknown(String),
    #[error("payload of {kind} is corrupt")]
    Payload {
        kind: OpKind,
        #[source]
        source: serde_json::Error,
    },
}

fn typed<T: DeserializeOwned>(kind: OpKind, payload: &str) -> Result<T, KindError> {
    serde_json::from_str(payload).map_err(|source| KindError::Payload { kind, source })
}

impl Request {
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
    req.run_step(cx, name, undo).await
}

/// What happens when an operation ends (before the guest's lock is released): the kind's
/// own [`Kind::on_finish`], then what every kind shares.
pub async fn on_finish(
    tx: &mut Tx<'_>,
    req: &Request,
    op: &mut OpRow,
    state: OpState,
) -> Result<(), StoreError> {
    let mut after = req.clone();
    after.finish(tx, op.guest_id.as_deref(), state).await?;
    if after != *req {
        // For example a console ticket's password, forgotten as its operation ends.
        op.payload = after.payload()?.to_string();
    }
    // A disk operation's hold on its disk ends with it.
    crate::controller::store::unlock_disks(tx, &op.id).await?;
    if let Some(guest) = op.guest_id.as_deref() {
        if state == OpState::Succeeded && req.kind().boots_guest() {
            // The guest has just booted: its pending boot jobs run once it is free.
            boot_jobs::mark_booted(tx, guest).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the registry: every kind's name parses back and is unique, it has steps, each
    /// step parses back by its stored name, and its default request survives being stored.
    #[test]
    fn every_registered_kind_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for k in OpKind::ALL {
            assert_eq!(OpKind::parse(k.as_str()), Some(*k));
            assert!(seen.insert(k.as_str()), "{k} is registered twice");
            assert!(!k.step_names().is_empty(), "{k} has no steps");
            let r = Request::sample(*k);
            assert_eq!(r.kind(), *k);
            let payload = r.payload().unwrap().to_string();
            assert_eq!(Request::decode(k.as_str(), &payload).unwrap(), r);
        }
        assert_eq!(
            create::Step::parse("build"),
            Some(create::Step::Build),
            "steps parse by their stored names"
        );
    }

    #[test]
    fn requests_round_trip_through_their_stored_form() {
        let reqs = [
            Request::GuestCreate(NoPayload),
            Request::GuestDelete(NoPayload),
            power::Power::Shutdown {
                timeout_secs: Some(600),
            }
            .request(),
            power::Power::Reset.request(),
            Request::GuestSetBandwidth(set_bandwidth::Payload { bandwidth: None }),
            Request::GuestConsole(console::Payload {
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
            Request::GuestResize(resize::Payload {
                cpus: 2,
                memory_mib: 256,
                old_cpus: 1,
                old_memory_mib: 128,
                max_cpus: 4,
                ..Default::default()
            }),
            Request::TemplateFromGuest(to_template::Payload {
                template_id: "t".into(),
                name: "n".into(),
                path: "/p".into(),
                os_type: "linux".into(),
                min_memory_mib: 64,
                os_init_profile: None,
                snapshot_id: Some("s".into()),
                owner_id: None,
            }),
            Request::GuestBootJobs(boot_jobs::RunPayload {
                job_ids: Some(vec!["j".into()]),
            }),
            Request::GuestChangeIp(change_ip::ChangeIpPayload::default()),
            Request::NodeRemove(node_remove::Payload {
                delete_guests: true,
            }),
            Request::NodeCleanup(NoPayload),
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
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        assert!(Request::decode("guest.shutdown", r#"{"timeout_secs": "x"}"#).is_err());
        assert!(Request::decode("guest.create", "[]").is_err());
        assert!(matches!(
            Request::decode("guest.explode", "{}"),
            Err(KindError::Unknown(_))
        ));
    }
}
