//! Crash tests: the controller killed (abort, as `kill -9`) right after every step of a
//! guest creation, and Redis restarted or wiped mid-operation. After a restart every
//! operation must finish or unwind, and nothing may leak.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, operations_api, resources_api, scripts_api, system_api};
use corral_client::models::{ChangeIp, Guest, GuestAction, GuestState, UpdateGuest};
use serde_json::json;

fn parts() -> bool {
    require("redis-server") && require("qemu-img") && require("genisoimage")
}

/// Guest `gid`'s record.
async fn guest(cloud: &Cloud, gid: &str) -> Guest {
    guests_api::guest_get(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("guest {gid}: {}", sdk_error(e)))
}

/// Deletes guest `gid`; returns the operation's id.
async fn delete_guest(cloud: &Cloud, gid: &str) -> String {
    guests_api::guest_delete(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("delete guest {gid}: {}", sdk_error(e)))
        .operation_id
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
        let g = guest(&cloud, &gid).await;
        assert_eq!(g.state, GuestState::Running, "after {fault}: {g:?}");
        let v = cloud.wait_op(&delete_guest(&cloud, &gid).await).await;
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
            let v = operations_api::operation_get(&cloud.sdk().config, &op).await;
            panic!("{fault} never fired: {:?}", v.map_err(sdk_error));
        }
        cloud.start_controller(&[]).await;
        let v = cloud.wait_op(&op).await;
        assert_eq!(v["state"], "failed", "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("does not exist"),
            "{v}"
        );
        let g = guest(&cloud, &gid).await;
        assert_eq!(g.state, GuestState::Error);
        assert!(
            g.ip.is_none() && g.vnc_port.is_none() && g.mac.is_none(),
            "{g:?}"
        );
        assert_eq!(
            cloud.wait_op(&delete_guest(&cloud, &gid).await).await["state"],
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
        assert_eq!(
            cloud.wait_op(&delete_guest(&cloud, g).await).await["state"],
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
    assert_eq!(
        cloud.wait_op(&delete_guest(&cloud, &gid).await).await["state"],
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
    // Raw: the test checks the status of a health check that fails.
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
    system_api::health(&cloud.sdk().config)
        .await
        .unwrap_or_else(|e| panic!("health with Redis back: {}", sdk_error(e)));
    assert_eq!(
        cloud.wait_op(&delete_guest(&cloud, &gid).await).await["state"],
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
    let v = guests_api::guest_action(&cloud.sdk().config, &gid, GuestAction::Poweroff, None)
        .await
        .unwrap_or_else(|e| panic!("poweroff {gid}: {}", sdk_error(e)));
    cloud.wait_op(&v.operation_id).await;
    for (i, fault) in [
        "after:guest.change_ip:reserve",
        "dispatched:guest.change_ip:refresh_seed",
        "after:guest.change_ip:commit",
    ]
    .iter()
    .enumerate()
    {
        let before = guest(&cloud, &gid).await.ip;
        cloud.arm_fault(fault).await;
        let v = guests_api::guest_change_ip(&cloud.sdk().config, &gid, ChangeIp::new())
            .await
            .unwrap_or_else(|e| panic!("change-ip {gid}: {}", sdk_error(e)));
        cloud.restart_after_fault(fault).await;
        let op = cloud.wait_op(&v.operation_id).await;
        assert_eq!(op["state"], "succeeded", "after {fault}: {op}");
        let g = guest(&cloud, &gid).await;
        assert_ne!(g.ip, before, "after {fault}");
        let pool = resources_api::pool_get(&cloud.sdk().config, "lan")
            .await
            .unwrap_or_else(|e| panic!("pool lan: {}", sdk_error(e)));
        // The stopped guest keeps each old address leased until its next boot applies
        // the change: one lease per change so far, plus the current one, never more.
        assert_eq!(pool.used, i as u64 + 2, "after {fault}: {pool:?}");
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
        let mut change = UpdateGuest::new();
        change.hostname = Some(format!("name-{i}"));
        let v = guests_api::guest_update(&cloud.sdk().config, &gid, change)
            .await
            .unwrap_or_else(|e| panic!("hostname of {gid}: {}", sdk_error(e)));
        cloud.restart_after_fault(fault).await;
        let run = v
            .operation_id
            .as_deref()
            .unwrap_or_else(|| panic!("no run started: {v:?}"));
        let op = cloud.wait_op(run).await;
        assert_eq!(op["state"], "failed", "after {fault}: {op}");
        let jobs =
            scripts_api::guest_boot_jobs(&cloud.sdk().config, &gid, None, Some(true), None, None)
                .await
                .unwrap_or_else(|e| panic!("boot jobs of {gid}: {}", sdk_error(e)));
        assert_eq!(jobs.len(), i + 1, "{jobs:?}");
        assert!(
            jobs.iter().all(|j| j.state == "pending"),
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
        // Raw: the test checks what the caller gets from a controller that dies during the
        // request: no answer at all, or a server error.
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
        let ops = operations_api::operation_list(
            &cloud.sdk().config,
            None,
            Some("guest.console"),
            Some(&gid),
            None,
            None,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("console operations of {gid}: {}", sdk_error(e)));
        let id = ops
            .iter()
            .map(|o| o.id.as_str())
            .find(|id| !seen.iter().any(|s| s == id))
            .unwrap_or_default()
            .to_string();
        seen.push(id.clone());
        assert!(!id.is_empty(), "{fault}: no console operation in {ops:?}");
        let op = cloud.wait_op(&id).await;
        assert!(
            op["state"] == "succeeded" || op["state"] == "failed",
            "{fault}: {op}"
        );
        let g = guest(&cloud, &gid).await;
        assert!(
            g.operation_id.is_none(),
            "{fault}: the guest is still held: {g:?}"
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
