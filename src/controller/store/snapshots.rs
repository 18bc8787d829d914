//! Snapshot records: one per internal snapshot of a guest, written by its operations.

use super::{Store, StoreError, Tx};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SnapshotRow {
    pub id: String,
    pub guest_id: String,
    pub name: String,
    pub description: Option<String>,
    pub state: crate::model::ReadyState,
    pub vm_state: Option<String>,
    pub quiesced: bool,
    pub created_at: i64,
}

macro_rules! snap_cols {
    () => {
        "id, guest_id, name, description, state, vm_state, quiesced, created_at"
    };
}

pub async fn insert_snapshot(tx: &mut Tx<'_>, s: &SnapshotRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO snapshots (id, guest_id, name, description, state, vm_state, quiesced, \
         created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&s.id)
    .bind(&s.guest_id)
    .bind(&s.name)
    .bind(&s.description)
    .bind(s.state)
    .bind(&s.vm_state)
    .bind(s.quiesced)
    .bind(s.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn snapshot_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        snap_cols!(),
        " FROM snapshots WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Marks a snapshot taken: what the guest was, and whether its filesystems were frozen.
pub async fn snapshot_taken(
    tx: &mut Tx<'_>,
    id: &str,
    vm_state: &str,
    quiesced: bool,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE snapshots SET state = 'ready', vm_state = ?, quiesced = ? WHERE id = ?")
        .bind(vm_state)
        .bind(quiesced)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn forget_snapshot(tx: &mut Tx<'_>, id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM snapshots WHERE id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    pub async fn snapshots_of(&self, guest: &str) -> Result<Vec<SnapshotRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            snap_cols!(),
            " FROM snapshots WHERE guest_id = ? ORDER BY created_at, id"
        ))
        .bind(guest)
        .fetch_all(self.pool())
        .await?)
    }

    /// A guest's snapshot by id or name.
    pub async fn snapshot(&self, guest: &str, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            snap_cols!(),
            " FROM snapshots WHERE guest_id = ? AND (id = ? OR name = ?)"
        ))
        .bind(guest)
        .bind(id)
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }
}

/// How many snapshots guest `guest` has.
pub async fn snapshot_count_in(tx: &mut Tx<'_>, guest: &str) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM snapshots WHERE guest_id = ?")
        .bind(guest)
        .fetch_one(&mut **tx)
        .await?;
    Ok(n)
}
