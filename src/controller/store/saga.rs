//! The writes and reads saga steps make on guests and nodes, inside the engine's
//! transaction: placement's view of the nodes, the guest's node and allocation columns.

use super::{StoreError, Tx};
use crate::model::{now_ms, NodeFacts};

/// A node as placement sees it: its facts and what its guests already take.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeLoad {
    pub id: String,
    pub facts: String,
    pub online: bool,
    pub accept_auto: bool,
    pub used_memory_mib: i64,
    pub used_vcpus: i64,
    pub guests: i64,
}

pub async fn node_loads(tx: &mut Tx<'_>) -> Result<Vec<NodeLoad>, StoreError> {
    // `node_usage` is kept by triggers on `guests` (migration 009): one row per node.
    Ok(sqlx::query_as(
        "SELECT n.id, n.facts, n.online, n.accept_auto, \
           COALESCE(u.memory_mib, 0) AS used_memory_mib, COALESCE(u.cpus, 0) AS used_vcpus, \
           COALESCE(u.guests, 0) AS guests \
         FROM nodes n LEFT JOIN node_usage u ON u.node_id = n.id ORDER BY n.id",
    )
    .fetch_all(&mut **tx)
    .await?)
}

/// A registered node's last reported facts.
pub async fn node_facts_in(tx: &mut Tx<'_>, node: &str) -> Result<Option<NodeFacts>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT facts FROM nodes WHERE id = ?")
        .bind(node)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|(f,)| serde_json::from_str(&f).unwrap_or_default()))
}

/// Whether a node is registered and online, and since when it is offline.
pub async fn node_liveness_in(
    tx: &mut Tx<'_>,
    node: &str,
) -> Result<Option<(bool, Option<i64>)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT online, offline_since FROM nodes WHERE id = ?")
            .bind(node)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

pub async fn set_guest_node(
    tx: &mut Tx<'_>,
    guest: &str,
    node: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET node_id = ?, updated_at = ? WHERE id = ?")
        .bind(node)
        .bind(now_ms())
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What `allocate` handed a guest.
pub struct Allocation<'a> {
    pub pool_id: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub vnc_port: u16,
    pub mac: &'a str,
}

pub async fn set_guest_allocation(
    tx: &mut Tx<'_>,
    guest: &str,
    a: &Allocation<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE guests SET pool_id = ?, ip = ?, vnc_port = ?, mac = ?, updated_at = ? WHERE id = ?",
    )
    .bind(a.pool_id)
    .bind(a.ip)
    .bind(i64::from(a.vnc_port))
    .bind(a.mac)
    .bind(now_ms())
    .bind(guest)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Forgets a guest's allocation and disk records (its leases are the allocator's).
