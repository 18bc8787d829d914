//! Creating an operation: the row, the guest's lock, and the "pending" event, in the
//! caller's transaction. The API uses it for requests; the controller itself uses it for
//! the operations it starts on its own (boot-job runs after a guest boots).

use super::kinds::Request;
use crate::controller::store::{self as st, events, OpRow, StoreError, Tx};
use crate::jobs::Catalog;
use crate::model::{new_id, now_ms, OpState};

pub enum Target<'a> {
    Guest(&'a str),
    Node(&'a str),
}

impl Target<'_> {
    /// The guest and node ids, one of them set.
    pub fn ids(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Target::Guest(g) => (Some(g), None),
            Target::Node(n) => (None, Some(n)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The guest is held by another operation (named).
    #[error("guest {guest} is busy with operation {holder}; wait for it or cancel it")]
    Busy { guest: String, holder: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn create_op(
    catalog: &Catalog,
    tx: &mut Tx<'_>,
    req: &Request,
    target: Target<'_>,
    by: st::Requester<'_>,
    lock: bool,
) -> Result<OpRow, LaunchError> {
    let (guest, node) = target.ids();
    let kind = req.kind().as_str();
    let def = catalog.get(req.kind());
    let payload = req.payload()?;
    let now = now_ms();
    let op = OpRow {
        id: new_id(),
        kind: kind.into(),
        guest_id: guest.map(String::from),
        node_id: node.map(String::from),
        state: OpState::Pending,
        steps: serde_json::to_string(&super::new_steps(def)).map_err(StoreError::from)?,
        cursor: 0,
        payload: payload.to_string(),
        stage: "queued".into(),
        percent: 0,
        message: String::new(),
        error: None,
        cancel_requested: false,
        inflight_node: None,
        requested_by: by.name.into(),
        requested_by_id: by.id.map(String::from),
        created_at: now,
        started_at: None,
        updated_at: now,
        finished_at: None,
        abandon_reason: None,
    };
    st::insert_op(tx, &op).await?;
    if let (true, Some(guest)) = (lock, guest) {
        if let Err(holder) = st::lock_guest(tx, guest, &op.id).await? {
            return Err(LaunchError::Busy {
                guest: guest.to_string(),
                holder,
            });
        }
    }
    events::append(
        tx,
        "operation",
        &op.id,
        &serde_json::json!({"operation_id": op.id, "kind": kind, "guest_id": guest, "node_id": node, "state": "pending",
                            "stage": "queued", "percent": 0, "requested_by": by.name,
                            "requested_by_id": by.id}),
    )
    .await?;
    Ok(op)
}
