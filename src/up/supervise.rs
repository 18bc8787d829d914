//! The processes `corral up` starts and owns, kept running as a service manager would.
//!
//! Today that is one: the local `redis-server`. Its supervisor owns the child, so the child
//! is always reaped (`Child::wait`) and never left a zombie. When it exits, for any reason,
//! the supervisor waits out a back-off, starts it again with the same configuration
//! (port, password on stdin, data directory, append-only file: the queues come back with
//! it), waits until it answers, logs the restart and sends a [`Restart`] notice, which
//! `corral up` records as a `system.redis_restarted` event.
//!
//! The back-off starts at `restart_backoff_ms` and doubles with each exit that follows a
//! short run (under [`STABLE_AFTER`]), up to `restart_backoff_max_ms`; a child that ran
//! longer than that starts again after the first wait. A crash loop therefore costs a
//! restart every few seconds at most, and a one-off crash costs the first wait only.
//!
//! A hang (a stopped process) is not a death: the supervisor leaves it alone, and
//! `/healthz` reports Redis as timed out while it lasts. A Redis that `corral up` did not
//! start is never supervised: the controller and the node reconnect to it by themselves.
//! Dropping the [`Supervisor`] stops the task and kills the child.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::config::UpConfig;

/// A child that ran at least this long before it exited restarts after the first wait.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// How long a restarted Redis has to answer before the start counts as failed.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// How to start the local Redis: everything a restart must repeat.
#[derive(Debug, Clone)]
pub struct RedisSpec {
    pub port: u16,
    /// Its data directory (the append-only file lives there).
    pub dir: PathBuf,
    pub password: String,
    /// The URL (with the password) it answers on once started.
    pub url: String,
}

impl RedisSpec {
    /// Starts `redis-server` with append-only persistence. `appendfsync` stays at its
    /// default, `everysec`: Redis writes every acknowledged change to the file before it
    /// answers, so a crash of the process (the case supervision is for) loses nothing;
    /// only a crash of the whole machine can lose the last second, which `always` would
    /// save at the price of an fsync per write (docs/ARCHITECTURE.md has the figures).
    /// The password goes in on stdin (`redis-server -`), never on a command line `ps`
    /// shows.
    pub async fn spawn(&self) -> std::io::Result<Child> {
        let mut child = Command::new("redis-server")
            .args([
                "-",
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(format!("requirepass {}\n", self.password).as_bytes())
                .await?;
        }
        Ok(child)
    }

    /// Waits until the started Redis answers; false after [`ANSWER_WITHIN`].
    pub async fn answers(&self) -> bool {
        let until = Instant::now() + ANSWER_WITHIN;
        while Instant::now() < until {
            if super::redis_answers(&self.url).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// One restart of a supervised child, as recorded in the event log.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub program: &'static str,
    pub port: u16,
    /// How the previous process ended (`signal 9`, `exit status 1`, ...).
    pub ended: String,
    /// Restarts since `corral up` started.
    pub restarts: u32,
    /// The back-off waited before this start.
    pub backoff_ms: u64,
    /// From the exit being seen to the new process answering.
    pub down_ms: u64,
    pub pid: u32,
}

/// The back-off between restarts (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(cfg: &UpConfig) -> Backoff {
        let first = Duration::from_millis(cfg.restart_backoff_ms);
        Backoff {
            first,
            max: Duration::from_millis(cfg.restart_backoff_max_ms.max(cfg.restart_backoff_ms)),
            next: first,
        }
    }

    /// The wait before restarting a child that ran for `ran`.
    pub fn after(&mut self, ran: Duration) -> Duration {
        if ran >= STABLE_AFTER {
            self.next = self.first;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

/// The task that keeps one child running; dropping it kills the child.
pub struct Supervisor {
    task: tokio::task::JoinHandle<()>,
    pid: Arc<AtomicU32>,
    restarts: Option<mpsc::UnboundedReceiver<Restart>>,
}

impl Supervisor {
    /// Takes over `child`, started from `spec`.
    pub fn redis(spec: RedisSpec, child: Child, backoff: Backoff) -> Supervisor {
        let pid = Arc::new(AtomicU32::new(child.id().unwrap_or(0)));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(keep_running(spec, child, backoff, pid.clone(), tx));
        Supervisor {
            task,
            pid,
            restarts: Some(rx),
        }
    }

    /// The pid of the child now running (0 between a death and its restart).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// The restart notices, once: whoever records them takes them.
    pub fn take_restarts(&mut self) -> Option<mpsc::UnboundedReceiver<Restart>> {
        self.restarts.take()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // The task owns the child (kill_on_drop): aborting it kills the child, and tokio
        // reaps it.
        self.task.abort();
    }
}

async fn keep_running(
    spec: RedisSpec,
    mut child: Child,
    mut backoff: Backoff,
    pid: Arc<AtomicU32>,
    notices: mpsc::UnboundedSender<Restart>,
) {
    let mut started = Instant::now();
    let mut restarts = 0u32;
    loop {
        let ended = match child.wait().await {
            Ok(status) => status.to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        pid.store(0, Ordering::Relaxed);
        let down_since = Instant::now();
        tracing::warn!(
            port = spec.port,
            "redis-server ended ({ended}); restarting it"
        );
        // Until a start answers: wait, start, check. A start that fails waits longer.
        let (next, waited) = loop {
            let wait = backoff.after(started.elapsed());
            tokio::time::sleep(wait).await;
            started = Instant::now();
            match spec.spawn().await {
                Ok(mut c) => {
                    if spec.answers().await {
                        break (c, wait);
                    }
                    tracing::warn!(
                        port = spec.port,
                        "the restarted redis-server did not answer"
                    );
                    let _ = c.kill().await;
                }
                Err(e) => tracing::warn!(port = spec.port, "restarting redis-server: {e}"),
            }
        };
        child = next;
        restarts += 1;
        let now = child.id().unwrap_or(0);
        pid.store(now, Ordering::Relaxed);
        let notice = Restart {
            program: "redis-server",
            port: spec.port,
            ended,
            restarts,
            backoff_ms: waited.as_millis() as u64,
            down_ms: down_since.elapsed().as_millis() as u64,
            pid: now,
        };
        tracing::warn!(
            port = spec.port,
            pid = now,
            restarts,
            down_ms = notice.down_ms,
            "redis-server restarted"
        );
        // Nobody listening (a bench) is fine.
        let _ = notices.send(notice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_on_quick_exits_and_resets_after_a_stable_run() {
        let mut b = Backoff::new(&UpConfig {
            restart_backoff_ms: 100,
            restart_backoff_max_ms: 500,
        });
        let quick = Duration::from_millis(10);
        let waits: Vec<u64> = (0..5).map(|_| b.after(quick).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        assert_eq!(b.after(STABLE_AFTER).as_millis(), 100);
        assert_eq!(b.after(quick).as_millis(), 200);
    }
}
