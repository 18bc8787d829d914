//! Redis transport: per-node job queues (apalis-redis) down, one event stream per node
//! (XADD / consumer group) up.
//!
//! Every key a node touches carries its id, so a per-node Redis ACL user (see [`acl`])
//! confines it to its own queue, its own stream, read-only access to its own fences and
//! its own wake channel. The stream an event arrives on therefore names its sender.
//!
//! apalis-redis 1.0 has defects we design around (see docs/ARCHITECTURE.md):
//! * the worker's idle pickup waits a whole heartbeat unless polled: the controller
//!   publishes a wake-up on the node's channel after each push, and nodes poll every
//!   500 ms only as the fallback;
//! * orphaned jobs come back after `heartbeat × missed`: 2 s × 3 here, not 300 s;
//! * a queue holding thousands of due jobs breaks fetching: the controller keeps the
//!   backlog in SQL and only dispatches a small window per node;
//! * its retry policy is fixed: job handlers never fail for retry's sake; the saga decides.

use std::collections::HashMap;
use std::time::Duration;

use apalis::prelude::TaskSink;
use apalis_redis::{Config as QueueConfig, RedisStorage};
use redis::aio::ConnectionManager;
use tokio::sync::Mutex;

use crate::model::{NodeEvent, NodeJob};

pub mod acl;
pub mod jobdata;

/// The controller's consumer group on every node's event stream.
pub const CONTROLLER_GROUP: &str = "controller";
/// Cap on the stream length: acknowledged history beyond this is trimmed.
const STREAM_MAXLEN: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("pushing a job")]
    Push(#[source] crate::chain::Cause),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
}

/// The queue a node consumes. Nodes read only their own.
pub fn queue_name(node_id: &str) -> String {
    format!("corral:node:{node_id}")
}

/// The stream node `node_id` appends its reports to; only that node may write it.
pub fn events_stream(node_id: &str) -> String {
    format!("corral:events:{node_id}")
}

/// The pub/sub channel that wakes a node's queue worker as soon as a job is pushed (its
/// poll is only the fallback for a wake it missed).
pub fn wake_channel(node_id: &str) -> String {
    format!("corral:wake:{node_id}")
}

/// The one apalis-redis configuration, shared by producer and consumer so both agree on keys.
pub fn queue_config(node_id: &str) -> QueueConfig {
    QueueConfig::default()
        .queue(queue_name(node_id))
        .heartbeat_interval(Duration::from_secs(2))
        .missed_heartbeats(3)
        .batch_size(16)
        // Nodes acknowledge finished jobs, so the controller can delete their data, which
        // may hold secrets (see [`jobdata`]).
        .persist_results(true)
        // No `tasks:*` pub/sub: nothing listens, and a node's ACL allows no such channel.
        .emit_events(false)
}

pub async fn connect(url: &str) -> Result<ConnectionManager, TransportError> {
    let client = redis::Client::open(url)?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_number_of_retries(2);
    Ok(ConnectionManager::new_with_config(client, cfg).await?)
}

/// The fencing key of one dispatched step: it holds the attempt number the controller is
/// waiting for. A node runs a job only while the key holds the job's attempt, so a stale
/// copy (re-queued by apalis after a crash, or superseded by a re-dispatch) can never act
/// after the saga moved on — e.g. re-create a seed that an undo already removed.
/// The key carries the node's id: a node may read its own fences, never write them.
pub fn fence_key(node_id: &str, op_id: &str, step: usize, undo: bool) -> String {
    format!(
        "corral:fence:{node_id}:{op_id}:{step}:{}",
        if undo { "undo" } else { "do" }
    )
}

/// What a fence holding no attempt means: the step was given up while it ran (attempts
/// count from 1).
pub const INTERRUPTED: u32 = 0;
/// How long an interrupted fence is kept: longer than any job polls it.
const INTERRUPTED_TTL: Duration = Duration::from_secs(3600);

/// What a running job's fence says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The controller waits for this attempt.
    Holds,
    /// The step was given up: stop, and remove what was written.
    Interrupted,
    /// Another attempt runs, or the step is settled: stop, and leave everything.
    Gone,
}

