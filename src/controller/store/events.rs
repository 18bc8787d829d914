//! The event log: every state change, with a monotonically increasing sequence number that
//! SSE clients resume from (`Last-Event-ID`).

use serde::Serialize;

use super::{Store, StoreError, Tx};
use crate::model::now_ms;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub subject: String,
    pub data: String,
}

/// Appends an event inside the caller's transaction: the event exists iff the change does.
pub async fn append<T: Serialize>(
    tx: &mut Tx<'_>,
    kind: &str,
    subject: &str,
    data: &T,
) -> Result<(), StoreError> {
    let data = serde_json::to_string(data)?;
    sqlx::query("INSERT INTO events (at, kind, subject, data) VALUES (?, ?, ?, ?)")
        .bind(now_ms())
        .bind(kind)
        .bind(subject)
        .bind(data)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl Store {
    /// Records an event that goes with no other change, in its own transaction.
    pub async fn record_event<T: Serialize>(
        &self,
        kind: &str,
        subject: &str,
        data: &T,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        append(&mut tx, kind, subject, data).await?;
        self.commit(tx).await
    }

    pub async fn events_after(&self, seq: i64, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        Ok(sqlx::query_as::<_, EventRow>(
            "SELECT seq, at, kind, subject, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(seq)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn last_event_seq(&self) -> Result<i64, StoreError> {
        let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM events")
            .fetch_one(self.pool())
            .await?;
        Ok(seq.unwrap_or(0))
    }
}
