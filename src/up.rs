//! `corral up`: the single-machine setup in one process — controller, a node on the local
//! libvirt, SQLite in the data directory, and a local Redis (started as a child process
//! with append-only persistence when none answers at the configured URL).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("redis is not reachable at {url} and redis-server could not be started: {why}")]
    Redis { url: String, why: String },
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

/// Makes sure a Redis answers at `url`; starts a private one (port from the URL) in
/// `data_dir` when it does not. The child dies with us (`kill_on_drop`).
pub async fn ensure_redis(url: &str, data_dir: &Path) -> Result<Option<Child>, UpError> {
    if redis_answers(url).await {
        return Ok(None);
    }
    let err = |why: String| UpError::Redis {
        url: url.into(),
        why,
    };
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
            .map_err(|e| err(e.to_string()))?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--save",
            "",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("{e} (apt-get install redis-server)")))?;
    for _ in 0..50 {
        if redis_answers(url).await {
            println!(
                "started redis-server on port {port} (data in {})",
                dir.display()
            );
            return Ok(Some(child));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(err("it did not answer within 5 s".into()))
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
