//! Data disks: records of disks that live on their own, attached to a guest or not.
//!
//! A data disk's row is written by the API in the transaction that starts its first
//! operation (state `creating`); its operations change it through the functions below,
//! and its `lock_op` names the operation working on it.

use super::{Store, StoreError, Tx};
use crate::model::IoTune;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DataDiskRow {
    pub id: String,
    pub name: String,
    pub owner_id: Option<String>,
    pub node_id: String,
    pub path: String,
    pub size_mib: i64,
    pub guest_id: Option<String>,
    pub target: Option<String>,
    pub iotune: Option<String>,
    pub state: crate::model::ReadyState,
    pub lock_op: Option<String>,
    pub created_at: i64,
}

impl DataDiskRow {
    /// Its I/O limits (kept in the domain definition while attached), if it has any.
    pub fn limits(&self) -> Option<IoTune> {
        self.iotune
            .as_deref()
            .and_then(|t| serde_json::from_str::<IoTune>(t).ok())
            .filter(|l| *l != IoTune::default())
    }
}

macro_rules! data_cols {
    () => {
        "id, COALESCE(name, id) AS name, owner_id, node_id, path, COALESCE(size_mib, 0) AS size_mib, \
         guest_id, target, iotune, state, lock_op, created_at"
    };
}

pub async fn insert_data_disk(tx: &mut Tx<'_>, d: &DataDiskRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO disks (id, name, owner_id, node_id, path, kind, size_mib, iotune, state, \
         lock_op, created_at) VALUES (?, ?, ?, ?, ?, 'data', ?, ?, ?, ?, ?)",
    )
    .bind(&d.id)
    .bind(&d.name)
    .bind(&d.owner_id)
    .bind(&d.node_id)
    .bind(&d.path)
    .bind(d.size_mib)
    .bind(&d.iotune)
    .bind(d.state)
    .bind(&d.lock_op)
    .bind(d.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn data_disk_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<DataDiskRow>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        data_cols!(),
        " FROM disks WHERE id = ? AND kind = 'data'"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Takes the disk for operation `op`; the holder's id when another operation has it.
pub async fn lock_disk(tx: &mut Tx<'_>, id: &str, op: &str) -> Result<Option<String>, StoreError> {
    let taken = sqlx::query("UPDATE disks SET lock_op = ? WHERE id = ? AND lock_op IS NULL")
        .bind(op)
        .bind(id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if taken == 1 {
        return Ok(None);
    }
    let holder: Option<(Option<String>,)> =
        sqlx::query_as("SELECT lock_op FROM disks WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(holder.and_then(|h| h.0))
}

/// Releases what operation `op` held.
pub async fn unlock_disks(tx: &mut Tx<'_>, op: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE disks SET lock_op = NULL WHERE lock_op = ?")
        .bind(op)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_disk_state(tx: &mut Tx<'_>, id: &str, state: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE disks SET state = ? WHERE id = ?")
        .bind(state)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_disk_attachment(
    tx: &mut Tx<'_>,
    id: &str,
    guest: Option<&str>,
    target: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE disks SET guest_id = ?, target = ? WHERE id = ?")
        .bind(guest)
        .bind(target)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_disk_size(tx: &mut Tx<'_>, id: &str, size_mib: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE disks SET size_mib = ? WHERE id = ?")
        .bind(size_mib)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A disk's I/O limits (None: unlimited).
pub async fn set_disk_limits(
    tx: &mut Tx<'_>,
    id: &str,
    limits: Option<&IoTune>,
) -> Result<(), StoreError> {
    let json = limits.map(serde_json::to_string).transpose()?;
    sqlx::query("UPDATE disks SET iotune = ? WHERE id = ?")
        .bind(json)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn forget_disk(tx: &mut Tx<'_>, id: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM disks WHERE id = ? AND kind = 'data'")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    pub async fn data_disk(&self, id: &str) -> Result<Option<DataDiskRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            data_cols!(),
            " FROM disks WHERE (id = ? OR name = ?) AND kind = 'data' ORDER BY id = ? DESC LIMIT 1"
        ))
        .bind(id)
        .bind(id)
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Data disks, all or one owner's.
    pub async fn data_disks(&self, owner: Option<&str>) -> Result<Vec<DataDiskRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            data_cols!(),
            " FROM disks WHERE kind = 'data' AND (? IS NULL OR owner_id = ?) ORDER BY created_at, id"
        ))
        .bind(owner)
        .bind(owner)
        .fetch_all(self.pool())
        .await?)
    }

    /// The device names in use on a guest (outside a transaction).
    pub async fn disk_targets(&self, guest: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT target FROM disks WHERE guest_id = ? AND target IS NOT NULL")
                .bind(guest)
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

/// The data disks attached to `guest`, by target.
pub async fn data_disks_of_in(
    tx: &mut Tx<'_>,
    guest: &str,
) -> Result<Vec<DataDiskRow>, StoreError> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        data_cols!(),
        " FROM disks WHERE guest_id = ? AND kind = 'data' ORDER BY target"
    ))
    .bind(guest)
    .fetch_all(&mut **tx)
    .await?)
}
