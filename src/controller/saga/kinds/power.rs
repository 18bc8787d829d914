//! The power operations, one node step each: `guest.start`, `guest.shutdown`,
//! `guest.poweroff`, `guest.reboot`, `guest.reset`, `guest.suspend`, `guest.resume`.
//! They share one module because each is a single action with no undo; the kind is the
//! [`Power`] variant.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, OpKind};
use crate::controller::saga::steps::{guest_of, StepError};
use crate::model::{NodeAction, SubStep};

/// How long a shutdown waits for the guest to power off when the request names no time.
pub const DEFAULT_SHUTDOWN_SECS: u64 = 120;

/// Stored payload of the power kinds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PowerPayload {
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

super::steps! {
    /// The one step of each power kind.
    pub enum Step {
        Start = "start",
        Shutdown = "shutdown",
        Poweroff = "poweroff",
        Reboot = "reboot",
        Reset = "reset",
        Suspend = "suspend",
        Resume = "resume",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Start,
    /// ACPI power-button request, waiting up to `timeout_secs` for the guest to stop.
    Shutdown {
        timeout_secs: Option<u64>,
    },
    Poweroff,
    Reboot,
    Reset,
    Suspend,
    Resume,
}

impl Power {
    pub fn kind(self) -> OpKind {
        match self {
            Power::Start => OpKind::GuestStart,
            Power::Shutdown { .. } => OpKind::GuestShutdown,
            Power::Poweroff => OpKind::GuestPoweroff,
            Power::Reboot => OpKind::GuestReboot,
            Power::Reset => OpKind::GuestReset,
            Power::Suspend => OpKind::GuestSuspend,
            Power::Resume => OpKind::GuestResume,
        }
    }

    /// The request of a power kind (`timeout_secs` matters to shutdown only).
    pub fn from_kind(kind: OpKind, timeout_secs: Option<u64>) -> Power {
        match Power::step_of(kind) {
            Step::Start => Power::Start,
            Step::Shutdown => Power::Shutdown { timeout_secs },
            Step::Poweroff => Power::Poweroff,
            Step::Reboot => Power::Reboot,
            Step::Reset => Power::Reset,
            Step::Suspend => Power::Suspend,
            Step::Resume => Power::Resume,
        }
    }

    /// The single step of a power kind (`start` for kinds that are not power kinds, which
    /// never ask).
    pub fn step_of(kind: OpKind) -> Step {
        match kind {
            OpKind::GuestShutdown => Step::Shutdown,
            OpKind::GuestPoweroff => Step::Poweroff,
            OpKind::GuestReboot => Step::Reboot,
            OpKind::GuestReset => Step::Reset,
            OpKind::GuestSuspend => Step::Suspend,
            OpKind::GuestResume => Step::Resume,
            _ => Step::Start,
        }
    }

    pub fn payload(self) -> serde_json::Value {
        match self {
            Power::Shutdown { timeout_secs } => serde_json::json!({ "timeout_secs": timeout_secs }),
            _ => serde_json::json!({}),
        }
    }
}

pub async fn run(cx: &mut Ctx<'_, '_>, p: &Power, undo: bool) -> Result<Effect, StepError> {
    let g = guest_of(cx.tx, cx.op).await?;
    let Some(node) = g.node_id.clone() else {
        return Ok(Effect::Done);
    };
    if undo {
        return Ok(Effect::Done);
    }
    // A guest powered on has had its first boot: its seed is rebuilt without secrets
    // first (cloud-init reads it at every boot, but sets users once per instance).
    let seal = match p {
        Power::Start => super::boot_jobs::refresh_seed_action(cx.tx, &g, None).await?,
        _ => None,
    };
    let guest_id = g.id;
    let action = match *p {
        Power::Start => {
            let start = NodeAction::Start { guest_id };
            match seal {
                Some(seal) => NodeAction::Sequence {
                    steps: vec![
                        SubStep {
                            stage: "rebuilding the init seed without secrets".into(),
                            action: seal,
                        },
                        SubStep {
                            stage: "starting".into(),
                            action: start,
                        },
                    ],
                },
                None => start,
            }
        }
        Power::Shutdown { timeout_secs } => NodeAction::Shutdown {
            guest_id,
            timeout_secs: timeout_secs.unwrap_or(DEFAULT_SHUTDOWN_SECS),
        },
        Power::Poweroff => NodeAction::Destroy { guest_id },
        Power::Reboot => NodeAction::Reboot { guest_id },
        Power::Reset => NodeAction::Reset { guest_id },
        Power::Suspend => NodeAction::Suspend { guest_id },
        Power::Resume => NodeAction::Resume { guest_id },
    };
    Ok(Effect::Node { node, action })
}
