//! `corral up` supervises the Redis it started (issue: one crash stalled the whole cloud).
//!
//! Each test runs the real `corral up` on libvirt's test driver with a Redis URL where
//! nothing answers, so `corral up` starts (and owns) its Redis child. Then, in the middle
//! of a batch of guest creations:
//! * `kill -9` of that child: it is reaped and restarted on the same port, password and
//!   data directory; every operation ends, every guest runs, a `system.redis_restarted`
//!   event says so, nothing leaks and no zombie is left;
//! * `SIGSTOP` then `SIGCONT` (a hang, not a crash): `/healthz` reports Redis while it is
//!   stopped, nothing is restarted, and nothing is lost.
//!
//! Host objects: only processes, each found by the test's own pid or port, and killed on
//! drop (the Redis child too, should `corral up` die before it could stop it).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, require, Cloud};
use serde_json::{json, Value};

const BATCH: usize = 40;

fn parts() -> bool {
    require("redis-server") && require("qemu-img") && require("pgrep")
}

/// `corral up` with a Redis of its own on a free port. Fields drop in order: `corral up`
/// is killed first, then whatever Redis it left (found by its port).
struct Up {
    cloud: Cloud,
    _redis: RedisGuard,
}

async fn up_with_own_redis() -> Up {
    let port = free_port();
    let guard = RedisGuard { port };
    let cloud = Cloud::up_with(vec![
        (
            "CORRAL_REDIS_URL".into(),
            format!("redis://127.0.0.1:{port}/"),
        ),
        ("CORRAL_RESTART_BACKOFF_MS".into(), "250".into()),
    ])
    .await;
    Up {
        cloud,
        _redis: guard,
    }
}

struct RedisGuard {
    port: u16,
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .args([
                "-9",
                "-f",
                &format!("^redis-server 127.0.0.1:{}", self.port),
            ])
            .status();
    }
}

fn up_pid(cloud: &Cloud) -> i32 {
    cloud.controller.as_ref().unwrap().pid()
}

/// The children of `pid` as (pid, name, state letter), from /proc.
fn children(pid: i32) -> Vec<(i32, String, char)> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter_map(|c| {
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).ok()?;
            // `pid (comm) S ...`: the name may hold spaces, the state follows the last ')'.
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let state = stat[close + 1..].trim_start().chars().next()?;
            Some((c, stat[open + 1..close].to_string(), state))
        })
        .collect()
}

fn redis_child(up: i32) -> Option<i32> {
    children(up)
        .into_iter()
        .find(|(_, name, state)| name.starts_with("redis-server") && *state != 'Z')
        .map(|(p, _, _)| p)
}

fn zombies(up: i32) -> Vec<(i32, String, char)> {
    children(up)
        .into_iter()
        .filter(|(_, _, s)| *s == 'Z')
        .collect()
}

fn signal(pid: i32, sig: &str) {
    assert!(Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Each operation's progress, to see when the first one moves.
async fn progress(cloud: &Cloud, ops: &[(String, String)]) -> Vec<(Value, Value)> {
    let mut v = Vec::new();
    for (_, op) in ops {
        let (_, o) = cloud.get(&format!("/operations/{op}")).await;
        v.push((o["state"].clone(), o["progress"]["percent"].clone()));
    }
    v
}

async fn every_guest_runs(cloud: &Cloud, ops: &[(String, String)]) {
    for (gid, op) in ops {
        let v = cloud.wait_op(op).await;
        assert_eq!(v["state"], "succeeded", "{v}");
        let (_, g) = cloud.get(&format!("/guests/{gid}")).await;
        assert_eq!(g["state"], "running", "{g}");
    }
}

async fn batch(cloud: &Cloud) -> Vec<(String, String)> {
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.200").await;
    let ops = cloud
        .create(
            json!({"name": "b", "template": "tiny", "cpus": 1, "memory_mib": 64,
                       "count": BATCH, "pool": "lan"}),
        )
        .await;
    assert_eq!(ops.len(), BATCH);
    ops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_is_restarted_and_every_operation_ends() {
    if !parts() {
        return;
    }
    let owned = up_with_own_redis().await;
    let cloud = &owned.cloud;
    let up = up_pid(cloud);
    let first = redis_child(up).expect("corral up started no redis-server of its own");
    let ops = batch(cloud).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = progress(cloud, &ops).await;

    signal(first, "KILL");
    let killed = Instant::now();
    let mut back = None;
    let mut moved = None;
    while moved.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "nothing moved a minute after the kill; children of corral up: {:?}",
            children(up)
        );
        if back.is_none() {
            back = redis_child(up)
                .filter(|p| *p != first)
                .map(|_| killed.elapsed());
        }
        if back.is_some() && progress(cloud, &ops).await != before {
            moved = Some(killed.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Figures for the record, never asserted: time is measured in benchmarks.
    println!(
        "redis-server restarted {:?} after the kill; the first operation moved after {:?} \
         (back-off 250 ms)",
        back.unwrap(),
        moved.unwrap()
    );

    every_guest_runs(cloud, &ops).await;
    let restarts = cloud.events("system.redis_restarted").await;
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert!(
        restarts[0]["ended"].as_str().unwrap().contains('9'),
        "{restarts:?}"
    );
    assert_eq!(restarts[0]["restarts"], 1, "{restarts:?}");
    let (s, h) = cloud.get("/health").await;
    assert_eq!((s, &h["redis"]), (200, &json!("ok")), "{h}");
    assert_eq!(
        zombies(up),
        vec![],
        "a child of corral up was left a zombie"
    );
    cloud.delete_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_shows_in_health_and_loses_nothing() {
    if !parts() {
        return;
    }
    let owned = up_with_own_redis().await;
    let cloud = &owned.cloud;
    let up = up_pid(cloud);
    let pid = redis_child(up).expect("corral up started no redis-server of its own");
    let ops = batch(cloud).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    signal(pid, "STOP");
    // Health answers while Redis hangs, and says so (the probe has its own timeout).
    let mut seen = None;
    for _ in 0..20 {
        let r = reqwest::Client::new()
            .get(cloud.url("/healthz").replace("/api/v1", ""))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if status == 503 {
                seen = Some(body);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A hang is not a death: the same process, never restarted.
    assert_eq!(redis_child(up), Some(pid));
    signal(pid, "CONT");
    let seen = seen.expect("/healthz never reported the stopped Redis");
    assert_eq!(seen["status"], "degraded", "{seen}");
    assert_ne!(seen["redis"], "ok", "{seen}");

    every_guest_runs(cloud, &ops).await;
    assert_eq!(redis_child(up), Some(pid));
    assert_eq!(
        cloud.events("system.redis_restarted").await,
        Vec::<Value>::new()
    );
    cloud.delete_all_and_check().await;
}
