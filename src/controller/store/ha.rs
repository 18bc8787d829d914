//! HA records (S74): guests' flags and reasons, nodes' fence commands, and which nodes
//! are due a failover.

use super::{GuestRow, Store, StoreError, Tx};
use crate::model::now_ms;

impl Store {
    /// Sets (or, with None, removes) node `id`'s fence command; false for an unknown node.
    pub async fn set_node_fence(
        &self,
        id: &str,
        command: Option<&[String]>,
    ) -> Result<bool, StoreError> {
        let json = command.map(serde_json::to_string).transpose()?;
        let r = sqlx::query("UPDATE nodes SET fence_command = ? WHERE id = ?")
            .bind(json)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Nodes offline since before `offline_before` that hold HA guests in state
    /// `unknown`, with no failover under way, and none started since they went offline
    /// (or since `retry_before`, after one that could not fence). Each is marked as
    /// started now, in the same transaction as the caller's operation.
    pub async fn nodes_due_failover(
        &self,
        tx: &mut Tx<'_>,
        offline_before: i64,
        retry_before: i64,
    ) -> Result<Vec<String>, StoreError> {
        let due: Vec<(String,)> = sqlx::query_as(
            "SELECT n.id FROM nodes n WHERE n.online = 0 AND n.offline_since < ? \
             AND (n.failover_at IS NULL OR n.failover_at < n.offline_since OR n.failover_at < ?) \
             AND EXISTS (SELECT 1 FROM guests g WHERE g.node_id = n.id AND g.ha = 1 \
                         AND g.state = 'unknown' AND g.lock_op IS NULL) \
             AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.node_id = n.id \
                         AND o.kind = 'node.failover' AND o.state IN ('pending', 'running', 'undoing'))",
        )
        .bind(offline_before)
        .bind(retry_before)
        .fetch_all(&mut **tx)
        .await?;
        let now = now_ms();
        for (id,) in &due {
            sqlx::query("UPDATE nodes SET failover_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(due.into_iter().map(|(id,)| id).collect())
    }
}

/// Sets guest `id`'s HA flag.
pub async fn set_ha_in(tx: &mut Tx<'_>, id: &str, on: bool) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET ha = ?, updated_at = ? WHERE id = ?")
        .bind(on)
        .bind(now_ms())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Says why guest `id` is in its state (None: nothing to say).
pub async fn set_reason_in(
    tx: &mut Tx<'_>,
    id: &str,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET state_reason = ? WHERE id = ?")
        .bind(reason)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records that node `id`'s fence was confirmed now.
pub async fn set_fenced_in(tx: &mut Tx<'_>, id: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE nodes SET fenced_at = ? WHERE id = ?")
        .bind(now_ms())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The guests on node `id`: the HA ones, and the others.
pub async fn guests_on_in(
    tx: &mut Tx<'_>,
    id: &str,
) -> Result<(Vec<GuestRow>, Vec<GuestRow>), StoreError> {
    let rows: Vec<GuestRow> = sqlx::query_as(concat!(
        "SELECT ",
        guest_cols!(),
        " FROM guests WHERE node_id = ? ORDER BY name"
    ))
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().partition(|g| g.ha))
}
