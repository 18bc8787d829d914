//! Per-node Redis ACL users: a node can touch only its own keys.
//!
//! When an administrator enrolls a node, the controller mints a random secret, keeps only
//! its SHA-256 digest, and installs a Redis user `corral-node-<id>` holding that digest.
//! The user may:
//! * read and write its own queue's keys (`corral:node:<id>:*`), and apalis's registry of
//!   queue names, which its worker registration writes;
//! * append to its own event stream (`corral:events:<id>`) and nothing else there;
//! * read, never write, its own fences (`corral:fence:<id>:*`): it cannot make a stale or
//!   forged job runnable;
//! * subscribe to its own wake channel.
//!
//! Commands that reach beyond keys (administration, `KEYS`/`SCAN`, flushing, scripts'
//! cache, functions) are refused. Redis does not persist users created by `ACL SETUSER`
//! across a restart, so the controller re-installs missing ones every few seconds from the
//! digests in its database (see `controller::enroll`); the secret itself is never stored.

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::{events_stream, queue_name, TransportError};

/// The prefix of every node's Redis user.
pub const USER_PREFIX: &str = "corral-node-";

/// The Redis user of node `node_id`.
pub fn user_name(node_id: &str) -> String {
    format!("{USER_PREFIX}{node_id}")
}

/// Node ids become parts of key patterns and user names, so glob characters, spaces and
/// `@`/`:` are refused: letters, digits, `.`, `_`, `-`, 1 to 64 characters, starting with
/// a letter or a digit.
pub fn valid_node_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && id.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A fresh secret: 32 random bytes, hex (URL-safe as it is).
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// What is kept of a secret: its SHA-256, in hex, the form `ACL SETUSER #<hash>` takes.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The only commands a node's user may run: what its worker runs (apalis-redis's Lua
/// scripts, which Redis checks command by command, and the few commands it sends itself),
/// its event publisher (`XADD`), its fence checks (`GET`), its wake channel, and connection
/// upkeep. Nothing that looks beyond its own keys (`KEYS`, `SCAN`, `DBSIZE`, `MEMORY`,
/// `PUBSUB`, `INFO`, `CONFIG`), administers a stream (`XTRIM`, `XGROUP`, `XDEL`), or
/// touches scripts or functions beyond loading its own (`SCRIPT FLUSH`, `FUNCTION`).
pub const NODE_COMMANDS: &[&str] = &[
    // Connection upkeep.
    "auth",
    "hello",
    "ping",
    "echo",
    "select",
    "reset",
    "quit",
    "client|setname",
    "client|getname",
    "client|id",
    // apalis-redis's scripts, run by digest and loaded when Redis lost them.
    "evalsha",
    "eval",
    "script|load",
    "script|exists",
    "time",
    // What those scripts and the worker call.
    "get",
    "set",
    "setnx",
    "del",
    "exists",
    "expire",
    "hget",
    "hset",
    "hsetnx",
    "hmget",
    "hmset",
    "hdel",
    "hgetall",
    "hkeys",
    "zadd",
    "zrem",
    "zcard",
    "zcount",
    "zscore",
    "zrange",
    "zrevrange",
    "zrangebyscore",
    "lpush",
    "rpush",
    "llen",
    "lrange",
    "lrem",
    "ltrim",
    "sadd",
    "srem",
    "scard",
    "smembers",
    "sismember",
    // Its event stream, its wake channel.
    "xadd",
    "publish",
    "subscribe",
    "unsubscribe",
    "psubscribe",
    "punsubscribe",
];

/// The ACL rules of node `node_id`'s user, after `reset`.
pub fn rules(node_id: &str, secret_sha256: &str) -> Vec<String> {
    let mut r = vec![
        "reset".into(),
        "on".into(),
        format!("#{secret_sha256}"),
        format!("~{}:*", queue_name(node_id)),
        "~core:apalis:queues:list".into(),
        format!("~{}", events_stream(node_id)),
        format!("%R~corral:fence:{node_id}:*"),
        format!("&{}", super::wake_channel(node_id)),
        "-@all".into(),
    ];
    r.extend(NODE_COMMANDS.iter().map(|c| format!("+{c}")));
    r
}

