//! What a node's queue keeps once its jobs end, and when it is deleted.
//!
//! A job's arguments sit in its queue's data hash (`corral:node:<id>:data`) from the push
//! until someone deletes them, and those arguments can be secrets: a guest's password hash
//! and SSH keys travel in the create's build job. apalis-redis deletes nothing by itself,
//! so the controller does:
//! 1. Nodes acknowledge every job they finish (the queue is built with
//!    `persist_results(true)`): apalis moves the job's id from the worker's in-flight set to
//!    the queue's `done` set (or `dead`, for a job that gave up).
//! 2. Every enrollment sync (`controller::enroll`, every 2 s) the controller [`sweep`]s each
//!    enrolled node's queue: it pops ended ids from `done` and `dead` and deletes their data
//!    and metadata. An id reaches those sets only after leaving every in-flight set, so no
//!    worker can fetch it again: deleting its data can never poison a fetch.
//! 3. When a node is removed, [`purge`] deletes its whole queue.
//!
//! A job still queued or running keeps its data: it is needed. A job whose node died keeps
//! it until apalis re-delivers the job to the returning node, which then finishes (or skips)
//! it and acknowledges it, or until the node is removed.

use redis::aio::ConnectionManager;

use super::{queue_config, TransportError};

/// Ids popped per set per sweep: bounds one script's run; a larger backlog takes a few syncs.
const SWEEP_BATCH: usize = 1000;

/// Pops up to ARGV[1] ids from each ended set and deletes their data and metadata.
/// KEYS[1] = done set, KEYS[2] = dead set, KEYS[3] = data hash; ARGV[2] = metadata prefix.
const SWEEP: &str = r"
local swept = 0
for s = 1, 2 do
  local ids = redis.call('SPOP', KEYS[s], tonumber(ARGV[1]))
  for _, id in ipairs(ids) do
    redis.call('HDEL', KEYS[3], id)
    redis.call('DEL', ARGV[2] .. ':' .. id)
    swept = swept + 1
  end
end
return swept
";

/// Deletes the data and metadata of node `node_id`'s ended jobs; returns how many.
pub async fn sweep(conn: &mut ConnectionManager, node_id: &str) -> Result<u64, TransportError> {
    let cfg = queue_config(node_id);
    let n: u64 = redis::Script::new(SWEEP)
        .key(cfg.done_jobs_set())
        .key(cfg.dead_jobs_set())
        .key(cfg.job_data_hash())
        .arg(SWEEP_BATCH)
        .arg(cfg.job_meta_hash())
        .invoke_async(conn)
        .await?;
    Ok(n)
}

/// Deletes every key of node `node_id`'s queue: the node is gone, and so are its jobs.
pub async fn purge(conn: &mut ConnectionManager, node_id: &str) -> Result<u64, TransportError> {
    let pattern = format!("{}:*", super::queue_name(node_id));
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
