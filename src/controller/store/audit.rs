//! The audit trail (S67), system settings (S94) and retention (S71).
//!
//! * Every write request leaves one `audit` row, written after its answer: who (the
//!   token's user, or the name tried at a login), from where (the peer address), what
//!   (the API operation with its method and path), on which object, and the HTTP status.
//! * Settings are JSON documents by key in `settings`; their types live with the API
//!   (`api/settings.rs`). A missing key reads as the type's defaults.
//! * Retention purges audit rows, ended operations and events older than their limits,
//!   in batches so that the single writer is never held for long.

use serde::{de::DeserializeOwned, Serialize};

use super::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub address: String,
    pub method: String,
    pub path: String,
    pub action: String,
    pub object: Option<String>,
    pub status: i64,
}

/// What the audit list is narrowed to.
#[derive(Debug, Default)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub object: Option<String>,
    pub action: Option<String>,
    /// Only rows at or after this time (ms).
    pub since: Option<i64>,
    /// Only rows older than this sequence number (the next page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// How many rows one purge statement removes; the writer is free between batches.
const PURGE_BATCH: i64 = 5_000;

impl Store {
    pub async fn record_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO audit (at, user_id, user_name, address, method, path, action, object, status) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(row.at)
        .bind(&row.user_id)
        .bind(&row.user_name)
        .bind(&row.address)
        .bind(&row.method)
        .bind(&row.path)
        .bind(&row.action)
        .bind(&row.object)
        .bind(row.status)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    /// Newest first.
    pub async fn audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(
            "SELECT seq, at, user_id, user_name, address, method, path, action, object, status \
             FROM audit \
             WHERE (?1 IS NULL OR user_id = ?1 OR user_name = ?1) \
               AND (?2 IS NULL OR object = ?2) \
               AND (?3 IS NULL OR action = ?3) \
               AND (?4 IS NULL OR at >= ?4) \
               AND (?5 IS NULL OR seq < ?5) \
             ORDER BY seq DESC LIMIT ?6",
        )
        .bind(&f.user)
        .bind(&f.object)
        .bind(&f.action)
        .bind(f.since)
        .bind(f.before)
        .bind(f.limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// A setting, or its defaults when it was never set.
    pub async fn setting<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, StoreError> {
        let row: Option<(String,)> = sqlx::query_as("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some((v,)) => serde_json::from_str(&v)?,
            None => T::default(),
        })
    }

    pub async fn set_setting<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(serde_json::to_string(value)?)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    /// Removes audit rows, ended operations and events older than the given cutoffs
    /// (ms; `None` keeps them). Returns how many rows of each went.
    pub async fn purge_older(
        &self,
        audit_before: Option<i64>,
        ops_before: Option<i64>,
        events_before: Option<i64>,
    ) -> Result<(u64, u64, u64), StoreError> {
        // Only ended operations go; a guest's lock never names one of them.
        let kinds: [(&'static str, Option<i64>); 3] = [
            (
                "DELETE FROM audit WHERE seq IN (SELECT seq FROM audit WHERE at < ? LIMIT ?)",
                audit_before,
            ),
            (
                "DELETE FROM operations WHERE id IN \
                 (SELECT id FROM operations WHERE finished_at < ? \
                  AND state IN ('succeeded', 'failed', 'cancelled') LIMIT ?)",
                ops_before,
            ),
            (
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE at < ? LIMIT ?)",
                events_before,
            ),
        ];
        let mut counts = [0u64; 3];
        for (n, (sql, before)) in counts.iter_mut().zip(kinds) {
            if let Some(t) = before {
                *n = self.purge_batches(sql, t).await?;
            }
        }
        let [audit, ops, events] = counts;
        Ok((audit, ops, events))
    }

    async fn purge_batches(&self, sql: &'static str, before: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let mut tx = self.begin().await?;
            let n = sqlx::query(sql)
                .bind(before)
                .bind(PURGE_BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            self.commit(tx).await?;
            total += n;
            if n < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(at: i64) -> AuditRow {
        AuditRow {
            seq: 0,
            at,
            user_id: Some("u".into()),
            user_name: Some("ann".into()),
            address: "127.0.0.1".into(),
            method: "POST".into(),
            path: "/api/v1/guests".into(),
            action: "guest_create".into(),
            object: Some("g".into()),
            status: 202,
        }
    }

    #[tokio::test]
    async fn purging_removes_only_what_is_older_than_each_cutoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        for at in [100, 200, 300] {
            store.record_audit(&row(at)).await.unwrap();
        }
        let mut tx = store.begin().await.unwrap();
        for (id, state, finished) in [
            ("old", "succeeded", Some(100)),
            ("new", "failed", Some(300)),
            ("active", "running", None),
        ] {
            sqlx::query(
                "INSERT INTO operations (id, kind, state, steps, payload, requested_by, created_at, updated_at, finished_at) \
                 VALUES (?, 'guest.start', ?, '[]', '{}', 'u', 0, 0, ?)",
            )
            .bind(id)
            .bind(state)
            .bind(finished)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        for at in [100, 300] {
            sqlx::query("INSERT INTO events (at, kind, subject, data) VALUES (?, 'k', 's', '{}')")
                .bind(at)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        store.commit(tx).await.unwrap();

        assert_eq!(
            store.purge_older(Some(250), Some(250), None).await.unwrap(),
            (2, 1, 0)
        );
        let left = store
            .audit(&AuditFilter {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(left.iter().map(|r| r.at).collect::<Vec<_>>(), vec![300]);
        let ops: Vec<(String,)> = sqlx::query_as("SELECT id FROM operations ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert_eq!(
            ops,
            vec![("active".into(),), ("new".into(),)],
            "an active operation stays"
        );
        assert_eq!(
            store.purge_older(None, None, Some(250)).await.unwrap(),
            (0, 0, 1)
        );
    }

    #[tokio::test]
    async fn a_setting_reads_its_defaults_until_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let v: serde_json::Value = store.setting("nothing").await.unwrap();
        assert_eq!(v, serde_json::Value::Null);
        store
            .set_setting("k", &serde_json::json!({"a": 1}))
            .await
            .unwrap();
        store
            .set_setting("k", &serde_json::json!({"a": 2}))
            .await
            .unwrap();
        let v: serde_json::Value = store.setting("k").await.unwrap();
        assert_eq!(v, serde_json::json!({"a": 2}));
    }
}