pub async fn clear_guest_allocation(tx: &mut Tx<'_>, guest: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM disks WHERE guest_id = ?")
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE guests SET ip = NULL, vnc_port = NULL, mac = NULL WHERE id = ?")
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A created guest turns `running` (unless something else already changed its state).
pub async fn finish_creating(tx: &mut Tx<'_>, guest: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE guests SET state = 'running', updated_at = ? WHERE id = ? AND state = 'creating'",
    )
    .bind(now_ms())
    .bind(guest)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A guest's size and its ceiling for live growth.
pub async fn set_guest_size(
    tx: &mut Tx<'_>,
    guest: &str,
    size: &crate::model::GuestSize,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE guests SET cpus = ?, memory_mib = ?, max_cpus = ?, max_memory_mib = ?, \
         updated_at = ? WHERE id = ?",
    )
    .bind(size.cpus)
    .bind(size.memory_mib)
    .bind(size.max_cpus)
    .bind(size.max_memory_mib)
    .bind(now_ms())
    .bind(guest)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn set_guest_bandwidth(
    tx: &mut Tx<'_>,
    guest: &str,
    json: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET bandwidth = ?, updated_at = ? WHERE id = ?")
        .bind(json)
        .bind(now_ms())
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_guest_address(
    tx: &mut Tx<'_>,
    guest: &str,
    ip: &str,
    pool: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET ip = ?, pool_id = ?, updated_at = ? WHERE id = ?")
        .bind(ip)
        .bind(pool)
        .bind(now_ms())
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_guest_secrets(
    tx: &mut Tx<'_>,
    guest: &str,
    secrets: &super::InitSecrets,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET init_secrets = ? WHERE id = ?")
        .bind(serde_json::to_string(secrets)?)
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks a guest as just booted: its pending boot jobs run once it is free.
pub async fn set_boot_pending(tx: &mut Tx<'_>, guest: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET boot_pending = 1 WHERE id = ?")
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Clears a free guest's boot flag; returns its state when the flag was set.
pub async fn take_boot_pending(tx: &mut Tx<'_>, guest: &str) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT state FROM guests WHERE id = ? AND boot_pending = 1 AND lock_op IS NULL",
    )
    .bind(guest)
    .fetch_optional(&mut **tx)
    .await?;
    if row.is_some() {
        sqlx::query("UPDATE guests SET boot_pending = 0 WHERE id = ?")
            .bind(guest)
            .execute(&mut **tx)
            .await?;
    }
    Ok(row.map(|r| r.0))
}

/// Forgets a node, its credential with it: the controller stops reading its stream and
/// removes its Redis user (see `controller::enroll`).
pub async fn delete_node(tx: &mut Tx<'_>, node: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM nodes WHERE id = ?")
        .bind(node)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM node_credentials WHERE node_id = ?")
        .bind(node)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn set_guest_hostname(
    tx: &mut Tx<'_>,
    guest: &str,
    hostname: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET hostname = ?, updated_at = ? WHERE id = ?")
        .bind(hostname)
        .bind(now_ms())
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The SHA-256 of a template's image, when corral knows it.
pub async fn template_sha256_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    let row: Option<(Option<String>,)> =
        sqlx::query_as("SELECT sha256 FROM templates WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.and_then(|(s,)| s))
}

pub async fn template_name_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT name FROM templates WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| r.0))
}

impl super::Store {
    /// The guest holding address `ip` (id and name), if any.
    pub async fn address_holder(&self, ip: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT l.guest_id, COALESCE(g.name, l.guest_id) FROM ip_leases l \
             LEFT JOIN guests g ON g.id = l.guest_id WHERE l.ip = ?",
        )
        .bind(ip)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The mark on address `ip` (reserved or disabled, with its note), if any.
    pub async fn address_mark(&self, ip: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT state, note FROM ip_marks WHERE ip = ?")
                .bind(ip)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Guests that booted and are free: their boot jobs are due.
    pub async fn booted_free_guests(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM guests WHERE boot_pending = 1 AND lock_op IS NULL LIMIT ?",
        )
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{insert_guest, GuestRow, Store};
    use super::*;
    use crate::model::GuestState;

    fn guest(id: &str, node: Option<&str>, state: &str, mem: i64, cpus: i64) -> GuestRow {
        GuestRow {
            cpus,
            memory_mib: mem,
            node_id: node.map(String::from),
            state: GuestState::parse(state).unwrap(),
            ..GuestRow::seeded(id, id, "t", "/t.qcow2", 0)
        }
    }

    /// node_usage, kept by triggers, against the sums over every guest.
    async fn check(store: &Store) {
        let mut tx = store.begin().await.unwrap();
        sqlx::query("INSERT OR IGNORE INTO nodes (id, hostname, facts, last_seen, last_seen_local, created_at) VALUES ('a', 'a', '{}', 0, 0, 0), ('b', 'b', '{}', 0, 0, 0)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let loads = node_loads(&mut tx).await.unwrap();
        for l in loads {
            let (mem, cpus, n): (i64, i64, i64) = sqlx::query_as(
                "SELECT COALESCE(SUM(CASE WHEN state != 'error' THEN memory_mib END), 0), \
                 COALESCE(SUM(CASE WHEN state != 'error' THEN cpus END), 0), COUNT(*) \
                 FROM guests WHERE node_id = ?",
            )
            .bind(&l.id)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
            assert_eq!(
                (l.used_memory_mib, l.used_vcpus, l.guests),
                (mem, cpus, n),
                "{}",
                l.id
            );
        }
        store.commit(tx).await.unwrap();
    }

    #[tokio::test]
    async fn node_usage_follows_every_change_to_guests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        insert_guest(&mut tx, &guest("g1", None, "creating", 64, 1))
            .await
            .unwrap();
        insert_guest(&mut tx, &guest("g2", Some("a"), "running", 128, 2))
            .await
            .unwrap();
        insert_guest(&mut tx, &guest("g3", Some("a"), "error", 256, 4))
            .await
            .unwrap();
        store.commit(tx).await.unwrap();
        check(&store).await;
        let mut tx = store.begin().await.unwrap();
        set_guest_node(&mut tx, "g1", Some("b")).await.unwrap();
        set_guest_node(&mut tx, "g2", Some("b")).await.unwrap();
        super::super::set_guest_state(&mut tx, "g3", GuestState::Running)
            .await
            .unwrap();
        store.commit(tx).await.unwrap();
        check(&store).await;
        let mut tx = store.begin().await.unwrap();
        super::super::set_guest_state(&mut tx, "g2", GuestState::Error)
            .await
            .unwrap();
        super::super::delete_guest(&mut tx, "g3").await.unwrap();
        set_guest_node(&mut tx, "g1", None).await.unwrap();
        store.commit(tx).await.unwrap();
        check(&store).await;
    }
}
