//! Guest rows, their disks, and the one-operation-per-guest lock.

use super::{Store, StoreError, Tx};
use crate::model::now_ms;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GuestRow {
    pub id: String,
    pub name: String,
    pub hostname: String,
    pub template_id: String,
    pub template_path: String,
    pub os_type: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub node_id: Option<String>,
    pub requested_node: Option<String>,
    pub pool_id: Option<String>,
    pub requested_ip: Option<String>,
    pub ip: Option<String>,
    pub vnc_port: Option<i64>,
    pub mac: Option<String>,
    pub state: crate::model::GuestState,
    pub lock_op: Option<String>,
    pub domain_xml: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// JSON `model::Bandwidth`, NULL when unlimited.
    pub bandwidth: Option<String>,
    /// The OS-init profile the guest was created with (S02).
    pub os_init_profile: Option<String>,
    /// JSON [`InitSecrets`]: what a profile needs again when the seed is rebuilt.
    pub init_secrets: Option<String>,
    /// The user who created it; None: from before owners existed (administrators').
    pub owner_id: Option<String>,
    /// JSON array of the guest's tags (S61).
    pub tags: String,
    /// Ceiling for live growth (S75); None: the current size.
    pub max_cpus: Option<i64>,
    pub max_memory_mib: Option<i64>,
    /// HA (S74): restarted on another node when its node is fenced.
    pub ha: bool,
    /// Why its state is what it is when corral could not act (HA without a fence).
    pub state_reason: Option<String>,
}

/// The password hash and SSH keys of a guest's init plan. Only a crypt hash is ever kept.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct InitSecrets {
    pub password_hash: Option<String>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

impl GuestRow {
    /// A running guest's record as a create from template `template_id` (image
    /// `template_path`) leaves it at `at`: Linux, 1 vCPU, 512 MiB, no owner, node, pool,
    /// address, MAC or VNC port yet. Benchmarks and tests seed stores with it and change
    /// what they need.
    pub fn seeded(id: &str, name: &str, template_id: &str, template_path: &str, at: i64) -> Self {
        GuestRow {
            id: id.to_string(),
            name: name.to_string(),
            hostname: name.to_string(),
            template_id: template_id.to_string(),
            template_path: template_path.to_string(),
            os_type: "linux".into(),
            cpus: 1,
            memory_mib: 512,
            node_id: None,
            requested_node: None,
            pool_id: None,
            requested_ip: None,
            ip: None,
            vnc_port: None,
            mac: None,
            state: crate::model::GuestState::Running,
            lock_op: None,
            domain_xml: None,
            created_at: at,
            updated_at: at,
            bandwidth: None,
            os_init_profile: None,
            init_secrets: None,
            owner_id: None,
            tags: "[]".into(),
            max_cpus: None,
            max_memory_mib: None,
            ha: false,
            state_reason: None,
        }
    }

    /// The vCPUs the guest's domain is defined with, up to which it grows while running.
    pub fn max_cpus(&self) -> u32 {
        self.max_cpus.unwrap_or(0).max(self.cpus) as u32
    }

    /// The memory the guest's domain is defined with, up to which the balloon gives.
    pub fn max_memory_mib(&self) -> u32 {
        self.max_memory_mib.unwrap_or(0).max(self.memory_mib) as u32
    }

    pub fn tags(&self) -> Vec<String> {
        serde_json::from_str(&self.tags).unwrap_or_default()
    }

    pub fn bandwidth(&self) -> Option<crate::model::Bandwidth> {
        self.bandwidth
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
    }

