//! Operation rows: one per saga, with its steps as JSON and its progress columns.

use super::{Store, StoreError, Tx};
use crate::model::{OpState, StepRecord};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OpRow {
    pub id: String,
    pub kind: String,
    pub guest_id: Option<String>,
    pub node_id: Option<String>,
    pub state: crate::model::OpState,
    pub steps: String,
    pub cursor: i64,
    pub payload: String,
    pub stage: String,
    pub percent: i64,
    pub message: String,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub inflight_node: Option<String>,
    /// The requester's name when they asked (shown; never used to decide access).
    pub requested_by: String,
    /// The requester's user id (None: corral itself, or a user from before ids were kept).
    pub requested_by_id: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
    /// Why the operation is being ended from outside (a node's removal).
    pub abandon_reason: Option<String>,
}

impl OpRow {
    pub fn op_state(&self) -> OpState {
        self.state
    }
    pub fn step_records(&self) -> Result<Vec<StepRecord>, StoreError> {
        Ok(serde_json::from_str(&self.steps)?)
    }

    /// What step `name` reported, read as its action's typed report: None when it
    /// reported nothing (it did not run on a node), an error when the report is not of
    /// that type (a corrupt row, or a node that lies).
    pub fn report<R: crate::model::Report>(&self, name: &str) -> Result<Option<R>, StoreError> {
        let output = self
            .step_records()?
            .into_iter()
            .find(|s| s.name == name)
            .and_then(|s| s.output);
        Ok(output.map(serde_json::from_value).transpose()?)
    }
}

/// Who asked for an operation or a boot job: the id decides who may see it, the name is
/// what people read.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    pub id: Option<&'a str>,
    pub name: &'a str,
}

impl<'a> Requester<'a> {
    pub fn user(u: &'a super::UserRow) -> Self {
        Requester {
            id: Some(&u.id),
            name: &u.name,
        }
    }

    /// corral itself (the janitor, a run of boot jobs after a boot), under `name`.
    pub fn system(name: &'a str) -> Self {
        Requester { id: None, name }
    }
}

macro_rules! op_cols {
    () => {
        "id, kind, guest_id, node_id, state, steps, cursor, payload, stage, percent, message, \
    error, cancel_requested, inflight_node, requested_by, requested_by_id, created_at, started_at, \
    updated_at, finished_at, abandon_reason"
    };
}

/// Typed list filter: never SQL built from strings.
#[derive(Debug, Default, Clone)]
pub struct OpFilter {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub guest_id: Option<String>,
    pub active_only: bool,
    pub limit: i64,
    pub offset: i64,
    /// Only what this user (by id) may see: their requests and operations on their
    /// guests. None: everything.
    pub visible_to: Option<String>,
}

