//! Users' scripts (OS-init profiles, boot jobs) and the boot-job queue.
//!
//! A boot job moves `pending` → `running` (claimed by one `guest.boot_jobs` operation) →
//! `done` | `failed`; an unwound run puts it back to `pending` with the error, so nothing
//! queued is ever lost. `cancelled` is a pending job its owner withdrew.

use super::{Store, StoreError, Tx};
use crate::model::now_ms;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScriptRow {
    pub kind: String,
    pub name: String,
    pub source: String,
    /// The author's name when they wrote it (shown only).
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The author's user id: who may see (unless public) and change it.
    pub owner_id: Option<String>,
    /// A boot script every user may see and queue.
    pub public: bool,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BootJobRow {
    pub id: String,
    pub guest_id: String,
    pub script: String,
    pub params: String,
    pub system: bool,
    pub state: crate::model::BootJobState,
    pub operation_id: Option<String>,
    pub actions: Option<String>,
    pub results: Option<String>,
    pub error: Option<String>,
    pub attempts: i64,
    pub requested_by: String,
    /// The requester's user id (None: corral itself).
    pub requested_by_id: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The script's source when the job was queued (what runs); None for jobs queued
    /// before sources were pinned.
    pub source: Option<String>,
    /// The values of the parameters the script declares secret, sealed
    /// (`controller::sealed`); `params` shows them as `"***"`. None once the job ended.
    pub sealed_params: Option<String>,
}

impl BootJobRow {
    /// A new pending job.
    pub fn pending(
        guest: &str,
        script: &str,
        params: &serde_json::Value,
        system: bool,
        by: super::Requester<'_>,
    ) -> Self {
        BootJobRow {
            id: crate::model::new_id(),
            guest_id: guest.to_string(),
            script: script.to_string(),
            params: params.to_string(),
            system,
            state: crate::model::BootJobState::Pending,
            operation_id: None,
            actions: None,
            results: None,
            error: None,
            attempts: 0,
            requested_by: by.name.to_string(),
            requested_by_id: by.id.map(String::from),
            created_at: now_ms(),
            finished_at: None,
            source: None,
            sealed_params: None,
        }
    }
}

macro_rules! job_cols {
    () => {
        "id, guest_id, script, params, system, state, operation_id, actions, results, error, \
         attempts, requested_by, requested_by_id, created_at, finished_at, source, sealed_params"
    };
}

pub async fn script_in(
    tx: &mut Tx<'_>,
    kind: &str,
    name: &str,
) -> Result<Option<ScriptRow>, StoreError> {
    Ok(sqlx::query_as::<_, ScriptRow>(
        "SELECT kind, name, source, created_by, created_at, updated_at, owner_id, public FROM scripts WHERE kind = ? AND name = ?",
    )
    .bind(kind)
    .bind(name)
    .fetch_optional(&mut **tx)
    .await?)
}

pub async fn insert_boot_job(tx: &mut Tx<'_>, j: &BootJobRow) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO boot_jobs (",
        job_cols!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&j.id)
    .bind(&j.guest_id)
    .bind(&j.script)
    .bind(&j.params)
    .bind(j.system)
    .bind(j.state)
    .bind(&j.operation_id)
    .bind(&j.actions)
    .bind(&j.results)
    .bind(&j.error)
    .bind(j.attempts)
    .bind(&j.requested_by)
    .bind(&j.requested_by_id)
    .bind(j.created_at)
    .bind(j.finished_at)
    .bind(&j.source)
    .bind(&j.sealed_params)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The guest's pending jobs, oldest first; `only` restricts them to those ids.
pub async fn pending_jobs_in(tx: &mut Tx<'_>, guest: &str) -> Result<Vec<BootJobRow>, StoreError> {
    Ok(sqlx::query_as::<_, BootJobRow>(concat!(
        "SELECT ",
        job_cols!(),
        " FROM boot_jobs WHERE guest_id = ? AND state = 'pending' ORDER BY created_at, id"
    ))
    .bind(guest)
    .fetch_all(&mut **tx)
    .await?)
}

/// The jobs one run claimed, in queue order.
pub async fn jobs_of_op_in(tx: &mut Tx<'_>, op: &str) -> Result<Vec<BootJobRow>, StoreError> {
    Ok(sqlx::query_as::<_, BootJobRow>(concat!(
        "SELECT ",
        job_cols!(),
        " FROM boot_jobs WHERE operation_id = ? AND state = 'running' ORDER BY created_at, id"
    ))
    .bind(op)
    .fetch_all(&mut **tx)
    .await?)
}

pub async fn claim_job(
    tx: &mut Tx<'_>,
    id: &str,
    op: &str,
    actions: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE boot_jobs SET state = 'running', operation_id = ?, actions = ?, error = NULL, \
         attempts = attempts + 1 WHERE id = ? AND state = 'pending'",
    )
    .bind(op)
    .bind(actions)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends a job: `done` or `failed`, with its per-action results. Its secret parameters go.
pub async fn end_job(
    tx: &mut Tx<'_>,
    id: &str,
    state: crate::model::BootJobState,
    results: Option<&str>,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE boot_jobs SET state = ?, results = ?, error = ?, finished_at = ?, \
         sealed_params = NULL WHERE id = ?",
    )
    .bind(state)
    .bind(results)
    .bind(error)
    .bind(now_ms())
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Puts the jobs an unwound run claimed back in the queue, with the reason.
pub async fn release_jobs(tx: &mut Tx<'_>, op: &str, error: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE boot_jobs SET state = 'pending', operation_id = NULL, actions = NULL, error = ? \
         WHERE operation_id = ? AND state = 'running'",
    )
    .bind(error)
    .bind(op)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn has_pending_jobs(tx: &mut Tx<'_>, guest: &str) -> Result<bool, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM boot_jobs WHERE guest_id = ? AND state = 'pending')",
    )
    .bind(guest)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n > 0)
}

