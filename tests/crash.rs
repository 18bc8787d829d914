//! Crash tests: the controller killed (abort, as `kill -9`) right after every step of a
//! guest creation, and Redis restarted or wiped mid-operation. After a restart every
//! operation must finish or unwind, and nothing may leak.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{require, Cloud};
use serde_json::json;

fn parts() -> bool {
    require("redis-server") && require("qemu-img") && require("genisoimage")
}

const CREATE_FAULTS: &[&str] = &[
    "after:guest.create:place",
    "after:guest.create:allocate",
    "dispatched:guest.create:build",
    // Committed as dispatched, never pushed: restart sends it at once, not after a lease.
    "unpushed:guest.create:build",
    "after:guest.create:finish",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_after_every_create_step_resumes_and_leaks_nothing() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.20").await;
    for (i, fault) in CREATE_FAULTS.iter().enumerate() {
        cloud.arm_fault(fault).await;
        let (gid, op) = cloud
            .create(json!({"name": format!("crash-{i}"), "template": "tiny", "cpus": 1, "memory_mib": 128}))
            .await[0]
            .clone();
        cloud.restart_after_fault(fault).await;
        let v = cloud.wait_op(&op).await;
        assert_eq!(v["state"], "succeeded", "after {fault}: {v}");
        let (_, g) = cloud.get(&format!("/guests/{gid}")).await;
        assert_eq!(g["state"], "running", "after {fault}: {g}");
        let (_, d) = cloud.delete(&format!("/guests/{gid}")).await;
        let v = cloud.wait_op(d["operation_id"].as_str().unwrap()).await;
        assert_eq!(v["state"], "succeeded", "delete after {fault}: {v}");
        cloud.assert_no_leaks().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_while_unwinding_finishes_the_unwind() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    let t = cloud.template("doomed").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.20").await;
    // The image disappears after registration: the build's first sub-step fails on the node, for good.
    std::fs::remove_file(t["path"].as_str().unwrap()).unwrap();
    for fault in ["undone:guest.create:allocate", "undone:guest.create:place"] {
        cloud.arm_fault(fault).await;
        let (gid, op) = cloud
            .create(json!({"template": "doomed", "cpus": 1, "memory_mib": 128}))
            .await[0]
            .clone();
        if !cloud
            .controller
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(30))
        {
            let (_, v) = cloud.get(&format!("/operations/{op}")).await;
            panic!("{fault} never fired: {v}");
        }
        cloud.start_controller(&[]).await;
        let v = cloud.wait_op(&op).await;
        assert_eq!(v["state"], "failed", "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("does not exist"),
            "{v}"
        );
        let (_, g) = cloud.get(&format!("/guests/{gid}")).await;
        assert_eq!(g["state"], "error");
        assert!(
            g["ip"].is_null() && g["vnc_port"].is_null() && g["mac"].is_null(),
            "{g}"
        );
        let (_, d) = cloud.delete(&format!("/guests/{gid}")).await;
        assert_eq!(
            cloud.wait_op(d["operation_id"].as_str().unwrap()).await["state"],
            "succeeded"
        );
        cloud.assert_no_leaks().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_mid_operation_loses_nothing() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.20").await;
    let (g1, op1) = cloud
        .create(json!({"name": "before", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op1).await["state"], "succeeded");

    cloud.redis.kill();
    // The API keeps accepting work while Redis is down: the backlog is in SQL.
    let (g2, op2) = cloud
        .create(json!({"name": "during", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cloud.redis.restart();
    let v = cloud.wait_op(&op2).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    for g in [&g1, &g2] {
        let (_, d) = cloud.delete(&format!("/guests/{g}")).await;
        assert_eq!(
            cloud.wait_op(d["operation_id"].as_str().unwrap()).await["state"],
            "succeeded"
        );
    }
    cloud.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_mid_operation_is_survived() {
    if !parts() || !require("redis-cli") {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.20").await;
    // Freeze the node so the job sits in Redis, then wipe Redis: job, queue, stream and
    // consumer group are gone. The step's lease runs out and it is dispatched again.
    cloud.node.as_ref().unwrap().signal("STOP");
    let (gid, op) = cloud
        .create(json!({"name": "wiped", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ok = std::process::Command::new("redis-cli")
        .args(["-p", &cloud.redis.port.to_string(), "FLUSHALL"])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    cloud.node.as_ref().unwrap().signal("CONT");
    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let (_, d) = cloud.delete(&format!("/guests/{gid}")).await;
    assert_eq!(
        cloud.wait_op(d["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    cloud.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_and_node_started_before_redis_work_once_it_comes() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.controller.take().unwrap().kill9();
    cloud.node.take().unwrap().kill9();
    cloud.redis.kill();
    // Both start with no Redis: the API answers and accepts work, kept in SQL.
    cloud.start_node(&[]);
    cloud.start_controller(&[]).await;
    let (s, h) = cloud.get("/health").await;
    assert_eq!(s, 503, "{h}");
    assert_eq!(h["database"], "ok");
    let (gid, op) = cloud
        .create(json!({"name": "early", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cloud.redis.restart();
    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let (s, _) = cloud.get("/health").await;
    assert_eq!(s, 200);
    let (_, d) = cloud.delete(&format!("/guests/{gid}")).await;
    assert_eq!(
        cloud.wait_op(d["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    cloud.assert_no_leaks().await;
}

/// An IP change killed at each of its points resumes after a restart and ends with exactly
/// one address leased and recorded, and the old one free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_during_an_ip_change_leaves_one_lease() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.20").await;
    let (gid, op) = cloud
        .create(json!({"name": "mover", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let (_, v) = cloud
        .post(&format!("/guests/{gid}/actions/poweroff"), json!(null))
        .await;
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    for (i, fault) in [
        "after:guest.change_ip:reserve",
        "dispatched:guest.change_ip:refresh_seed",
        "after:guest.change_ip:commit",
    ]
    .iter()
    .enumerate()
    {
        let before = cloud.get(&format!("/guests/{gid}")).await.1["ip"].clone();
        cloud.arm_fault(fault).await;
        let (s, v) = cloud
            .post(&format!("/guests/{gid}/change-ip"), json!({}))
            .await;
        assert_eq!(s, 202, "{v}");
        cloud.restart_after_fault(fault).await;
        let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
        assert_eq!(op["state"], "succeeded", "after {fault}: {op}");
        let (_, g) = cloud.get(&format!("/guests/{gid}")).await;
        assert_ne!(g["ip"], before, "after {fault}");
        let (_, pool) = cloud.get("/ip-pools/lan").await;
        // The stopped guest keeps each old address leased until its next boot applies
        // the change: one lease per change so far, plus the current one, never more.
        assert_eq!(pool["used"], json!(i + 2), "after {fault}: {pool}");
    }
    cloud.delete_all_and_check().await;
}

/// A boot-job run killed at each point ends, and its jobs are back in the queue (the test
/// driver has no agent, so every run unwinds): none is left claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_during_a_boot_job_run_loses_no_job() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let (gid, op) = cloud
        .create(json!({"name": "jobs", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    for (i, fault) in [
        "after:guest.boot_jobs:claim",
        "dispatched:guest.boot_jobs:run",
        "undone:guest.boot_jobs:claim",
    ]
    .iter()
    .enumerate()
    {
        cloud.arm_fault(fault).await;
        let (s, v) = cloud
            .call(
                reqwest::Method::PATCH,
                &format!("/guests/{gid}"),
                Some(json!({"hostname": format!("name-{i}")})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        cloud.restart_after_fault(fault).await;
        let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
        assert_eq!(op["state"], "failed", "after {fault}: {op}");
        let (_, jobs) = cloud
            .get(&format!("/guests/{gid}/boot-jobs?include_system=true"))
            .await;
        let jobs = jobs.as_array().unwrap();
        assert_eq!(jobs.len(), i + 1, "{jobs:?}");
        assert!(
            jobs.iter().all(|j| j["state"] == "pending"),
            "after {fault}: {jobs:?}"
        );
    }
    cloud.delete_all_and_check().await;
}

/// A console ticket whose controller dies while the node sets it: the caller's request
/// fails, the operation still ends after the restart (the test driver has no VNC to set,
/// so it fails cleanly), and no stored operation keeps the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_during_a_console_ticket_keeps_no_password() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let (gid, op) = cloud
        .create(json!({"name": "c", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let mut seen: Vec<String> = Vec::new();
    for fault in [
        "unpushed:guest.console:ticket",
        "dispatched:guest.console:ticket",
    ] {
        cloud.arm_fault(fault).await;
        let answer = reqwest::Client::new()
            .post(cloud.url(&format!("/guests/{gid}/console")))
            .bearer_auth(cloud.token())
            .json(&json!({"valid_seconds": 60}))
            .send()
            .await;
        assert!(
            answer.is_err() || answer.is_ok_and(|r| r.status().is_server_error()),
            "{fault}: the controller answered although it died"
        );
        cloud.restart_after_fault(fault).await;
        let (_, ops) = cloud
            .get(&format!("/operations?guest_id={gid}&kind=guest.console"))
            .await;
        let id = ops
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["id"].as_str())
            .find(|id| !seen.iter().any(|s| s == id))
            .unwrap_or_default()
            .to_string();
        seen.push(id.clone());
        assert!(!id.is_empty(), "{fault}: no console operation in {ops}");
        let op = cloud.wait_op(&id).await;
        assert!(
            op["state"] == "succeeded" || op["state"] == "failed",
            "{fault}: {op}"
        );
        let (_, g) = cloud.get(&format!("/guests/{gid}")).await;
        assert!(
            g.get("operation_id").is_none(),
            "{fault}: the guest is still held: {g}"
        );
        let db = cloud.db().await;
        let (payload,): (String,) = sqlx::query_as("SELECT payload FROM operations WHERE id = ?")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
        let p: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            p["password"], "",
            "{fault}: the ticket outlived its operation: {p}"
        );
        db.close().await;
    }
    cloud.delete_all_and_check().await;
}
