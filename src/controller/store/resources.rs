//! Templates and IP pools: plain records the API creates and sagas read.

use super::{Store, StoreError, Tx};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TemplateRow {
    pub id: String,
    pub name: String,
    pub path: String,
    pub os_type: String,
    pub min_memory_mib: i64,
    pub created_at: i64,
    /// The OS-init profile its guests get; None: the default for its OS type.
    pub os_init_profile: Option<String>,
    /// Who registered it; None: from before owners existed (administrators').
    pub owner_id: Option<String>,
    /// Every user may use a public template; a private one is its owner's.
    pub public: bool,
    /// For images corral wrote: their SHA-256 and size.
    pub sha256: Option<String>,
    pub size_bytes: Option<i64>,
    /// Free text shown beside it.
    pub description: Option<String>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PoolRow {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub range_start: String,
    pub range_end: String,
    pub gateway: Option<String>,
    pub dns: String,
    pub created_at: i64,
    /// Network the pool belongs to: the bridge its guests attach to ('' = the node's default).
    pub bridge: String,
    /// 802.1Q tag on that network (needs an Open vSwitch bridge).
    pub vlan: Option<i64>,
}

impl PoolRow {
    pub fn dns_list(&self) -> Vec<String> {
        serde_json::from_str(&self.dns).unwrap_or_default()
    }
}

macro_rules! pool_cols {
    () => {
        "id, name, cidr, range_start, range_end, gateway, dns, created_at, bridge, vlan"
    };
}

pub async fn pool_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<PoolRow>, StoreError> {
    Ok(sqlx::query_as::<_, PoolRow>(concat!(
        "SELECT ",
        pool_cols!(),
        " FROM ip_pools WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

pub async fn pools_in(tx: &mut Tx<'_>) -> Result<Vec<PoolRow>, StoreError> {
    Ok(sqlx::query_as::<_, PoolRow>(concat!(
        "SELECT ",
        pool_cols!(),
        " FROM ip_pools ORDER BY name"
    ))
    .fetch_all(&mut **tx)
    .await?)
}

/// Registers a template inside a transaction (an operation's step).
pub async fn insert_template_in(tx: &mut super::Tx<'_>, t: &TemplateRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO templates (id, name, path, os_type, min_memory_mib, created_at, \
         os_init_profile, owner_id, public, sha256, size_bytes, description) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(&t.path)
    .bind(&t.os_type)
    .bind(t.min_memory_mib)
    .bind(t.created_at)
    .bind(&t.os_init_profile)
    .bind(&t.owner_id)
    .bind(t.public)
    .bind(&t.sha256)
    .bind(t.size_bytes)
    .bind(&t.description)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    pub async fn insert_template(&self, t: &TemplateRow) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_template_in(&mut tx, t).await?;
        self.commit(tx).await
    }

    pub async fn template(&self, id_or_name: &str) -> Result<Option<TemplateRow>, StoreError> {
        Ok(sqlx::query_as::<_, TemplateRow>(
            "SELECT id, name, path, os_type, min_memory_mib, created_at, os_init_profile, \
             owner_id, public, sha256, size_bytes, description FROM templates \
             WHERE id = ? OR name = ?",
        )
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn templates(&self) -> Result<Vec<TemplateRow>, StoreError> {
        Ok(sqlx::query_as::<_, TemplateRow>(
            "SELECT id, name, path, os_type, min_memory_mib, created_at, os_init_profile, \
             owner_id, public, sha256, size_bytes, description FROM templates ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn set_template_description(
        &self,
        id: &str,
        description: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE templates SET description = ? WHERE id = ?")
            .bind(description)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn set_template_profile(
        &self,
        id: &str,
        profile: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE templates SET os_init_profile = ? WHERE id = ?")
            .bind(profile)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records the SHA-256 and size of a template's image, unless it has one already.
    pub async fn set_template_checksum(
        &self,
        id: &str,
        sha256: &str,
        size_bytes: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE templates SET sha256 = ?, size_bytes = ? WHERE id = ? AND sha256 IS NULL",
        )
        .bind(sha256)
        .bind(size_bytes as i64)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    pub async fn delete_template(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM templates WHERE id = ?")
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Creates a pool with its first range.
    pub async fn insert_pool(&self, p: &PoolRow) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(concat!(
            "INSERT INTO ip_pools (",
            pool_cols!(),
            ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&p.id)
        .bind(&p.name)
        .bind(&p.cidr)
        .bind(&p.range_start)
        .bind(&p.range_end)
        .bind(&p.gateway)
        .bind(&p.dns)
        .bind(p.created_at)
        .bind(&p.bridge)
        .bind(p.vlan)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO ip_ranges (pool_id, start, end) VALUES (?, ?, ?)")
            .bind(&p.id)
            .bind(&p.range_start)
            .bind(&p.range_end)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await
    }

    pub async fn pool_by(&self, id_or_name: &str) -> Result<Option<PoolRow>, StoreError> {
        Ok(sqlx::query_as::<_, PoolRow>(concat!(
            "SELECT ",
            pool_cols!(),
            " FROM ip_pools WHERE id = ? OR name = ?"
        ))
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn pools(&self) -> Result<Vec<PoolRow>, StoreError> {
        Ok(sqlx::query_as::<_, PoolRow>(concat!(
            "SELECT ",
            pool_cols!(),
            " FROM ip_pools ORDER BY name"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// Number of addresses of a pool handed out.
    pub async fn pool_used(&self, id: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ip_leases WHERE pool_id = ?")
            .bind(id)
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    pub async fn delete_pool(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for sql in [
            "DELETE FROM ip_ranges WHERE pool_id = ?",
            "DELETE FROM ip_marks WHERE pool_id = ?",
            "DELETE FROM ip_pools WHERE id = ?",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        self.commit(tx).await
    }

    /// Leases still held: used by tests and by the delete-guest check for leaks.
    pub async fn lease_counts(&self) -> Result<(i64, i64, i64), StoreError> {
        let (ip,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM ip_leases")
            .fetch_one(self.pool())
            .await?;
        let (vnc,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM vnc_leases")
            .fetch_one(self.pool())
            .await?;
        let (mac,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM mac_leases")
            .fetch_one(self.pool())
            .await?;
        Ok((ip, vnc, mac))
    }
}