    pub fn secrets(&self) -> InitSecrets {
        self.init_secrets
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DiskRow {
    pub id: String,
    pub guest_id: Option<String>,
    pub node_id: String,
    pub path: String,
    pub kind: String,
    pub backing: Option<String>,
    pub created_at: i64,
}

macro_rules! guest_cols {
    () => {
        "id, name, hostname, template_id, template_path, os_type, cpus, memory_mib, \
    node_id, requested_node, pool_id, requested_ip, ip, vnc_port, mac, state, lock_op, \
    domain_xml, created_at, updated_at, bandwidth, os_init_profile, init_secrets, owner_id, tags, \
    max_cpus, max_memory_mib, ha, state_reason"
    };
}

/// `guest_cols!` for lists: the same row, without the columns no list shows.
macro_rules! guest_list_cols {
    () => {
        "id, name, hostname, template_id, template_path, os_type, cpus, memory_mib, \
    node_id, requested_node, pool_id, requested_ip, ip, vnc_port, mac, state, \
    lock_op, NULL AS domain_xml, created_at, updated_at, bandwidth, os_init_profile, \
    NULL AS init_secrets, owner_id, tags, max_cpus, max_memory_mib, ha, state_reason"
    };
}

pub async fn insert_guest(tx: &mut Tx<'_>, g: &GuestRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO guests (id, name, hostname, template_id, template_path, os_type, cpus, memory_mib, \
         requested_node, pool_id, requested_ip, state, lock_op, created_at, updated_at, bandwidth, \
         os_init_profile, init_secrets, owner_id, tags, max_cpus, max_memory_mib) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&g.id)
    .bind(&g.name)
    .bind(&g.hostname)
    .bind(&g.template_id)
    .bind(&g.template_path)
    .bind(&g.os_type)
    .bind(g.cpus)
    .bind(g.memory_mib)
    .bind(&g.requested_node)
    .bind(&g.pool_id)
    .bind(&g.requested_ip)
    .bind(g.state.as_str())
    .bind(&g.lock_op)
    .bind(g.created_at)
    .bind(g.updated_at)
    .bind(&g.bandwidth)
    .bind(&g.os_init_profile)
    .bind(&g.init_secrets)
    .bind(&g.owner_id)
    .bind(&g.tags)
    .bind(g.max_cpus)
    .bind(g.max_memory_mib)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces a guest's tags (a JSON array).
pub async fn set_guest_tags(
    tx: &mut Tx<'_>,
    guest: &str,
    tags: &[String],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET tags = ?, updated_at = ? WHERE id = ?")
        .bind(serde_json::to_string(tags)?)
        .bind(crate::model::now_ms())
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn guest_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<GuestRow>, StoreError> {
    Ok(sqlx::query_as::<_, GuestRow>(concat!(
        "SELECT ",
        guest_cols!(),
        " FROM guests WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

pub async fn set_guest_state(
    tx: &mut Tx<'_>,
    id: &str,
    state: crate::model::GuestState,
) -> Result<bool, StoreError> {
    let r = sqlx::query("UPDATE guests SET state = ?, updated_at = ? WHERE id = ? AND state != ?")
        .bind(state.as_str())
        .bind(now_ms())
        .bind(id)
        .bind(state.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() > 0)
}

pub async fn set_guest_xml(tx: &mut Tx<'_>, id: &str, xml: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET domain_xml = ?, updated_at = ? WHERE id = ?")
        .bind(xml)
        .bind(now_ms())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Takes the guest's lock for `op`. Returns the holder when someone else has it.
/// The node a guest is placed on.
pub async fn guest_node_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<String>, StoreError> {
    let row: Option<(Option<String>,)> = sqlx::query_as("SELECT node_id FROM guests WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.and_then(|r| r.0))
}

pub async fn lock_guest(
    tx: &mut Tx<'_>,
    id: &str,
    op: &str,
) -> Result<Result<(), String>, StoreError> {
    let r = sqlx::query("UPDATE guests SET lock_op = ? WHERE id = ? AND lock_op IS NULL")
        .bind(op)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 1 {
        return Ok(Ok(()));
    }
    let holder: Option<(Option<String>,)> =
        sqlx::query_as("SELECT lock_op FROM guests WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(Err(holder.and_then(|h| h.0).unwrap_or_default()))
}

pub async fn unlock_guest(tx: &mut Tx<'_>, id: &str, op: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET lock_op = NULL WHERE id = ? AND lock_op = ?")
        .bind(id)
        .bind(op)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes a guest's row with its disk records and boot jobs.
pub async fn delete_guest(tx: &mut Tx<'_>, id: &str) -> Result<(), StoreError> {
    for sql in [
        // Data disks outlive their guest: detached, kept for another.
        "UPDATE disks SET guest_id = NULL, target = NULL WHERE guest_id = ? AND kind = 'data'",
        "DELETE FROM disks WHERE guest_id = ?",
        "DELETE FROM boot_jobs WHERE guest_id = ?",
        // Internal snapshots live in the system disk, which is gone.
        "DELETE FROM snapshots WHERE guest_id = ?",
    ] {
        sqlx::query(sql).bind(id).execute(&mut **tx).await?;
    }
    sqlx::query("DELETE FROM guests WHERE id = ?")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn insert_disk(tx: &mut Tx<'_>, d: &DiskRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO disks (id, guest_id, node_id, path, kind, backing, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&d.id)
    .bind(&d.guest_id)
    .bind(&d.node_id)
    .bind(&d.path)
    .bind(&d.kind)
    .bind(&d.backing)
    .bind(d.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn disks_of_in(tx: &mut Tx<'_>, guest_id: &str) -> Result<Vec<DiskRow>, StoreError> {
    Ok(sqlx::query_as::<_, DiskRow>(
        "SELECT id, guest_id, node_id, path, kind, backing, created_at FROM disks WHERE guest_id = ? ORDER BY kind",
    )
    .bind(guest_id)
    .fetch_all(&mut **tx)
    .await?)
}

/// The guests of a node, for its removal.
pub async fn guests_of_node_in(tx: &mut Tx<'_>, node: &str) -> Result<Vec<GuestRow>, StoreError> {
    Ok(sqlx::query_as::<_, GuestRow>(concat!(
        "SELECT ",
        guest_cols!(),
        " FROM guests WHERE node_id = ?"
    ))
    .bind(node)
    .fetch_all(&mut **tx)
    .await?)
}

impl Store {
    pub async fn guest(&self, id_or_name: &str) -> Result<Option<GuestRow>, StoreError> {
        Ok(sqlx::query_as::<_, GuestRow>(concat!(
            "SELECT ",
            guest_cols!(),
            " FROM guests WHERE id = ? OR name = ?"
        ))
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await?)
    }

    /// A page of guests in list order (creation, then name). One statement per filter
    /// combination, so each walks the index in that order (migration 007) and stops after
    /// the page: a `(? IS NULL OR col = ?)` filter would defeat the filtered indexes.
    /// List rows leave out what no list shows (domain XML, VNC password, init secrets:
    /// None) — the XML alone is kilobytes per guest.
    /// A page of guests in list order, narrowed to an owner's when `owner` is given. The
    /// statement is assembled from fixed fragments; every value is bound.
    pub async fn guests(
        &self,
        state: Option<&str>,
        node: Option<&str>,
        owner: Option<&str>,
        tag: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<GuestRow>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(concat!(
            "SELECT ",
            guest_list_cols!(),
            " FROM guests WHERE 1 = 1"
        ));
        if let Some(n) = node {
            q.push(" AND node_id = ").push_bind(n);
        }
        if let Some(s) = state {
            q.push(" AND state = ").push_bind(s);
        }
        if let Some(o) = owner {
            q.push(" AND owner_id = ").push_bind(o);
        }
        if let Some(t) = tag {
            q.push(" AND EXISTS (SELECT 1 FROM json_each(guests.tags) WHERE value = ")
                .push_bind(t)
                .push(")");
        }
        // `+?` as in `page_clause!`: a bare `LIMIT ?` is re-prepared at every execution.
        q.push(" ORDER BY created_at, name LIMIT +")
            .push_bind(limit)
            .push(" OFFSET +")
            .push_bind(offset);
        Ok(q.build_query_as::<GuestRow>()
            .fetch_all(self.pool())
            .await?)
    }

    /// The ids of a user's guests.
    pub async fn guest_ids_of_owner(
        &self,
        owner: &str,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as("SELECT id FROM guests WHERE owner_id = ?")
            .bind(owner)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    pub async fn guests_on_node(&self, node: &str) -> Result<Vec<GuestRow>, StoreError> {
        Ok(sqlx::query_as::<_, GuestRow>(concat!(
            "SELECT ",
            guest_cols!(),
            " FROM guests WHERE node_id = ? ORDER BY created_at, name"
        ))
        .bind(node)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn guest_count_on_node(&self, node: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM guests WHERE node_id = ?")
            .bind(node)
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    pub async fn disks_of(&self, guest_id: &str) -> Result<Vec<DiskRow>, StoreError> {
        Ok(sqlx::query_as::<_, DiskRow>(
            "SELECT id, guest_id, node_id, path, kind, backing, created_at FROM disks WHERE guest_id = ? ORDER BY kind",
        )
        .bind(guest_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Disks of several guests at once (the ids travel as one JSON array parameter).
    pub async fn disks_of_many(&self, guest_ids: &[&str]) -> Result<Vec<DiskRow>, StoreError> {
        let ids = serde_json::to_string(guest_ids)?;
        Ok(sqlx::query_as::<_, DiskRow>(
            "SELECT id, guest_id, node_id, path, kind, backing, created_at FROM disks \
             WHERE guest_id IN (SELECT value FROM json_each(?)) ORDER BY kind",
        )
        .bind(ids)
        .fetch_all(self.pool())
        .await?)
    }

    /// Every guest, or one owner's.
    pub async fn guests_of_owner(&self, owner: Option<&str>) -> Result<Vec<GuestRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            guest_cols!(),
            " FROM guests WHERE (? IS NULL OR owner_id = ?) ORDER BY created_at, id"
        ))
        .bind(owner)
        .bind(owner)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn guests_using_template(&self, template_id: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM guests WHERE template_id = ?")
            .bind(template_id)
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }
}

/// A migrated guest's new home: its node and its VNC port there.
pub async fn move_guest(
    tx: &mut Tx<'_>,
    id: &str,
    node: &str,
    vnc_port: u16,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE guests SET node_id = ?, vnc_port = ?, updated_at = ? WHERE id = ?")
        .bind(node)
        .bind(i64::from(vnc_port))
        .bind(now_ms())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A migrated disk's new home: its node and its path there.
pub async fn move_disk(
    tx: &mut Tx<'_>,
    id: &str,
    node: &str,
    path: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE disks SET node_id = ?, path = ? WHERE id = ?")
        .bind(node)
        .bind(path)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A guest as metric listings name it: id, name, node, state.
pub type GuestLabel = (String, String, Option<String>, String);

impl Store {
    /// Every guest's id, name, node and state (`owner`: only theirs), for current
    /// figures and the exposition: one query, no disks or tags.
    pub async fn guest_labels(&self, owner: Option<&str>) -> Result<Vec<GuestLabel>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, name, node_id, state FROM guests WHERE (?1 IS NULL OR owner_id = ?1) ORDER BY name",
        )
        .bind(owner)
        .fetch_all(self.pool())
        .await?)
    }
}