/// Installs (or replaces) node `node_id`'s user.
pub async fn install(
    conn: &mut ConnectionManager,
    node_id: &str,
    secret_sha256: &str,
) -> Result<(), TransportError> {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(user_name(node_id))
        .arg(rules(node_id, secret_sha256))
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Closes every connection node `node_id`'s user has open: after a rotation, what was
/// logged in with the old secret must not keep working (Redis re-checks a user's rules on
/// each command, but not the password it logged in with). Returns how many were closed.
pub async fn kill_clients(
    conn: &mut ConnectionManager,
    node_id: &str,
) -> Result<i64, TransportError> {
    Ok(redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg(user_name(node_id))
        .query_async::<i64>(conn)
        .await?)
}

/// Removes node `node_id`'s user (its connections are closed by Redis) and its stream.
pub async fn remove(conn: &mut ConnectionManager, node_id: &str) -> Result<(), TransportError> {
    redis::cmd("ACL")
        .arg("DELUSER")
        .arg(user_name(node_id))
        .query_async::<i64>(conn)
        .await?;
    redis::cmd("DEL")
        .arg(events_stream(node_id))
        .query_async::<i64>(conn)
        .await?;
    Ok(())
}

/// The secret in a `redis_url` made by [`node_url`] (either form): what a node shows the
/// controller to fetch a template image. None without one.
pub fn node_secret(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let secret = if scheme.contains("unix") {
        rest.split_once('?')?
            .1
            .split('&')
            .find_map(|p| p.strip_prefix("pass="))?
    } else {
        let authority = rest.split('/').next()?;
        authority.rsplit_once('@')?.0.split_once(':')?.1
    };
    (!secret.is_empty()).then(|| secret.to_string())
}

/// The node ids that have a Redis user now.
pub async fn installed(conn: &mut ConnectionManager) -> Result<Vec<String>, TransportError> {
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query_async(conn).await?;
    Ok(users
        .into_iter()
        .filter_map(|u| u.strip_prefix(USER_PREFIX).map(str::to_string))
        .collect())
}

/// `url` (the controller's Redis URL) with node `node_id`'s credentials in place of its
/// own, for the node's `redis_url`. A node on another host may need another host part.
pub fn node_url(url: &str, node_id: &str, secret: &str) -> String {
    let user = user_name(node_id);
    if let Some((scheme, rest)) = url.split_once("://") {
        if scheme.contains("unix") {
            // Socket URLs carry credentials as query parameters.
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.is_empty() && !p.starts_with("user=") && !p.starts_with("pass="))
                .collect();
            let mut q = kept.join("&");
            if !q.is_empty() {
                q.push('&');
            }
            return format!("{scheme}://{path}?{q}user={user}&pass={secret}");
        }
        let (authority, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        return format!("{scheme}://{user}:{secret}@{host}{tail}");
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_that_could_widen_a_pattern_are_refused() {
        for ok in ["node-1", "a", "6f1c0e2b9d", "host.example_2"] {
            assert!(valid_node_id(ok), "{ok}");
        }
        for bad in [
            "",
            "*",
            "node*",
            "a?b",
            "[ab]",
            "-x",
            "a b",
            "a:b",
            "a@b",
            "x/y",
            &"n".repeat(65),
        ] {
            assert!(!valid_node_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_node_url_swaps_in_the_nodes_credentials() {
        assert_eq!(
            node_url("redis://127.0.0.1:6379/", "n1", "s3"),
            "redis://corral-node-n1:s3@127.0.0.1:6379/"
        );
        assert_eq!(
            node_url("redis://:adminpw@10.0.0.1:6380/2", "n1", "s3"),
            "redis://corral-node-n1:s3@10.0.0.1:6380/2"
        );
        assert_eq!(
            node_url("rediss://u:p@h", "n1", "s3"),
            "rediss://corral-node-n1:s3@h"
        );
        assert_eq!(
            node_url("redis+unix:///run/r.sock?db=1&pass=x", "n1", "s3"),
            "redis+unix:///run/r.sock?db=1&user=corral-node-n1&pass=s3"
        );
    }

    #[test]
    fn a_node_finds_its_secret_in_either_url_form() {
        for url in [
            "redis://127.0.0.1:6379/",
            "rediss://u:p@h",
            "redis+unix:///run/r.sock?db=1&pass=x",
        ] {
            assert_eq!(
                node_secret(&node_url(url, "n1", "s3")).as_deref(),
                Some("s3")
            );
        }
        assert_eq!(node_secret("redis://127.0.0.1:6379/"), None);
        assert_eq!(node_secret("redis+unix:///run/r.sock"), None);
    }

    #[test]
    fn rules_name_only_the_nodes_own_keys() {
        let r = rules("n1", "ab").join(" ");
        assert!(r.starts_with("reset on #ab "), "{r}");
        assert!(r.contains("~corral:node:n1:* "), "{r}");
        assert!(r.contains("%R~corral:fence:n1:* "), "{r}");
        assert!(r.contains("&corral:wake:n1 "), "{r}");
        assert!(!r.contains("n2"));
    }
}