/// What the fence says about `job`.
pub async fn fence_state(
    conn: &mut ConnectionManager,
    node_id: &str,
    job: &NodeJob,
) -> Result<Fence, TransportError> {
    let v: Option<u32> = redis::cmd("GET")
        .arg(fence_key(node_id, &job.op_id, job.step, job.undo))
        .query_async(conn)
        .await?;
    Ok(match v {
        Some(a) if a == job.attempt => Fence::Holds,
        Some(INTERRUPTED) => Fence::Interrupted,
        _ => Fence::Gone,
    })
}

/// Producer side of the node queues, used by the controller.
/// Connects lazily: the controller serves its API and accepts work while Redis is still
/// down (S84); jobs wait in SQL and go out once Redis answers.
pub struct Queues {
    url: String,
    conn: Mutex<Option<ConnectionManager>>,
    storages: Mutex<HashMap<String, RedisStorage<NodeJob>>>,
    /// Jobs whose fence was set but whose push failed (Redis went away between the
    /// two): their fence may survive in Redis's AOF while the job does not, so the
    /// check for jobs that never reached Redis must not trust the fence for them.
    unpushed: std::sync::Mutex<std::collections::HashSet<JobKey>>,
}

/// A job as the fence names it: node, operation, step, undo, attempt.
type JobKey = (String, String, usize, bool, u32);

