//! A node that dies for good wedges nothing (real Redis, separate `corral agent` processes on
//! libvirt's test driver):
//! * its operations say they wait for it and stay cancellable: a cancel abandons the
//!   waiting step, unwinds what the controller can and lists the node-side leftovers;
//! * removing it with `guests=delete` ends its guests' operations and frees their leases;
//! * with `guests=keep`, a node that returns runs its cleanup list before new work.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, nodes_api, operations_api, resources_api};
use corral_client::models::{GuestRecords, GuestState, Node, Operation, Pool};
use serde_json::json;

async fn wait_online(cloud: &Cloud, node: &str, online: bool) {
    for _ in 0..300 {
        if nodes_api::node_get(&cloud.sdk().config, node)
            .await
            .is_ok_and(|n| n.online == online)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {node} never read online={online}");
}

/// Polls node `id` until `check` holds (30 s at most); returns its record.
async fn wait_node(cloud: &Cloud, id: &str, check: impl Fn(&Node) -> bool) -> Node {
    let mut last = None;
    for _ in 0..300 {
        match nodes_api::node_get(&cloud.sdk().config, id).await {
            Ok(n) if check(&n) => return n,
            Ok(n) => last = Some(format!("{n:?}")),
            Err(e) => last = Some(sdk_error(e).to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("node {id} never reached the expected state: {last:?}");
}

/// Polls operation `id` until `check` holds (30 s at most); returns it.
async fn wait_operation(cloud: &Cloud, id: &str, check: impl Fn(&Operation) -> bool) -> Operation {
    let mut last = None;
    for _ in 0..300 {
        match operations_api::operation_get(&cloud.sdk().config, id).await {
            Ok(o) if check(&o) => return o,
            Ok(o) => last = Some(format!("{o:?}")),
            Err(e) => last = Some(sdk_error(e).to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("operation {id} never reached the expected state: {last:?}");
}

/// Cancels operation `id` (accepted).
async fn cancel(cloud: &Cloud, id: &str) {
    operations_api::operation_cancel(&cloud.sdk().config, id)
        .await
        .unwrap_or_else(|e| panic!("cancel {id}: {}", sdk_error(e)));
}

/// Removes node `id`, keeping or deleting its guests' records; returns the operation's id.
async fn remove_node(cloud: &Cloud, id: &str, guests: GuestRecords) -> String {
    nodes_api::node_remove(&cloud.sdk().config, id, guests)
        .await
        .unwrap_or_else(|e| panic!("remove node {id}: {}", sdk_error(e)))
        .operation_id
}

/// The operations still active.
async fn active_operations(cloud: &Cloud) -> Vec<Operation> {
    operations_api::operation_list(
        &cloud.sdk().config,
        None,
        None,
        None,
        Some(true),
        None,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("active operations: {}", sdk_error(e)))
}

/// Every address pool.
async fn pools(cloud: &Cloud) -> Vec<Pool> {
    resources_api::pool_list(&cloud.sdk().config)
        .await
        .unwrap_or_else(|e| panic!("pools: {}", sdk_error(e)))
}

fn files_in(dir: &std::path::Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path().display().to_string())
            .collect(),
        Err(_) => vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_returns_wedges_nothing() {
    if !(require("redis-server") && require("qemu-img") && require("genisoimage")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.30").await;
    let lost_dir = cloud.dir().join("images-lost");
    let lost_dir_s = lost_dir.display().to_string();
    cloud
        .add_node(
            "node-lost",
            &[
                ("CORRAL_FAULT", "after:node:define"),
                ("CORRAL_STORAGE_DIR", &lost_dir_s),
            ],
        )
        .await;
    let ops = cloud
        .create(
            json!({"name": "lost", "template": "tiny", "cpus": 1, "memory_mib": 64,
                       "count": 3, "node": "node-lost"}),
        )
        .await;
    // The node dies after its first define and never comes back.
    assert!(
        cloud.extra_nodes[0].wait_exit(Duration::from_secs(60)),
        "the fault never fired"
    );
    wait_online(&cloud, "node-lost", false).await;

    // Every operation says what it waits for, and none has ended.
    for (_, op) in &ops {
        let v = wait_operation(&cloud, op, |o| {
            o.progress.message.contains("waiting for node node-lost")
        })
        .await;
        assert_eq!(v.state, "running", "{v:?}");
    }

    // A cancel ends the first at once: abandoned, unwound, leftovers listed.
    let (gid, first) = &ops[0];
    cancel(&cloud, first).await;
    let v = cloud.wait_op(first).await;
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("abandoned"),
        "{v}"
    );
    assert!(
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "abandoned"),
        "{v}"
    );
    // Raw: the test is about the status of a read of the unwound guest.
    assert_eq!(cloud.get(&format!("/guests/{gid}")).await.0, 404);
    let node = nodes_api::node_get(&cloud.sdk().config, "node-lost")
        .await
        .unwrap_or_else(|e| panic!("node node-lost: {}", sdk_error(e)));
    let listed: Vec<_> = node
        .cleanup
        .iter()
        .filter(|c| c.guest_id.as_ref() == Some(gid))
        .collect();
    assert!(!listed.is_empty(), "leftovers of {gid} listed: {node:?}");

    // Removing the node with its guests ends the other operations and frees everything.
    let removal = remove_node(&cloud, "node-lost", GuestRecords::Delete).await;
    let removal = cloud.wait_op(&removal).await;
    assert_eq!(removal["state"], "succeeded", "{removal}");
    for (_, op) in &ops[1..] {
        let v = cloud.wait_op(op).await;
        assert_eq!(v["state"], "cancelled", "{v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains("being removed"),
            "{v}"
        );
    }
    let active = active_operations(&cloud).await;
    assert!(active.is_empty(), "no operation is left active: {active:?}");
    assert_eq!(
        pools(&cloud).await[0].used,
        0,
        "every address is free again"
    );
    let guests = guests_api::guest_list(&cloud.sdk().config, None, None, None, None, None)
        .await
        .unwrap_or_else(|e| panic!("guests: {}", sdk_error(e)));
    assert!(guests.is_empty(), "{guests:?}");
    // Whatever is still in the dead node's directory is named in the removal's event.
    let removed = cloud.events("node.state").await;
    let left: Vec<String> = removed
        .iter()
        .find(|e| e["node_id"] == "node-lost" && e["removed"] == true)
        .and_then(|e| e["files_left_on_node"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    for f in files_in(&lost_dir) {
        // A file's staged copy (a write the node's death cut short) goes with the file.
        let file = f.strip_suffix(".tmp").unwrap_or(&f).to_string();
        assert!(
            left.contains(&file),
            "{f} left on the node but not reported: {left:?}"
        );
    }

    // The other node kept serving throughout.
    let fine = cloud
        .create(
            json!({"name": "fine", "template": "tiny", "cpus": 1, "memory_mib": 64,
                       "node": cloud.node_id}),
        )
        .await;
    assert_eq!(cloud.wait_op(&fine[0].1).await["state"], "succeeded");
    cloud.delete_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_returns_cleans_up_before_new_work() {
    if !(require("redis-server") && require("qemu-img") && require("genisoimage")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.30").await;
    let dir = cloud.dir().join("images-back");
    let dir_s = dir.display().to_string();
    cloud
        .add_node("node-back", &[("CORRAL_STORAGE_DIR", &dir_s)])
        .await;
    // One guest is fully there before the node dies: its record is kept.
    let kept = cloud
        .create(
            json!({"name": "kept", "template": "tiny", "cpus": 1, "memory_mib": 64,
                       "node": "node-back"}),
        )
        .await;
    assert_eq!(cloud.wait_op(&kept[0].1).await["state"], "succeeded");
    let kept_files = files_in(&dir);
    assert_eq!(kept_files.len(), 2, "disk and seed: {kept_files:?}");

    // The node dies during a batch.
    cloud.extra_nodes.pop().unwrap().kill9();
    cloud
        .add_node(
            "node-back",
            &[
                ("CORRAL_FAULT", "after:node:define"),
                ("CORRAL_STORAGE_DIR", &dir_s),
            ],
        )
        .await;
    let ops = cloud
        .create(
            json!({"name": "lost", "template": "tiny", "cpus": 1, "memory_mib": 64,
                       "count": 3, "node": "node-back"}),
        )
        .await;
    assert!(
        cloud
            .extra_nodes
            .last_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(60)),
        "the fault never fired"
    );
    wait_online(&cloud, "node-back", false).await;

    // Removal keeping the records ends the batch; the kept guest reads unknown.
    let removal = remove_node(&cloud, "node-back", GuestRecords::Keep).await;
    let removal = cloud.wait_op(&removal).await;
    assert_eq!(removal["state"], "succeeded", "{removal}");
    for (_, op) in &ops {
        assert_eq!(cloud.wait_op(op).await["state"], "cancelled");
    }
    let g = guests_api::guest_get(&cloud.sdk().config, &kept[0].0)
        .await
        .unwrap_or_else(|e| panic!("guest {}: {}", kept[0].0, sdk_error(e)));
    assert_eq!(g.state, GuestState::Unknown, "{g:?}");
    assert_eq!(
        pools(&cloud).await[0].used,
        1,
        "only the kept guest holds an address"
    );
    let leftovers: Vec<String> = files_in(&dir)
        .into_iter()
        .filter(|f| !kept_files.contains(f))
        .collect();
    assert!(!leftovers.is_empty(), "the batch left files on the node");

    // The node returns under the same id: it cleans up first, then takes new work.
    cloud
        .add_node("node-back", &[("CORRAL_STORAGE_DIR", &dir_s)])
        .await;
    let after = cloud
        .create(
            json!({"name": "after", "template": "tiny", "cpus": 1, "memory_mib": 64,
                       "node": "node-back"}),
        )
        .await;
    let after_op = cloud.wait_op(&after[0].1).await;
    assert_eq!(after_op["state"], "succeeded", "{after_op}");
    wait_node(&cloud, "node-back", |n| n.cleanup.is_empty()).await;
    for f in &leftovers {
        assert!(
            !std::path::Path::new(f).exists(),
            "{f} is still on the node"
        );
    }
    for f in &kept_files {
        assert!(
            std::path::Path::new(f).exists(),
            "{f} of the kept guest was removed"
        );
    }
    let cleanups = cloud.events("node.cleanup").await;
    let removed: usize = cleanups
        .iter()
        .filter(|e| e["node_id"] == "node-back")
        .map(|e| e["removed"].as_array().map_or(0, |r| r.len()))
        .sum();
    assert!(
        removed >= leftovers.len(),
        "the event log names the removals: {cleanups:?}"
    );
    // Cleanup ran before the new guest's first node step.
    let cleanup_ops = operations_api::operation_list(
        &cloud.sdk().config,
        None,
        Some("node.cleanup"),
        None,
        None,
        None,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("node.cleanup operations: {}", sdk_error(e)));
    let cleaned_at = cleanup_ops
        .into_iter()
        .filter_map(|o| o.finished_at)
        .min()
        .expect("a node.cleanup operation finished");
    let disk_started = after_op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "build")
        .and_then(|s| s["started_at"].as_str().map(String::from))
        .unwrap();
    assert!(
        cleaned_at <= disk_started,
        "cleanup finished {cleaned_at}, new work started {disk_started}"
    );
}

/// The fences of `op` on `node` that still name an attempt (an interrupted one holds 0).
fn live_fences(cloud: &Cloud, node: &str, op: &str) -> Vec<String> {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &cloud.redis.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "redis-cli {args:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    cli(&[
        "--scan",
        "--pattern",
        &format!("corral:fence:{node}:{op}:*"),
    ])
    .lines()
    .filter(|k| cli(&["GET", k]) != "0")
    .map(String::from)
    .collect()
}

/// `node.cleanup` is a saga like any other: a controller killed after dispatching its node
/// step, or after recording the results, finishes it on restart and leaks nothing.
///
/// The node dies in the create's build step, so that step's job is in flight when the
/// create is cancelled. Its fence is removed at the cancel: when the node returns, apalis
/// re-delivers the orphaned job, which must skip rather than write the disk and seed again
/// after the cleanup removed them (the race this test once lost under load).
///
/// Host objects: none beyond the test's own directory (`images-c`, the node's storage
/// directory), its Redis and its processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_survives_a_controller_crash_at_each_step() {
    if !(require("redis-server") && require("qemu-img") && require("genisoimage")) {
        return;
    }
    for fault in ["dispatched:node.cleanup:clean", "after:node.cleanup:record"] {
        let mut cloud = Cloud::split("test:///default").await;
        cloud.template("tiny").await;
        cloud.pool("lan", "192.0.2.10", "192.0.2.30").await;
        let dir = cloud.dir().join("images-c");
        let dir_s = dir.display().to_string();
        cloud
            .add_node(
                "node-c",
                &[
                    ("CORRAL_FAULT", "after:node:define"),
                    ("CORRAL_STORAGE_DIR", &dir_s),
                ],
            )
            .await;
        let ops = cloud
            .create(
                json!({"name": "c", "template": "tiny", "cpus": 1, "memory_mib": 64,
                           "node": "node-c"}),
            )
            .await;
        assert!(cloud.extra_nodes[0].wait_exit(Duration::from_secs(60)));
        wait_online(&cloud, "node-c", false).await;
        cancel(&cloud, &ops[0].1).await;
        assert_eq!(cloud.wait_op(&ops[0].1).await["state"], "cancelled");
        assert!(!files_in(&dir).is_empty(), "the create left files");
        // The create's job died in flight with its node, and apalis hands it back once the
        // node returns: no fence may still let it run, or it would write again what the
        // cleanup removes (after the cleanup list is empty, so the checks below miss it).
        // (The fence goes just after the commit that ends the operation: allow a moment.)
        let mut live = live_fences(&cloud, "node-c", &ops[0].1);
        for _ in 0..50 {
            if live.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            live = live_fences(&cloud, "node-c", &ops[0].1);
        }
        assert_eq!(
            live,
            Vec::<String>::new(),
            "a fence of the cancelled create still lets its job run"
        );

        // The node returns while the controller is armed to die in the cleanup.
        cloud.arm_fault(fault).await;
        cloud.start_node(&[("CORRAL_NODE_ID", "node-c"), ("CORRAL_STORAGE_DIR", &dir_s)]);
        cloud.restart_after_fault(fault).await;
        let node = wait_node(&cloud, "node-c", |n| n.cleanup.is_empty()).await;
        assert!(node.online, "{node:?}");
        assert_eq!(files_in(&dir), Vec::<String>::new(), "{fault}: files left");
        let active = active_operations(&cloud).await;
        assert!(
            active.is_empty(),
            "{fault}: nothing left running: {active:?}"
        );
        assert_eq!(pools(&cloud).await[0].used, 0, "{fault}");
    }
}
