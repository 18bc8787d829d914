//! What nodes observe about their guests, as ingest (`controller::ingest`) records it:
//! domain XML, domain states, foreign domains, guests a node no longer reports. Lookups
//! by reported ids go one primary-key lookup per id (`json_each` drives a `CROSS JOIN`),
//! never a walk over a node's guests.

use std::collections::{HashMap, HashSet};

use super::{Store, StoreError, Tx};
use crate::model::{now_ms, GuestState};

/// The domain XML node `node` reported for `guest` (ignored unless the guest is there).
pub async fn set_reported_xml(
    store: &Store,
    node: &str,
    guest: &str,
    xml: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET domain_xml = ?, updated_at = ? WHERE id = ? AND node_id = ?")
        .bind(xml)
        .bind(now_ms())
        .bind(guest)
        .bind(node)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Records a guest's observed state (whatever it was).
pub async fn set_observed_state(
    tx: &mut Tx<'_>,
    guest: &str,
    state: GuestState,
) -> Result<(), StoreError> {
    // What its node reports now speaks for itself: an earlier reason is moot.
    sqlx::query("UPDATE guests SET state = ?, state_reason = NULL, updated_at = ? WHERE id = ?")
        .bind(state.as_str())
        .bind(now_ms())
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records that a guest no operation holds is missing from its node; false when an
/// operation took it meanwhile.
pub async fn set_missing(tx: &mut Tx<'_>, guest: &str) -> Result<bool, StoreError> {
    let r =
        sqlx::query("UPDATE guests SET state = ?, updated_at = ? WHERE id = ? AND lock_op IS NULL")
            .bind(GuestState::Missing.as_str())
            .bind(now_ms())
            .bind(guest)
            .execute(&mut **tx)
            .await?;
    Ok(r.rows_affected() > 0)
}

/// Which of `ids` are corral guests.
pub async fn known_guests(store: &Store, ids: &[&str]) -> Result<HashSet<String>, StoreError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM guests WHERE id IN (SELECT value FROM json_each(?))")
            .bind(serde_json::to_string(ids)?)
            .fetch_all(store.pool())
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The domains on node `node` that are not corral guests, as its listing shows them.
pub async fn set_foreign_domains(
    store: &Store,
    node: &str,
    foreign: &[serde_json::Value],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE nodes SET foreign_domains = ? WHERE id = ?")
        .bind(serde_json::to_string(foreign)?)
        .bind(node)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Guests of `node` that no operation holds, that have been defined, and whose state was
/// last set at or before `at_ms`: those a node's inventory must report.
pub async fn expected_on(
    store: &Store,
    node: &str,
    at_ms: i64,
) -> Result<Vec<(String, GuestState)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, state FROM guests WHERE node_id = ? AND lock_op IS NULL \
         AND domain_xml IS NOT NULL AND state_at <= ?",
    )
    .bind(node)
    .bind(at_ms)
    .fetch_all(store.pool())
    .await?)
}

/// Stored states (and when they were set) of guests `ids` that are on `node`, by guest id.
pub async fn states_on<'e, E: sqlx::SqliteExecutor<'e>>(
    ex: E,
    node: &str,
    ids: &[&str],
) -> Result<HashMap<String, (GuestState, i64)>, StoreError> {
    let rows: Vec<(String, GuestState, i64)> = sqlx::query_as(
        "SELECT g.id, g.state, g.state_at FROM json_each(?) AS s CROSS JOIN guests AS g \
         ON g.id = s.value WHERE g.node_id = ?",
    )
    .bind(serde_json::to_string(ids)?)
    .bind(node)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|(g, s, at)| (g, (s, at))).collect())
}
