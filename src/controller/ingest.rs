//! Ingest: the controller's side of the node event stream.
//!
//! A consumer group on one Redis Stream. At start the consumer first re-reads what it had
//! been handed but never acknowledged (a crash between read and commit), then new entries.
//! An entry is acknowledged only after its effect is committed to SQL, so a controller
//! crash loses nothing and a replayed entry is harmless (results carry attempt numbers,
//! states are idempotent writes). Redis going away is waited out; the connection manager
//! reconnects and the group is re-created if Redis lost it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::saga::engine::Engine;
use super::store::{events, Store, StoreError};
use crate::model::{now_ms, GuestState, NodeEvent};
use crate::transport::{self, TransportError};

pub struct Ingest {
    pub store: Store,
    pub engine: Arc<Engine>,
    pub consumer: String,
}

impl Ingest {
    pub async fn run(self, redis_url: String, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let session = async {
                let mut conn = transport::connect(&redis_url).await?;
                transport::ensure_group(&mut conn).await?;
                self.drain(&mut conn, true).await?;
                loop {
                    self.drain(&mut conn, false).await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), TransportError>(())
            };
            tokio::select! {
                _ = &mut shutdown => return,
                r = session => {
                    if let Err(e) = r {
                        tracing::warn!("event stream: {e}; reconnecting");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn drain(
        &self,
        conn: &mut ConnectionManager,
        pending: bool,
    ) -> Result<(), TransportError> {
        loop {
            let entries = match transport::read_group(
                conn,
                &self.consumer,
                pending,
                256,
                Duration::from_secs(1),
            )
            .await
            {
                Ok(e) => e,
                Err(TransportError::Redis(e)) if e.code() == Some("NOGROUP") => {
                    transport::ensure_group(conn).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if entries.is_empty() {
                return Ok(());
            }
            let superseded = superseded_progress(&entries);
            let mut acked = Vec::with_capacity(entries.len());
            for (i, (id, event)) in entries.into_iter().enumerate() {
                if superseded.contains(&i) {
                    acked.push(id);
                    continue;
                }
                match event {
                    Ok(ev) => {
                        if let Err(e) = self.handle(ev).await {
                            // Not acknowledged: it is re-read after the next reconnect.
                            tracing::warn!("handling node event {id}: {e}");
                            transport::ack(conn, &acked).await?;
                            return Err(TransportError::Push(e.to_string()));
                        }
                    }
                    Err(e) => tracing::warn!("dropping undecodable node event {id}: {e}"),
                }
                acked.push(id);
            }
            transport::ack(conn, &acked).await?;
            if !pending {
                return Ok(());
            }
        }
    }

    async fn handle(&self, ev: NodeEvent) -> Result<(), HandleError> {
        match ev {
            NodeEvent::Heartbeat {
                node_id,
                facts,
                at_ms,
            } => {
                self.store.heartbeat(&node_id, &facts, at_ms).await?;
            }
            NodeEvent::StepFinished {
                op_id,
                step,
                attempt,
                undo,
                outcome,
                ..
            } => {
                // Applying the result also moves the saga on (same transaction).
                self.engine
                    .apply_result(&op_id, step, attempt, undo, &outcome)
                    .await
                    .map_err(|e| HandleError::Engine(e.to_string()))?;
            }
            NodeEvent::StepProgress {
                op_id,
                step,
                attempt,
                undo,
                done,
                of,
                stage,
                ..
            } => {
                self.engine
                    .progress(&op_id, step, attempt, undo, done, of, &stage)
                    .await
                    .map_err(|e| HandleError::Engine(e.to_string()))?;
            }
            NodeEvent::DomainState {
                node_id,
                guest_id,
                state,
                at_ms,
            } => {
                let seen = typed_states(std::iter::once((guest_id, state)));
                self.observe(&node_id, &seen, at_ms).await?;
            }
            NodeEvent::DomainXml {
                node_id,
                guest_id,
                xml,
            } => {
                sqlx::query(
                    "UPDATE guests SET domain_xml = ?, updated_at = ? WHERE id = ? AND node_id = ?",
                )
                .bind(&xml)
                .bind(now_ms())
                .bind(&guest_id)
                .bind(&node_id)
                .execute(self.store.pool())
                .await
                .map_err(StoreError::from)?;
            }
            NodeEvent::Inventory {
                node_id,
                domains,
                at_ms,
            } => {
                self.record_foreign(&node_id, &domains).await?;
                let seen = typed_states(domains.into_iter().map(|d| (d.guest_id, d.state)));
                self.observe(&node_id, &seen, at_ms).await?;
                self.mark_missing(&node_id, &seen, at_ms).await?;
            }
        }
        Ok(())
    }

    /// Applies observed domain states to guests of that node (events and reconcile, S73).
    /// Most reports change nothing: the reported guests are read in one query first, and
    /// the write lock is taken only when one of them moved (then read again under it).
    /// An observation made (`at_ms`, the node's clock) before the guest's state last
    /// changed is stale: an operation's result is newer, and the next report catches up.
    async fn observe(
        &self,
        node: &str,
        seen: &[(String, GuestState)],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let current = states_on(self.store.pool(), node, seen).await?;
        if !seen
            .iter()
            .any(|(g, s)| current.get(g).is_some_and(|c| moved(*c, *s, at_ms)))
        {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        let mut current = states_on(&mut *tx, node, seen).await?;
        for (guest, state) in seen {
            let Some(cur) = current.get_mut(guest) else {
                continue;
            };
            if !moved(*cur, *state, at_ms) {
                continue;
            }
            let cur = &mut cur.0;
            if *state == GuestState::Running
                && matches!(cur, GuestState::Shutoff | GuestState::Crashed)
            {
                // Booted behind corral's back (or by the guest itself): boot jobs are due.
                crate::controller::saga::kinds::boot_jobs::mark_booted(&mut tx, guest).await?;
            }
            sqlx::query("UPDATE guests SET state = ?, updated_at = ? WHERE id = ?")
                .bind(state.as_str())
                .bind(now_ms())
                .bind(guest)
                .execute(&mut *tx)
                .await?;
            events::append(
                &mut tx,
                "guest.state",
                guest,
                &serde_json::json!({"guest_id": guest, "state": state}),
            )
            .await?;
            *cur = *state;
        }
        self.store.commit(tx).await
    }

    /// Domains the node reports that are not corral guests (S16, S17): recorded for the
    /// node's listing, never acted on. Only the reported ids are looked up.
    async fn record_foreign(
        &self,
        node: &str,
        domains: &[crate::model::DomainInfo],
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = domains.iter().map(|d| d.guest_id.as_str()).collect();
        let ours: HashSet<String> = sqlx::query_as::<_, (String,)>(
            "SELECT id FROM guests WHERE id IN (SELECT value FROM json_each(?))",
        )
        .bind(serde_json::to_string(&ids)?)
        .fetch_all(self.store.pool())
        .await?
        .into_iter()
        .map(|r| r.0)
        .collect();
        let foreign: Vec<serde_json::Value> = domains
            .iter()
            .filter(|d| !ours.contains(&d.guest_id))
            .map(|d| serde_json::json!({"uuid": d.guest_id, "name": d.name, "state": d.state}))
            .collect();
        sqlx::query("UPDATE nodes SET foreign_domains = ? WHERE id = ?")
            .bind(serde_json::Value::Array(foreign).to_string())
            .bind(node)
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// Guests the node should have but does not report.
    async fn mark_missing(
        &self,
        node: &str,
        seen: &[(String, GuestState)],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let rows: Vec<(String, GuestState)> = sqlx::query_as(
            "SELECT id, state FROM guests WHERE node_id = ? AND lock_op IS NULL \
             AND domain_xml IS NOT NULL AND state_at <= ?",
        )
        .bind(node)
        .bind(at_ms)
        .fetch_all(self.store.pool())
        .await?;
        let seen: HashSet<&str> = seen.iter().map(|(g, _)| g.as_str()).collect();
        let missing: Vec<String> = rows
            .into_iter()
            .filter(|(id, state)| *state != GuestState::Missing && !seen.contains(id.as_str()))
            .map(|(id, _)| id)
            .collect();
        let s = GuestState::Missing;
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = self.store.begin().await?;
        for g in &missing {
            sqlx::query(
                "UPDATE guests SET state = ?, updated_at = ? WHERE id = ? AND lock_op IS NULL",
            )
            .bind(s.as_str())
            .bind(now_ms())
            .bind(g)
            .execute(&mut *tx)
            .await?;
            events::append(
                &mut tx,
                "guest.state",
                g,
                &serde_json::json!({"guest_id": g, "state": s}),
            )
            .await?;
        }
        self.store.commit(tx).await
    }
}

/// The positions in a batch of reports that a later entry of the same batch makes moot: a
/// later progress report of the same step attempt or that attempt's result, a later
/// definition of the same guest from the same node. Under load they often arrive together;
/// only what they end at is written.
fn superseded_progress(entries: &[transport::StreamEntry]) -> std::collections::HashSet<usize> {
    type Key<'a> = (&'a str, usize, u32, bool);
    let mut latest: std::collections::HashMap<Key<'_>, usize> = Default::default();
    let mut xml_seen: std::collections::HashSet<(&str, &str)> = Default::default();
    let mut moot = std::collections::HashSet::new();
    for (i, (_, ev)) in entries.iter().enumerate().rev() {
        let key = match ev {
            Ok(NodeEvent::DomainXml {
                node_id, guest_id, ..
            }) => {
                if !xml_seen.insert((node_id.as_str(), guest_id.as_str())) {
                    moot.insert(i);
                }
                continue;
            }
            Ok(NodeEvent::StepProgress {
                op_id,
                step,
                attempt,
                undo,
                ..
            }) => (op_id.as_str(), *step, *attempt, *undo),
            Ok(NodeEvent::StepFinished {
                op_id,
                step,
                attempt,
                undo,
                ..
            }) => {
                latest.insert((op_id.as_str(), *step, *attempt, *undo), i);
                continue;
            }
            _ => continue,
        };
        if let std::collections::hash_map::Entry::Vacant(e) = latest.entry(key) {
            e.insert(i);
        } else {
            moot.insert(i);
        }
    }
    moot
}

/// Whether an observed state should replace the stored one: it differs, and no
/// operation in flight owns the guest's state.
fn moved(current: (GuestState, i64), observed: GuestState, at_ms: i64) -> bool {
    current.0 != observed && !current.0.owned_by_operation() && at_ms >= current.1
}

/// The states a node reports, typed; a state this controller does not know (a newer
/// node's) is left out rather than stored.
fn typed_states(reported: impl Iterator<Item = (String, String)>) -> Vec<(String, GuestState)> {
    reported
        .filter_map(|(g, s)| match GuestState::parse(&s) {
            Some(state) => Some((g, state)),
            None => {
                tracing::warn!(guest = %g, "ignoring unknown domain state {s}");
                None
            }
        })
        .collect()
}

/// Stored states of the `seen` guests that are on `node`, by guest id: one primary-key
/// lookup per reported guest (`CROSS JOIN` fixes the order), never a walk over the node.
async fn states_on<'e, E: sqlx::SqliteExecutor<'e>>(
    ex: E,
    node: &str,
    seen: &[(String, GuestState)],
) -> Result<HashMap<String, (GuestState, i64)>, StoreError> {
    let ids: Vec<&str> = seen.iter().map(|(g, _)| g.as_str()).collect();
    let rows: Vec<(String, GuestState, i64)> = sqlx::query_as(
        "SELECT g.id, g.state, g.state_at FROM json_each(?) AS s CROSS JOIN guests AS g \
         ON g.id = s.value WHERE g.node_id = ?",
    )
    .bind(serde_json::to_string(&ids)?)
    .bind(node)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|(g, s, at)| (g, (s, at))).collect())
}

#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Engine(String),
}

/// Liveness: nodes silent for longer than the timeout go offline, their guests "unknown".
pub async fn liveness(
    store: Store,
    timeout: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                let deadline = now_ms() - timeout.as_millis() as i64;
                match store.expire_nodes(deadline).await {
                    Ok(nodes) => for n in nodes { tracing::warn!(node = %n, "node missed its heartbeats: offline") },
                    Err(e) => tracing::warn!("liveness: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StepOutcome;

    fn progress(op: &str, attempt: u32, done: u32) -> transport::StreamEntry {
        (
            format!("{op}-{attempt}-{done}"),
            Ok(NodeEvent::StepProgress {
                node_id: "n".into(),
                op_id: op.into(),
                step: 2,
                attempt,
                undo: false,
                done,
                of: 5,
                stage: "s".into(),
            }),
        )
    }

    fn xml(guest: &str, xml: &str) -> transport::StreamEntry {
        (
            format!("{guest}-{xml}"),
            Ok(NodeEvent::DomainXml {
                node_id: "n".into(),
                guest_id: guest.into(),
                xml: xml.into(),
            }),
        )
    }

    #[test]
    fn only_the_last_progress_of_an_unfinished_attempt_and_definition_is_written() {
        let finished = (
            "f".to_string(),
            Ok(NodeEvent::StepFinished {
                node_id: "n".into(),
                op_id: "a".into(),
                step: 2,
                attempt: 1,
                undo: false,
                outcome: StepOutcome::Ok {
                    guest_state: None,
                    domain_xml: None,
                    output: None,
                },
            }),
        );
        let batch = vec![
            progress("a", 1, 1), // 0: its result follows
            progress("b", 1, 1), // 1: a later report follows
            progress("a", 1, 2), // 2: its result follows
            finished,            // 3
            progress("b", 1, 2), // 4: kept
            progress("b", 2, 1), // 5: another attempt, kept
            xml("g", "<1>"),     // 6: a later definition of g follows
            xml("h", "<1>"),     // 7: kept
            xml("g", "<2>"),     // 8: kept
        ];
        let mut moot: Vec<usize> = superseded_progress(&batch).into_iter().collect();
        moot.sort();
        assert_eq!(moot, vec![0, 1, 2, 6]);
    }
}
