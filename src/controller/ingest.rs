//! Ingest: the controller's side of the node event streams.
//!
//! A consumer group on each enrolled node's Redis Stream, read together. Only that node's
//! Redis user may append to its stream, so the stream names the sender: an event that
//! claims another node, or a step result for an operation whose node steps went to
//! another node, is refused (logged, and recorded as a `node.refused` event) and never
//! applied. Guest states and definitions are applied only to guests on the sender.
//!
//! At start the consumer first re-reads what it had
//! been handed but never acknowledged (a crash between read and commit), then new entries.
//! An entry is acknowledged only after its effect is committed to SQL, so a controller
//! crash loses nothing and a replayed entry is harmless (results carry attempt numbers,
//! states are idempotent writes). Redis going away is waited out; the connection manager
//! reconnects and the group is re-created if Redis lost it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::saga::engine::{Engine, EngineError};
use super::store::{events, observed, oplog, Store, StoreError};
use crate::model::{now_ms, GuestState, NodeEvent};
use crate::transport::{self, TransportError};

/// Refused events recorded per node and minute; more are only counted in the log.
const REFUSALS_PER_MINUTE: u32 = 20;

pub struct Ingest {
    pub store: Store,
    pub engine: Arc<Engine>,
    pub consumer: String,
    /// Refusals recorded per node in the current minute: (its start, count).
    pub refusals: std::sync::Mutex<HashMap<String, (i64, u32)>>,
    /// The controller's template directories: no node's disk-image directory may hold one.
    pub image_dirs: Vec<std::path::PathBuf>,
    /// Where node and guest samples go.
    pub metrics: Arc<crate::controller::metrics::Metrics>,
}

