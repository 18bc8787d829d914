//! The power operations, one node step each: `guest.start`, `guest.shutdown`,
//! `guest.poweroff`, `guest.reboot`, `guest.reset`, `guest.suspend`, `guest.resume`.
//! They share one module because each is a single action with no undo: each kind is a
//! marker made by `power_kind!`, and the node action it asks for is a [`Power`].

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, NoPayload, Request, StepDef};
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

/// Declares one power kind: its marker, its one step and what that step asks of the node.
macro_rules! power_kind {
    ($marker:ident, $steps:ident, $payload:ty, $kind:literal, $desc:literal, boots: $boots:literal,
     $step:ident = $def:expr, $power:expr) => {
        super::steps! {
            #[doc = concat!("The one step of `", $kind, "`.")]
            pub enum $steps { $step = $def }
        }

        #[doc = concat!("`", $kind, "`: ", $desc)]
        pub struct $marker;

        impl Kind for $marker {
            const NAME: &'static str = $kind;
            const DESCRIPTION: &'static str = $desc;
            const BOOTS_GUEST: bool = $boots;
            type Payload = $payload;
            type Step = $steps;

            async fn run(
                cx: &mut Ctx<'_, '_>,
                p: &$payload,
                _step: $steps,
                undo: bool,
            ) -> Result<Effect, StepError> {
                run(cx, $power(p.timeout()), undo).await
            }
        }
    };
}

power_kind!(Start, StartStep, NoPayload, "guest.start", "Start a stopped guest.", boots: true,
    Start = StepDef::node("start", "starting"), |_| Power::Start);
power_kind!(Shutdown, ShutdownStep, PowerPayload, "guest.shutdown",
    "ACPI shutdown; waits until the guest is off.", boots: false,
    Shutdown = StepDef::node("shutdown", "shutting down"),
    |timeout_secs| Power::Shutdown { timeout_secs });
power_kind!(Poweroff, PoweroffStep, NoPayload, "guest.poweroff",
    "Force the guest off (like pulling the plug).", boots: false,
    Poweroff = StepDef::node("poweroff", "powering off"), |_| Power::Poweroff);
power_kind!(Reboot, RebootStep, NoPayload, "guest.reboot", "ACPI reboot.", boots: true,
    Reboot = StepDef::node("reboot", "rebooting"), |_| Power::Reboot);
power_kind!(Reset, ResetStep, NoPayload, "guest.reset", "Force reset (like the reset button).", boots: true,
    Reset = StepDef::node("reset", "resetting"), |_| Power::Reset);
power_kind!(Suspend, SuspendStep, NoPayload, "guest.suspend", "Pause the guest's vCPUs.", boots: false,
    Suspend = StepDef::node("suspend", "suspending"), |_| Power::Suspend);
power_kind!(Resume, ResumeStep, NoPayload, "guest.resume", "Resume a paused guest.", boots: false,
    Resume = StepDef::node("resume", "resuming"), |_| Power::Resume);

/// What a power kind's payload says about its time limit.
trait Timeout {
    fn timeout(&self) -> Option<u64>;
}

impl Timeout for NoPayload {
    fn timeout(&self) -> Option<u64> {
        None
    }
}

impl Timeout for PowerPayload {
    fn timeout(&self) -> Option<u64> {
        self.timeout_secs
    }
}

/// What one power operation asks of the node.
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
    /// The request of this power operation.
    pub fn request(self) -> Request {
        match self {
            Power::Start => Request::GuestStart(NoPayload),
            Power::Shutdown { timeout_secs } => {
                Request::GuestShutdown(PowerPayload { timeout_secs })
            }
            Power::Poweroff => Request::GuestPoweroff(NoPayload),
            Power::Reboot => Request::GuestReboot(NoPayload),
            Power::Reset => Request::GuestReset(NoPayload),
            Power::Suspend => Request::GuestSuspend(NoPayload),
            Power::Resume => Request::GuestResume(NoPayload),
        }
    }
}

async fn run(cx: &mut Ctx<'_, '_>, p: Power, undo: bool) -> Result<Effect, StepError> {
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
    let action = match p {
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
