//! `node.cleanup`: runs a node's cleanup list (see `store::cleanup`), started by the
//! janitor when the node is online and has items due: at once after it returns, and again
//! after a back-off for items that failed.
//!
//! 1. `clean` (node): every listed action (destroy, undefine by the guest's uuid; remove a
//!    recorded file inside the node's disk-image directory), each reported on its own.
//! 2. `record` (controller): items that succeeded leave the list, failed ones count an
//!    attempt; a guest whose list is empty gets back the leases it held for cleanup; the
//!    event log says what was removed.

use super::{Ctx, Effect, Kind, NoPayload, StepDef};
use crate::controller::alloc;
use crate::controller::saga::steps::StepError;
use crate::controller::store::{self as st, events};
use crate::model::{CleanupItem, CleanupReport, NodeAction};

super::steps! {
    pub enum Step {
        Clean = StepDef::node("clean", "removing leftovers on the node").weight(3),
        Record = StepDef::controller("record", "recording"),
    }
}

/// `node.cleanup`: run a node's cleanup list: what abandoned steps and failed undos left there.
pub struct NodeCleanup;

impl Kind for NodeCleanup {
    const NAME: &'static str = "node.cleanup";
    const DESCRIPTION: &'static str =
        "Run a node's cleanup list: what abandoned steps and failed undos left there.";
    type Payload = NoPayload;
    type Step = Step;

    async fn run(
        cx: &mut Ctx<'_, '_>,
        _p: &NoPayload,
        step: Step,
        undo: bool,
    ) -> Result<Effect, StepError> {
        let node = cx.op.node_id.clone().unwrap_or_default();
        match (step, undo) {
            (Step::Clean, false) => {
                let mut items = Vec::new();
                for row in st::cleanup_of_node_in(cx.tx, &node).await? {
                    items.push(CleanupItem {
                        id: row.id,
                        action: row.node_action()?,
                    });
                }
                if items.is_empty() {
                    return Ok(Effect::Done);
                }
                Ok(Effect::Node {
                    node,
                    action: NodeAction::Cleanup { items },
                })
            }
            (Step::Record, false) => {
                record(cx, &node).await?;
                Ok(Effect::Done)
            }
            (Step::Clean | Step::Record, true) => Ok(Effect::Done),
        }
    }
}

async fn record(cx: &mut Ctx<'_, '_>, node: &str) -> Result<(), StepError> {
    let report: CleanupReport = cx.op.report(Step::Clean.name())?.unwrap_or_default();
    let rows = st::cleanup_of_node_in(cx.tx, node).await?;
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    let mut guests = std::collections::BTreeSet::new();
    for r in &report.results {
        let Some(row) = rows.iter().find(|row| row.id == r.id) else {
            continue;
        };
        st::end_cleanup(cx.tx, r.id, r.error.as_deref()).await?;
        let what = serde_json::json!({"guest_id": row.guest_id, "action": row.node_action()?,
                                      "reason": row.reason, "error": r.error});
        if r.error.is_none() {
            removed.push(what);
        } else {
            failed.push(what);
        }
        if let Some(g) = &row.guest_id {
            guests.insert(g.clone());
        }
    }
    let mut freed = Vec::new();
    for g in guests {
        if st::cleanup_left_for_guest(cx.tx, &g).await? == 0
            && alloc::release_cleaned(cx.tx, &g).await?
        {
            // The guest (a create that failed) no longer holds anything on the node.
            st::clear_guest_allocation(cx.tx, &g).await?;
            st::set_guest_node(cx.tx, &g, None).await?;
            freed.push(g);
        }
    }
    events::append(
        cx.tx,
        "node.cleanup",
        node,
        &serde_json::json!({"node_id": node, "removed": removed, "failed": failed,
                            "leases_freed_for": freed}),
    )
    .await?;
    Ok(())
}