impl Ingest {
    pub async fn run(
        self,
        redis_url: String,
        mut nodes: watch::Receiver<Arc<Vec<String>>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let session = async {
                let mut conn = transport::connect(&redis_url).await?;
                let first = nodes.borrow_and_update().clone();
                transport::ensure_groups(&mut conn, &first).await?;
                self.drain(&mut conn, &first, true).await?;
                loop {
                    // A node enrolled since: its stream joins (with its backlog).
                    if nodes.has_changed().unwrap_or(false) {
                        let now = nodes.borrow_and_update().clone();
                        transport::ensure_groups(&mut conn, &now).await?;
                        self.drain(&mut conn, &now, true).await?;
                    }
                    let list = nodes.borrow().clone();
                    if list.is_empty() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    self.drain(&mut conn, &list, false).await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), IngestError>(())
            };
            tokio::select! {
                _ = &mut shutdown => return,
                r = session => {
                    if let Err(e) = r {
                        tracing::warn!("event streams: {}; reconnecting", crate::chain::chain(&e));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn drain(
        &self,
        conn: &mut ConnectionManager,
        nodes: &[String],
        pending: bool,
    ) -> Result<(), IngestError> {
        loop {
            let entries = match transport::read_group(
                conn,
                &self.consumer,
                nodes,
                pending,
                256,
                Duration::from_secs(1),
            )
            .await
            {
                Ok(e) => e,
                Err(TransportError::Redis(e)) if e.code() == Some("NOGROUP") => {
                    transport::ensure_groups(conn, nodes).await?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if entries.is_empty() {
                return Ok(());
            }
            let superseded = superseded_progress(&entries);
            let mut acked: HashMap<String, Vec<String>> = HashMap::new();
            for (i, entry) in entries.into_iter().enumerate() {
                let transport::StreamEntry { node, id, event } = entry;
                if !superseded.contains(&i) {
                    match event {
                        Ok(ev) => match self.handle(&node, ev).await {
                            Ok(()) => {}
                            Err(HandleError::Refused(why)) => self.refuse(&node, &why).await,
                            Err(e) => {
                                // Not acknowledged: it is re-read after the next reconnect.
                                ack_all(conn, &acked).await?;
                                return Err(IngestError::Handle {
                                    id: id.clone(),
                                    node: node.clone(),
                                    source: e,
                                });
                            }
                        },
                        Err(e) => {
                            tracing::warn!("dropping undecodable event {id} of node {node}: {e}")
                        }
                    }
                }
                acked.entry(node).or_default().push(id);
            }
            ack_all(conn, &acked).await?;
            if !pending {
                return Ok(());
            }
        }
    }

    /// A refused event is logged and recorded (`node.refused`), at most
    /// [`REFUSALS_PER_MINUTE`] per node, so a misbehaving node cannot flood the log.
    async fn refuse(&self, node: &str, why: &str) {
        tracing::warn!(node, "refused a node event: {why}");
        let now = now_ms();
        {
            let Ok(mut seen) = self.refusals.lock() else {
                return;
            };
            let (since, n) = seen.entry(node.to_string()).or_insert((now, 0));
            if now - *since > 60_000 {
                (*since, *n) = (now, 0);
            }
            *n += 1;
            if *n > REFUSALS_PER_MINUTE {
                return;
            }
        }
        let body = serde_json::json!({"node_id": node, "reason": why});
        if let Err(e) = self.store.record_event("node.refused", node, &body).await {
            tracing::warn!(node, "recording a refused event: {e}");
        }
    }

    async fn handle(&self, from: &str, ev: NodeEvent) -> Result<(), HandleError> {
        if ev.node_id() != from {
            return Err(HandleError::Refused(format!(
                "an event claiming node {} came on the stream of node {from}",
                ev.node_id()
            )));
        }
        match ev {
            NodeEvent::Heartbeat {
                node_id,
                facts,
                at_ms,
            } => {
                self.store
                    .heartbeat(&node_id, &facts, at_ms, &self.image_dirs)
                    .await?;
            }
            ev @ NodeEvent::StepFinished { .. } => self.finished(from, ev).await?,
            NodeEvent::StepProgress {
                op_id,
                step,
                attempt,
                undo,
                done,
                of,
                stage,
                migration,
                ..
            } => {
                let at = (step, attempt, undo);
                self.engine
                    .progress(from, &op_id, at, (done, of), &stage, migration.as_deref())
                    .await
                    .map_err(HandleError::engine)?;
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
                observed::set_reported_xml(&self.store, &node_id, &guest_id, &xml).await?;
            }
            NodeEvent::Metrics {
                node_id,
                at_ms,
                host,
                guests,
            } => self.record_metrics(&node_id, at_ms, host, guests).await?,
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
            observed::set_observed_state(&mut tx, guest, *state).await?;
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

    /// A step's result: applied (which also moves the saga on, in one transaction), then
    /// the node's lines join the operation's log. Only the node holding the operation
    /// gets that far: another node's result is refused by the engine.
    async fn finished(&self, from: &str, ev: NodeEvent) -> Result<(), HandleError> {
        let NodeEvent::StepFinished {
            op_id,
            step,
            attempt,
            undo,
            outcome,
            log,
            ..
        } = ev
        else {
            return Ok(());
        };
        let op_id = op_id.as_str();
        let (outcome, log) = (&outcome, log.as_slice());
        self.engine
            .apply_result(from, op_id, step, attempt, undo, outcome)
            .await
            .map_err(HandleError::engine)?;
        if !log.is_empty() {
            let mut tx = self.store.begin().await?;
            oplog::append_node(&mut tx, from, op_id, step, attempt, undo, log).await?;
            self.store.commit(tx).await?;
        }
        Ok(())
    }

    /// A node's sample: its guests' figures are kept only for guests recorded on it (a
    /// domain on its way in or out of a migration, or a foreign one, is left out). A
    /// metrics database that fails loses the sample, logged: history never holds up the
    /// events that carry state.
    async fn record_metrics(
        &self,
        node: &str,
        at_ms: i64,
        host: crate::metrics::Values,
        guests: Vec<crate::model::GuestSample>,
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = guests.iter().map(|g| g.guest_id.as_str()).collect();
        let on = observed::states_on(self.store.pool(), node, &ids).await?;
        let guests = guests
            .into_iter()
            .filter(|g| on.contains_key(&g.guest_id))
            .collect();
        if let Err(e) = self.metrics.record(node, at_ms, host, guests).await {
            tracing::warn!(node, "recording a metrics sample: {e}");
        }
        Ok(())
    }

    /// Domains the node reports that are not corral guests (S16, S17): recorded for the
    /// node's listing, never acted on. Only the reported ids are looked up.
    async fn record_foreign(
        &self,
        node: &str,
        domains: &[crate::model::DomainInfo],
    ) -> Result<(), StoreError> {
        let ids: Vec<&str> = domains.iter().map(|d| d.guest_id.as_str()).collect();
        let ours = observed::known_guests(&self.store, &ids).await?;
        let foreign: Vec<serde_json::Value> = domains
            .iter()
            .filter(|d| !ours.contains(&d.guest_id))
            .map(|d| serde_json::json!({"uuid": d.guest_id, "name": d.name, "state": d.state}))
            .collect();
        observed::set_foreign_domains(&self.store, node, &foreign).await
    }

    /// Guests the node should have but does not report.
    async fn mark_missing(
        &self,
        node: &str,
        seen: &[(String, GuestState)],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let rows = observed::expected_on(&self.store, node, at_ms).await?;
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
            if !observed::set_missing(&mut tx, g).await? {
                continue;
            }
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
    type Key<'a> = (&'a str, &'a str, usize, u32, bool);
    let mut latest: std::collections::HashMap<Key<'_>, usize> = Default::default();
    let mut xml_seen: std::collections::HashSet<(&str, &str)> = Default::default();
    let mut moot = std::collections::HashSet::new();
    for (i, e) in entries.iter().enumerate().rev() {
        let node = e.node.as_str();
        let key = match &e.event {
            // Another node's claim is refused on its own, never allowed to hide a report.
            Ok(ev) if ev.node_id() != node => continue,
            Ok(NodeEvent::DomainXml { guest_id, .. }) => {
                if !xml_seen.insert((node, guest_id.as_str())) {
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
            }) => (node, op_id.as_str(), *step, *attempt, *undo),
            Ok(NodeEvent::StepFinished {
                op_id,
                step,
                attempt,
                undo,
                ..
            }) => {
                latest.insert((node, op_id.as_str(), *step, *attempt, *undo), i);
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

/// Stored states of the `seen` guests that are on `node`, by guest id.
async fn states_on<'e, E: sqlx::SqliteExecutor<'e>>(
    ex: E,
    node: &str,
    seen: &[(String, GuestState)],
) -> Result<HashMap<String, (GuestState, i64)>, StoreError> {
    let ids: Vec<&str> = seen.iter().map(|(g, _)| g.as_str()).collect();
    observed::states_on(ex, node, &ids).await
}

/// Why reading the streams stopped; the loop reconnects and reads again.
#[derive(Debug, thiserror::Error)]
enum IngestError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An event could not be applied (the database was busy): it stays unacknowledged
    /// and is read again.
    #[error("handling event {id} of node {node}")]
    Handle {
        id: String,
        node: String,
        #[source]
        source: HandleError,
    },
}

#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("applying it")]
    Engine(#[source] EngineError),
    /// The sender may not report this: acknowledged and dropped, never retried.
    #[error("{0}")]
    Refused(String),
}

impl HandleError {
    fn engine(e: EngineError) -> Self {
        match e {
            EngineError::NotYours { .. } => HandleError::Refused(e.to_string()),
            e => HandleError::Engine(e),
        }
    }
}

async fn ack_all(
    conn: &mut ConnectionManager,
    acked: &HashMap<String, Vec<String>>,
) -> Result<(), TransportError> {
    for (node, ids) in acked {
        transport::ack(conn, node, ids).await?;
    }
    Ok(())
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

    fn entry(id: String, ev: NodeEvent) -> transport::StreamEntry {
        transport::StreamEntry {
            node: "n".into(),
            id,
            event: Ok(ev),
        }
    }

    fn progress(op: &str, attempt: u32, done: u32) -> transport::StreamEntry {
        entry(
            format!("{op}-{attempt}-{done}"),
            NodeEvent::StepProgress {
                node_id: "n".into(),
                op_id: op.into(),
                step: 2,
                attempt,
                undo: false,
                done,
                of: 5,
                stage: "s".into(),
                migration: None,
            },
        )
    }

    fn xml(guest: &str, xml: &str) -> transport::StreamEntry {
        entry(
            format!("{guest}-{xml}"),
            NodeEvent::DomainXml {
                node_id: "n".into(),
                guest_id: guest.into(),
                xml: xml.into(),
            },
        )
    }

    #[test]
    fn only_the_last_progress_of_an_unfinished_attempt_and_definition_is_written() {
        let finished = entry(
            "f".to_string(),
            NodeEvent::StepFinished {
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
                log: vec![],
            },
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