pub async fn insert_op(tx: &mut Tx<'_>, op: &OpRow) -> Result<(), StoreError> {
    sqlx::query(concat!(
        "INSERT INTO operations (",
        op_cols!(),
        ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&op.id)
    .bind(&op.kind)
    .bind(&op.guest_id)
    .bind(&op.node_id)
    .bind(op.state)
    .bind(&op.steps)
    .bind(op.cursor)
    .bind(&op.payload)
    .bind(&op.stage)
    .bind(op.percent)
    .bind(&op.message)
    .bind(&op.error)
    .bind(op.cancel_requested)
    .bind(&op.inflight_node)
    .bind(&op.requested_by)
    .bind(&op.requested_by_id)
    .bind(op.created_at)
    .bind(op.started_at)
    .bind(op.updated_at)
    .bind(op.finished_at)
    .bind(&op.abandon_reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn op_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<OpRow>, StoreError> {
    Ok(sqlx::query_as::<_, OpRow>(concat!(
        "SELECT ",
        op_cols!(),
        " FROM operations WHERE id = ?"
    ))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Writes back everything the saga runner may change, with the operation's log lines
/// for what changed (`oplog.rs`).
pub async fn save_op(tx: &mut Tx<'_>, op: &OpRow) -> Result<(), StoreError> {
    let steps: Vec<StepRecord> = serde_json::from_str(&op.steps)?;
    super::oplog::transitions(
        tx,
        &op.id,
        op.node_id.as_deref(),
        &steps,
        op.state,
        op.error.as_deref(),
        op.updated_at,
    )
    .await?;
    sqlx::query(
        "UPDATE operations SET node_id = ?, state = ?, steps = ?, cursor = ?, stage = ?, percent = ?, \
         message = ?, error = ?, started_at = ?, updated_at = ?, finished_at = ?, payload = ?, \
         inflight_node = ? WHERE id = ?",
    )
    .bind(&op.node_id)
    .bind(op.state)
    .bind(&op.steps)
    .bind(op.cursor)
    .bind(&op.stage)
    .bind(op.percent)
    .bind(&op.message)
    .bind(&op.error)
    .bind(op.started_at)
    .bind(op.updated_at)
    .bind(op.finished_at)
    .bind(&op.payload)
    .bind(&op.inflight_node)
    .bind(&op.id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    pub async fn op(&self, id: &str) -> Result<Option<OpRow>, StoreError> {
        Ok(sqlx::query_as::<_, OpRow>(concat!(
            "SELECT ",
            op_cols!(),
            " FROM operations WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// A page of operations in list order (creation, then id). Only the filters given
    /// become conditions, so SQLite can walk the matching index (migration 007) in list
    /// order and stop after the page. The statement is assembled from fixed fragments;
    /// every value is bound.
    pub async fn ops(&self, f: &OpFilter) -> Result<Vec<OpRow>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(concat!(
            "SELECT ",
            op_cols!(),
            " FROM operations WHERE 1 = 1"
        ));
        if let Some(state) = &f.state {
            q.push(" AND state = ").push_bind(state);
        }
        if let Some(kind) = &f.kind {
            q.push(" AND kind = ").push_bind(kind);
        }
        if let Some(guest) = &f.guest_id {
            q.push(" AND guest_id = ").push_bind(guest);
        }
        if f.active_only {
            q.push(" AND state IN ('pending', 'running', 'undoing')");
        }
        if let Some(id) = &f.visible_to {
            q.push(" AND (requested_by_id = ")
                .push_bind(id)
                .push(" OR guest_id IN (SELECT id FROM guests WHERE owner_id = ")
                .push_bind(id)
                .push("))");
        }
        // `+?` as in `page_clause!`: a bare `LIMIT ?` is re-prepared at every execution.
        q.push(" ORDER BY created_at, id LIMIT +")
            .push_bind(f.limit)
            .push(" OFFSET +")
            .push_bind(f.offset);
        Ok(q.build_query_as::<OpRow>().fetch_all(self.pool()).await?)
    }

    /// Active operations that may have something to do: not waiting on a node, waiting
    /// on one since before `stale_before` (a lease that may have run out), or asked to
    /// cancel (a step waiting on an offline node is abandoned).
    /// Returns (operation, node) pairs, node as far as known.
    pub async fn active_op_ids(
        &self,
        stale_before: i64,
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, node_id FROM operations WHERE state IN ('pending', 'running', 'undoing') \
             AND (inflight_node IS NULL OR updated_at < ? OR cancel_requested = 1) \
             ORDER BY created_at, id",
        )
        .bind(stale_before)
        .fetch_all(self.pool())
        .await?)
    }

    /// Active operations with a node step recorded as dispatched.
    pub async fn dispatched_ops(&self) -> Result<Vec<OpRow>, StoreError> {
        Ok(sqlx::query_as::<_, OpRow>(concat!(
            "SELECT ",
            op_cols!(),
            " FROM operations WHERE inflight_node IS NOT NULL \
              AND state IN ('pending', 'running', 'undoing')"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    /// Marks a cancel request; the saga runner honours it at the next step boundary, or at
    /// once for a step waiting on an offline node (even an undo: it is abandoned).
    pub async fn request_cancel(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE operations SET cancel_requested = 1 WHERE id = ? AND state IN ('pending', 'running', 'undoing')",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() > 0)
    }
}

/// Asks operation `id` to cancel (inside a transaction); false when it already ended.
pub async fn request_cancel_in(tx: &mut Tx<'_>, id: &str) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE operations SET cancel_requested = 1 WHERE id = ? AND state IN ('pending', 'running', 'undoing')",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() > 0)
}

impl Store {
    /// Active operations of `kind` on node `node`.
    pub async fn active_node_ops(&self, node: &str, kind: &str) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM operations WHERE node_id = ? AND kind = ? \
             AND state IN ('pending', 'running', 'undoing')",
        )
        .bind(node)
        .bind(kind)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }
}

impl Store {
    /// Operations counted by kind and state, for `/metrics`.
    pub async fn op_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT kind, state, COUNT(*) FROM operations GROUP BY kind, state")
                .fetch_all(self.pool())
                .await?,
        )
    }

    /// Steps out on each node right now (operations whose step a node holds).
    pub async fn inflight_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT inflight_node, COUNT(*) FROM operations WHERE inflight_node IS NOT NULL GROUP BY inflight_node",
        )
        .fetch_all(self.pool())
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OpState;

    #[tokio::test]
    async fn an_unknown_stored_state_is_an_error_naming_it_not_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let op = OpRow {
            id: "op-1".into(),
            kind: "guest.create".into(),
            guest_id: None,
            node_id: None,
            state: OpState::Pending,
            requested_by_id: None,
            steps: "[]".into(),
            cursor: 0,
            payload: "{}".into(),
            stage: String::new(),
            percent: 0,
            message: String::new(),
            error: None,
            cancel_requested: false,
            inflight_node: None,
            requested_by: "admin".into(),
            created_at: 0,
            started_at: None,
            updated_at: 0,
            finished_at: None,
            abandon_reason: None,
        };
        let mut tx = store.begin().await.unwrap();
        insert_op(&mut tx, &op).await.unwrap();
        store.commit(tx).await.unwrap();
        assert_eq!(
            store.op("op-1").await.unwrap().unwrap().state,
            OpState::Pending
        );
        sqlx::query("UPDATE operations SET state = 'exploded' WHERE id = 'op-1'")
            .execute(store.pool())
            .await
            .unwrap();
        let e = store.op("op-1").await.unwrap_err();
        assert!(crate::chain::chain(&e).contains("exploded"), "{e}");
    }
}