impl Queues {
    pub fn new(url: &str) -> Self {
        Queues {
            url: url.to_string(),
            conn: Mutex::new(None),
            storages: Mutex::new(HashMap::new()),
            unpushed: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    async fn conn(&self) -> Result<ConnectionManager, TransportError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = connect(&self.url).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Records `attempt` as the one to run (expires after `ttl`: older jobs are void).
    pub async fn fence(
        &self,
        node_id: &str,
        op_id: &str,
        step: usize,
        undo: bool,
        attempt: u32,
        ttl: Duration,
    ) -> Result<(), TransportError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(fence_key(node_id, op_id, step, undo))
            .arg(attempt)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Whether the fence names `attempt` (the job was fenced, so about to be or already
    /// pushed), or says the step was interrupted since: a pivot step stays running after
    /// its interrupt, and its job must not be sent again (the copy would be superseded
    /// by the next interrupt, and the first would never be heard).
    pub async fn fence_is(
        &self,
        node_id: &str,
        op_id: &str,
        step: usize,
        undo: bool,
        attempt: u32,
    ) -> Result<bool, TransportError> {
        let key = (node_id.to_string(), op_id.to_string(), step, undo, attempt);
        if self.unpushed.lock().is_ok_and(|u| u.contains(&key)) {
            return Ok(false);
        }
        let mut conn = self.conn().await?;
        let v: Option<u32> = redis::cmd("GET")
            .arg(fence_key(node_id, op_id, step, undo))
            .query_async(&mut conn)
            .await?;
        Ok(v == Some(attempt) || v == Some(INTERRUPTED))
    }

    /// The step was given up while it ran: the fence names no attempt ([`INTERRUPTED`]),
    /// so the running job stops and removes what it wrote, and no copy starts.
    pub async fn interrupt(
        &self,
        node_id: &str,
        op_id: &str,
        step: usize,
        undo: bool,
    ) -> Result<(), TransportError> {
        self.fence(node_id, op_id, step, undo, INTERRUPTED, INTERRUPTED_TTL)
            .await
    }

    /// The step is settled: no copy of its job may run any more.
    pub async fn unfence(
        &self,
        node_id: &str,
        op_id: &str,
        step: usize,
        undo: bool,
    ) -> Result<(), TransportError> {
        let mut conn = self.conn().await?;
        redis::cmd("DEL")
            .arg(fence_key(node_id, op_id, step, undo))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn push_job(&self, node_id: &str, job: NodeJob) -> Result<(), TransportError> {
        let conn = self.conn().await?;
        let mut map = self.storages.lock().await;
        let storage = map
            .entry(node_id.to_string())
            .or_insert_with(|| RedisStorage::new(conn).with_config(queue_config(node_id)));
        storage
            .push(job)
            .await
            .map_err(|e| TransportError::Push(Box::new(e)))
    }

    pub async fn push(&self, node_id: &str, job: NodeJob) -> Result<(), TransportError> {
        let key = (
            node_id.to_string(),
            job.op_id.clone(),
            job.step,
            job.undo,
            job.attempt,
        );
        let pushed = self.push_job(node_id, job).await;
        if let Ok(mut u) = self.unpushed.lock() {
            if pushed.is_ok() {
                // Whatever attempt of this step failed before, this one is in Redis.
                u.retain(|k| (&k.0, &k.1, k.2, k.3) != (&key.0, &key.1, key.2, key.3));
            } else {
                u.insert(key);
            }
        }
        pushed?;
        // A lost wake costs one fallback poll interval, nothing more.
        let mut conn = self.conn().await?;
        if let Err(e) = redis::cmd("PUBLISH")
            .arg(wake_channel(node_id))
            .arg(1)
            .query_async::<i64>(&mut conn)
            .await
        {
            tracing::debug!(node = node_id, "waking the node's worker: {e}");
        }
        Ok(())
    }
}

/// Appends one event to node `node_id`'s stream (node side).
pub async fn publish(
    conn: &mut ConnectionManager,
    node_id: &str,
    event: &NodeEvent,
) -> Result<(), TransportError> {
    let body = serde_json::to_string(event)?;
    redis::cmd("XADD")
        .arg(events_stream(node_id))
        .arg("MAXLEN")
        .arg("~")
        .arg(STREAM_MAXLEN)
        .arg("*")
        .arg("e")
        .arg(body)
        .query_async::<String>(conn)
        .await?;
    Ok(())
}

/// Creates the consumer group (and the stream) of each node unless it exists.
pub async fn ensure_groups(
    conn: &mut ConnectionManager,
    nodes: &[String],
) -> Result<(), TransportError> {
    for node in nodes {
        let r: Result<String, _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(events_stream(node))
            .arg(CONTROLLER_GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match r {
            Ok(_) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One stream entry: the node whose stream it came from (its sender: only that node may
/// write there), its id (for XACK) and the decoded event, or the decode error.
pub struct StreamEntry {
    pub node: String,
    pub id: String,
    pub event: Result<NodeEvent, serde_json::Error>,
}

/// Reads entries for `consumer` from the streams of `nodes` (at least one). `pending =
/// true` re-reads entries delivered before but not acknowledged (what a crashed controller
/// had in hand); otherwise new ones, blocking up to `block`.
pub async fn read_group(
    conn: &mut ConnectionManager,
    consumer: &str,
    nodes: &[String],
    pending: bool,
    count: usize,
    block: Duration,
) -> Result<Vec<StreamEntry>, TransportError> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(CONTROLLER_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if !pending {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS");
    for node in nodes {
        cmd.arg(events_stream(node));
    }
    for _ in nodes {
        cmd.arg(if pending { "0" } else { ">" });
    }
    // A BLOCK that times out answers nil.
    let Some(reply): Option<redis::streams::StreamReadReply> = cmd.query_async(conn).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for key in reply.keys {
        let Some(node) = key.key.strip_prefix("corral:events:") else {
            continue;
        };
        for entry in key.ids {
            let body: Option<String> = entry.get("e");
            let event = serde_json::from_str::<NodeEvent>(body.as_deref().unwrap_or(""));
            out.push(StreamEntry {
                node: node.to_string(),
                id: entry.id,
                event,
            });
        }
    }
    Ok(out)
}

/// Acknowledges entries of node `node`'s stream.
pub async fn ack(
    conn: &mut ConnectionManager,
    node: &str,
    ids: &[String],
) -> Result<(), TransportError> {
    if ids.is_empty() {
        return Ok(());
    }
    redis::cmd("XACK")
        .arg(events_stream(node))
        .arg(CONTROLLER_GROUP)
        .arg(ids)
        .query_async::<i64>(conn)
        .await?;
    Ok(())
}
