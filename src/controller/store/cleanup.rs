//! Node cleanup lists: what an abandoned step or a failed undo left on a node, by the
//! guest's uuid or a recorded path. A `node.cleanup` operation runs a node's list when the
//! node is online (first thing after it returns) and the janitor retries what failed.

use super::{Store, StoreError, Tx};
use crate::model::{now_ms, NodeAction};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CleanupRow {
    pub id: i64,
    pub node_id: String,
    pub guest_id: Option<String>,
    pub op_id: Option<String>,
    /// JSON [`NodeAction`].
    pub action: String,
    pub reason: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
}

impl CleanupRow {
    pub fn node_action(&self) -> Result<NodeAction, StoreError> {
        Ok(serde_json::from_str(&self.action)?)
    }
}

const COLS: &str = "id, node_id, guest_id, op_id, action, reason, attempts, last_error, created_at";

pub async fn add_cleanup(
    tx: &mut Tx<'_>,
    node: &str,
    guest: Option<&str>,
    op: Option<&str>,
    action: &NodeAction,
    reason: &str,
) -> Result<(), StoreError> {
    // A sequence's removals become one item each: each is tried, and reported, alone.
    for action in action.flatten() {
        sqlx::query(
            "INSERT INTO node_cleanup (node_id, guest_id, op_id, action, reason, created_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(node)
        .bind(guest)
        .bind(op)
        .bind(serde_json::to_string(action)?)
        .bind(reason)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub async fn cleanup_of_node_in(
    tx: &mut Tx<'_>,
    node: &str,
) -> Result<Vec<CleanupRow>, StoreError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM node_cleanup WHERE node_id = ? ORDER BY id"
    )))
    .bind(node)
    .fetch_all(&mut **tx)
    .await?)
}

/// Records one item's result: gone from the list when it succeeded.
pub async fn end_cleanup(tx: &mut Tx<'_>, id: i64, error: Option<&str>) -> Result<(), StoreError> {
    match error {
        None => sqlx::query("DELETE FROM node_cleanup WHERE id = ?").bind(id),
        Some(e) => sqlx::query(
            "UPDATE node_cleanup SET attempts = attempts + 1, last_error = ?, tried_at = ? \
             WHERE id = ?",
        )
        .bind(e)
        .bind(now_ms())
        .bind(id),
    }
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What decides whether a step may go to `node` now.
pub enum Gate {
    /// Its cleanup list has items never tried since they were recorded (a node that
    /// returns cleans up first), or a cleanup runs: new work waits.
    Cleanup,
    /// Node steps in flight there (the window).
    Inflight(i64),
}

/// One query for both: whether `node`'s cleanup holds new work (when `held` applies) and
/// how many steps are in flight there.
pub async fn dispatch_gate(tx: &mut Tx<'_>, node: &str, held: bool) -> Result<Gate, StoreError> {
    let (cleanup, inflight): (bool, i64) = sqlx::query_as(
        "SELECT ?2 AND (EXISTS (SELECT 1 FROM node_cleanup WHERE node_id = ?1 AND attempts = 0) \
                OR EXISTS (SELECT 1 FROM operations WHERE kind = 'node.cleanup' AND node_id = ?1 \
                           AND state IN ('pending', 'running', 'undoing'))), \
                (SELECT COUNT(*) FROM operations WHERE inflight_node = ?1)",
    )
    .bind(node)
    .bind(held)
    .fetch_one(&mut **tx)
    .await?;
    Ok(if cleanup {
        Gate::Cleanup
    } else {
        Gate::Inflight(inflight)
    })
}

/// Items still listed for a guest.
pub async fn cleanup_left_for_guest(tx: &mut Tx<'_>, guest: &str) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM node_cleanup WHERE guest_id = ?")
        .bind(guest)
        .fetch_one(&mut **tx)
        .await?;
    Ok(n)
}

/// Asks an active operation to end (a cancel), with the reason it shows when it does.
pub async fn request_abandon(tx: &mut Tx<'_>, op: &str, reason: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE operations SET cancel_requested = 1, abandon_reason = COALESCE(abandon_reason, ?) \
         WHERE id = ? AND state IN ('pending', 'running', 'undoing')",
    )
    .bind(reason)
    .bind(op)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    pub async fn cleanup_of_node(&self, node: &str) -> Result<Vec<CleanupRow>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLS} FROM node_cleanup WHERE node_id = ? ORDER BY id"
        )))
        .bind(node)
        .fetch_all(self.pool())
        .await?)
    }

    /// Online nodes with cleanup items never tried, or last tried before `retry_before`,
    /// and no `node.cleanup` operation in progress.
    pub async fn nodes_due_for_cleanup(
        &self,
        retry_before: i64,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT c.node_id FROM node_cleanup c JOIN nodes n ON n.id = c.node_id \
             WHERE n.online = 1 AND (c.tried_at IS NULL OR c.tried_at < ?) \
             AND NOT EXISTS (SELECT 1 FROM operations o \
               WHERE o.kind = 'node.cleanup' AND o.node_id = c.node_id \
               AND o.state IN ('pending', 'running', 'undoing'))",
        )
        .bind(retry_before)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}
