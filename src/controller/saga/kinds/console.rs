//! `guest.console`: a console ticket. A guest's VNC password is made by its node when the
//! domain is defined and never leaves it, so nobody can open the console until a ticket
//! is issued: the API makes a random password, this operation's one node step sets it on
//! the running domain with libvirt's `passwdValidTo`, and QEMU refuses it once that time
//! has passed. The definition on disk keeps the node's unknown password (live only).
//!
//! The password is answered once, to the caller who asked. While the operation runs it is
//! in its payload (and in the node's job in Redis); the API removes it from the payload as
//! soon as the operation ends, and it is worthless after `valid_until_ms` anyway.

use serde::{Deserialize, Serialize};

use super::{Ctx, Effect, Kind, StepDef};
use crate::controller::saga::steps::{guest_of, StepError};
use crate::controller::store::{StoreError, Tx};
use crate::model::NodeAction;
use crate::model::OpState;

/// The longest a ticket may be asked to last, seconds.
pub const MAX_VALID_SECS: u64 = 600;

/// Stored payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Emptied when the operation ends.
    #[serde(default)]
    pub password: String,
    /// When QEMU stops accepting it (ms since the epoch).
    pub valid_until_ms: i64,
}

super::steps! {
    pub enum Step {
        Ticket = StepDef::node("ticket", "setting the console password"),
    }
}

/// `guest.console`: open a guest's VNC console for a short while: the node sets a one-time password on the running domain that libvirt expires by itself.
pub struct Console;

impl Kind for Console {
    const NAME: &'static str = "guest.console";
    const DESCRIPTION: &'static str = "Open a guest's VNC console for a short while: the node sets a one-time password on the running domain that libvirt expires by itself.";
    type Payload = Payload;
    type Step = Step;

    /// The ticket's password is forgotten as soon as its operation ends.
    async fn on_finish(
        _tx: &mut Tx<'_>,
        p: &mut Payload,
        _guest: Option<&str>,
        _state: OpState,
    ) -> Result<(), StoreError> {
        p.password.clear();
        Ok(())
    }

    async fn run(
        cx: &mut Ctx<'_, '_>,
        p: &Payload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        if undo {
            return Ok(Effect::Done);
        }
        let g = guest_of(cx.tx, cx.op).await?;
        match step {
            Step::Ticket => {
                let (Some(node), Some(port)) = (g.node_id.clone(), g.vnc_port) else {
                    return Err(StepError::Permanent(format!(
                        "guest {} has no console yet",
                        g.name
                    )));
                };
                if p.password.is_empty() {
                    return Err(StepError::Permanent(
                        "the ticket was withdrawn before it reached the node".into(),
                    ));
                }
                Ok(Effect::Node {
                    node,
                    action: NodeAction::ConsoleTicket {
                        guest_id: g.id.clone(),
                        vnc_port: port as u16,
                        password: p.password.clone(),
                        valid_until_ms: p.valid_until_ms,
                    },
                })
            }
        }
    }
}