impl Store {
    pub async fn scripts(&self, kind: &str) -> Result<Vec<ScriptRow>, StoreError> {
        Ok(sqlx::query_as::<_, ScriptRow>(
            "SELECT kind, name, source, created_by, created_at, updated_at, owner_id, public FROM scripts WHERE kind = ? ORDER BY name",
        )
        .bind(kind)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn script(&self, kind: &str, name: &str) -> Result<Option<ScriptRow>, StoreError> {
        Ok(sqlx::query_as::<_, ScriptRow>(
            "SELECT kind, name, source, created_by, created_at, updated_at, owner_id, public FROM scripts WHERE kind = ? AND name = ?",
        )
        .bind(kind)
        .bind(name)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Inserts or replaces a script (the caller has validated it).
    pub async fn put_script(&self, s: &ScriptRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO scripts (kind, name, source, created_by, created_at, updated_at, owner_id, public) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (kind, name) DO UPDATE SET source = excluded.source, \
             updated_at = excluded.updated_at, public = excluded.public",
        )
        .bind(&s.kind)
        .bind(&s.name)
        .bind(&s.source)
        .bind(&s.created_by)
        .bind(s.created_at)
        .bind(s.updated_at)
        .bind(&s.owner_id)
        .bind(s.public)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub async fn delete_script(&self, kind: &str, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM scripts WHERE kind = ? AND name = ?")
            .bind(kind)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Names of templates using a profile, and whether a guest is being created with it.
    pub async fn profile_users(&self, name: &str) -> Result<(Vec<String>, i64), StoreError> {
        let templates: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM templates WHERE os_init_profile = ? ORDER BY name")
                .bind(name)
                .fetch_all(self.pool())
                .await?;
        let (creating,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM guests WHERE os_init_profile = ?")
                .bind(name)
                .fetch_one(self.pool())
                .await?;
        Ok((templates.into_iter().map(|t| t.0).collect(), creating))
    }

    /// Pending jobs queued with a user script.
    pub async fn boot_script_pending(&self, name: &str) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM boot_jobs WHERE script = ? AND state IN ('pending', 'running')",
        )
        .bind(name)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    pub async fn boot_job(&self, id: &str) -> Result<Option<BootJobRow>, StoreError> {
        Ok(sqlx::query_as::<_, BootJobRow>(concat!(
            "SELECT ",
            job_cols!(),
            " FROM boot_jobs WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// A guest's jobs, newest first; `state` filters; system jobs only when asked.
    pub async fn boot_jobs_of(
        &self,
        guest: &str,
        state: Option<&str>,
        include_system: bool,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<BootJobRow>, StoreError> {
        Ok(sqlx::query_as::<_, BootJobRow>(concat!(
            "SELECT ",
            job_cols!(),
            " FROM boot_jobs WHERE guest_id = ? AND (? IS NULL OR state = ?) AND (? OR system = 0) \
             ORDER BY created_at DESC, id ",
            page_clause!()
        ))
        .bind(guest)
        .bind(state)
        .bind(state)
        .bind(include_system)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.pool())
        .await?)
    }

    /// Guests with pending jobs (S19): id, name, and how many.
    pub async fn guests_with_pending_jobs(
        &self,
        include_system: bool,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT g.id, g.name, COUNT(*) FROM boot_jobs j JOIN guests g ON g.id = j.guest_id \
             WHERE j.state = 'pending' AND (? OR j.system = 0) GROUP BY g.id, g.name ORDER BY g.name",
        )
        .bind(include_system)
        .fetch_all(self.pool())
        .await?)
    }

    /// Withdraws a pending job (its secret parameters go). False when it is no longer
    /// pending.
    pub async fn cancel_boot_job(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE boot_jobs SET state = 'cancelled', finished_at = ?, sealed_params = NULL \
             WHERE id = ? AND state = 'pending'",
        )
        .bind(now_ms())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }
}
