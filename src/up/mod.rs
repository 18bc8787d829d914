//! `corral up`: the single-machine setup in one process — controller, a node on the local
//! libvirt, SQLite in the data directory, and a local Redis (started as a child process
//! with append-only persistence and a password when none answers at the configured URL).
//!
//! The Redis password is generated once into `<data dir>/redis.secret` (0600) and used by
//! the controller as Redis's `default` user; the local node gets its own ACL user like any
//! node (see `controller::enroll`). A Redis already answering at the URL is used as
//! configured, with a warning when it lets anyone in without a password.
//!
//! The Redis `corral up` starts is its own to keep running: [`supervise`] restarts it
//! when it dies. One it found answering is someone else's, and is never restarted.

pub mod supervise;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use supervise::{Backoff, RedisSpec, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("redis is not reachable at {url} and redis-server could not be started: {why}")]
    Redis { url: String, why: String },
    /// What starting a Redis needed failed.
    #[error("redis is not reachable at {url} and redis-server could not be started: {what}")]
    Start {
        url: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

async fn redis_answers(url: &str) -> bool {
    let probe = async {
        let client = redis::Client::open(url)?;
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(_))
    )
}

/// `url` with `password` for Redis's `default` user (any user or password it had replaced).
pub fn with_password(url: &str, password: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) if !scheme.contains("unix") => {
            let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://:{password}@{host}{tail}")
        }
        _ => url.to_string(),
    }
}

/// The password in `url`, if it has one.
fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = authority.rsplit_once('@')?.0;
    let pw = userinfo.split_once(':').map_or("", |(_, p)| p);
    (!pw.is_empty()).then_some(pw)
}

/// Reads the data directory's Redis password, creating it (0600) at first use.
fn redis_secret(data_dir: &Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("redis.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_string());
        }
    }
    crate::modes::private_dir(data_dir)?;
    let secret = crate::transport::acl::new_secret();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(secret.as_bytes())?;
    Ok(secret)
}

/// Makes sure a Redis answers at `url` and returns the URL to use: `url` itself when it
/// carries a password or an open Redis answers there (with a warning), else the URL with
/// the data directory's password, starting a private Redis that requires it (port from
/// the URL, data in `data_dir`) when none answers. A Redis started here comes with its
/// [`Supervisor`], which restarts it with `backoff` and kills it when dropped.
pub async fn ensure_redis(
    url: &str,
    data_dir: &Path,
    backoff: Backoff,
) -> Result<(String, Option<Supervisor>), UpError> {
    let err = |why: String| UpError::Redis {
        url: url.into(),
        why,
    };
    let (url, password) = match password_of(url) {
        Some(p) => (url.to_string(), p.to_string()),
        None => {
            let secret = redis_secret(data_dir).map_err(|source| UpError::Start {
                url: url.into(),
                what: "reading its password",
                source,
            })?;
            let ours = with_password(url, &secret);
            if redis_answers(&ours).await {
                return Ok((ours, None));
            }
            if redis_answers(url).await {
                eprintln!(
                    "warning: the Redis at {url} takes clients without a password: whoever \
                     reaches it can queue jobs for every node. Set `requirepass` and give the \
                     password in CORRAL_REDIS_URL."
                );
                return Ok((url.to_string(), None));
            }
            (ours, secret)
        }
    };
    if redis_answers(&url).await {
        return Ok((url, None));
    }
    let port = url
        .rsplit(':')
        .next()
        .and_then(|p| {
            p.trim_end_matches('/')
                .split('/')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        })
        .unwrap_or(6379);
    let dir = data_dir.join("redis");
    {
        // Redis's data holds every queued job: only its owner reads it.
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| UpError::Start {
                url: url.clone(),
                what: "making its data directory",
                source,
            })?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    let spec = RedisSpec {
        port,
        dir: dir.clone(),
        password,
        url: url.clone(),
    };
    let child = spec.spawn().await.map_err(|source| UpError::Start {
        url: url.clone(),
        what: "running redis-server (apt-get install redis-server)",
        source,
    })?;
    if !spec.answers().await {
        return Err(err("it did not answer within 5 s".into()));
    }
    println!(
        "started redis-server on port {port} with a password (data in {}); corral up restarts it if it dies",
        dir.display()
    );
    Ok((url, Some(Supervisor::redis(spec, child, backoff))))
}

/// Records each restart of a supervised child as a `system.redis_restarted` event (subject:
/// the program), so `GET /events` shows it. A record that fails is logged: the restart
/// itself already happened.
pub async fn record_restarts(
    mut restarts: tokio::sync::mpsc::UnboundedReceiver<supervise::Restart>,
    store: crate::controller::store::Store,
) {
    while let Some(r) = restarts.recv().await {
        if let Err(e) = store
            .record_event("system.redis_restarted", r.program, &r)
            .await
        {
            tracing::warn!("recording the restart of {}: {e}", r.program);
        }
    }
}

/// Creates the guests' bridge when it is missing (a fresh machine has none), so the first
/// guest can start. Failure is reported, not fatal: the operator may manage bridges.
pub async fn ensure_bridge(name: &str) {
    let exists = Command::new("ip")
        .args(["link", "show", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if matches!(exists, Ok(s) if s.success()) {
        return;
    }
    let made = Command::new("ip")
        .args(["link", "add", name, "type", "bridge"])
        .status()
        .await;
    let up = Command::new("ip")
        .args(["link", "set", name, "up"])
        .status()
        .await;
    match (made, up) {
        (Ok(a), Ok(b)) if a.success() && b.success() => println!("created bridge {name}"),
        _ => {
            eprintln!("warning: bridge {name} is missing and could not be created; guests need it")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_go_into_and_come_out_of_urls() {
        assert_eq!(
            with_password("redis://127.0.0.1:6379/", "pw"),
            "redis://:pw@127.0.0.1:6379/"
        );
        assert_eq!(
            with_password("redis://u:old@h:1/2", "pw"),
            "redis://:pw@h:1/2"
        );
        assert_eq!(password_of("redis://:pw@h:1/"), Some("pw"));
        assert_eq!(password_of("redis://u:pw@h"), Some("pw"));
        assert_eq!(password_of("redis://h:1/"), None);
        assert_eq!(password_of("redis://u@h:1/"), None);
    }
}
