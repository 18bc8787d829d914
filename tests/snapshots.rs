//! Snapshots on the libvirt test driver and a real Redis: taken, listed, reverted and
//! deleted as operations; exclusive per guest (a guest being snapshotted answers other
//! requests 409 naming the holder); refusals that change nothing; and the controller
//! killed at each step. Reverting real guests (files before and after) is in
//! `real_guest.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{require, sdk_error, Cloud};
use corral_client::apis::guests_api;
use corral_client::models::{CreateSnapshot, GuestState};
use reqwest::Method;
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server") && require("qemu-img")
}

/// Waits for operation `id` and checks it succeeded.
async fn done(cloud: &Cloud, id: &str) {
    let op = cloud.wait_op(id).await;
    assert_eq!(op["state"], "succeeded", "{op}");
}

/// Takes snapshot `name` of guest `gid` (accepted); returns its operation's id.
async fn take(cloud: &Cloud, gid: &str, name: &str) -> String {
    guests_api::snapshot_create(&cloud.sdk().config, gid, CreateSnapshot::new(name.into()))
        .await
        .unwrap_or_else(|e| panic!("snapshot {name}: {}", sdk_error(e)))
        .operation_id
}

/// Deletes snapshot `name` of guest `gid` (accepted); returns its operation's id.
async fn remove(cloud: &Cloud, gid: &str, name: &str) -> String {
    guests_api::snapshot_delete(&cloud.sdk().config, gid, name)
        .await
        .unwrap_or_else(|e| panic!("delete snapshot {name}: {}", sdk_error(e)))
        .operation_id
}

/// Reverts guest `gid` to snapshot `name` (accepted); returns its operation's id.
async fn revert(cloud: &Cloud, gid: &str, name: &str) -> String {
    guests_api::snapshot_revert(&cloud.sdk().config, gid, name)
        .await
        .unwrap_or_else(|e| panic!("revert to {name}: {}", sdk_error(e)))
        .operation_id
}

/// Guest `gid`'s snapshots.
async fn snapshots(cloud: &Cloud, gid: &str) -> Vec<corral_client::models::Snapshot> {
    guests_api::snapshot_list(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("snapshots of {gid}: {}", sdk_error(e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_exclusive_operations_that_refuse_bad_input() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let (gid, op) = cloud
        .create(json!({"name": "s1", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let base = format!("/guests/{gid}/snapshots");

    let mut first = CreateSnapshot::new("before".into());
    first.description = Some("clean".into());
    let v = guests_api::snapshot_create(&cloud.sdk().config, &gid, first)
        .await
        .unwrap_or_else(|e| panic!("snapshot before: {}", sdk_error(e)));
    done(&cloud, &v.operation_id).await;
    let sid = v.snapshot_id;
    let list = snapshots(&cloud, &gid).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].state, "ready");
    assert_eq!(list[0].vm_state.as_deref(), Some("running"));
    assert_eq!(list[0].description.as_deref(), Some("clean"));

    // Refusals: each a 4xx with a message, none leaving a snapshot or an operation.
    let other = cloud.new_user("ann").await;
    for (method, path, body, want) in [
        (Method::POST, base.clone(), json!({"name": "before"}), 409),
        (
            Method::POST,
            base.clone(),
            json!({"name": "no spaces"}),
            400,
        ),
        (Method::POST, base.clone(), json!({}), 400),
        (
            Method::POST,
            format!("{base}/nothing/revert"),
            Value::Null,
            404,
        ),
        (Method::DELETE, format!("{base}/nothing"), Value::Null, 404),
        (
            Method::POST,
            "/guests/nobody/snapshots".into(),
            json!({"name": "x"}),
            404,
        ),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = cloud.call(method.clone(), &path, body).await;
        assert_eq!(s, want, "{method} {path}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    for (method, path) in [
        (Method::GET, base.clone()),
        (Method::POST, format!("{base}/{sid}/revert")),
    ] {
        assert_eq!(
            cloud.call_as(&other, method, &path, None).await.0,
            404,
            "{path}"
        );
    }
    assert_eq!(snapshots(&cloud, &gid).await.len(), 1);

    // While a snapshot is being taken (its node frozen), other work on the guest waits
    // its turn: 409 naming the snapshot's operation.
    cloud.node.as_ref().unwrap().signal("STOP");
    let holder = take(&cloud, &gid, "held").await;
    for (path, body) in [
        (format!("/guests/{gid}/actions/reboot"), json!(null)),
        (base.clone(), json!({"name": "third"})),
        (format!("{base}/{sid}/revert"), json!(null)),
    ] {
        let (s, v) = cloud.post(&path, body).await;
        assert_eq!(s, 409, "{path}: {v}");
        assert_eq!(v["details"]["operation_id"], json!(holder), "{path}: {v}");
    }
    cloud.node.as_ref().unwrap().signal("CONT");
    assert_eq!(cloud.wait_op(&holder).await["state"], "succeeded");

    // Revert to the first, delete both.
    done(&cloud, &revert(&cloud, &gid, "before").await).await;
    let g = guests_api::guest_get(&cloud.sdk().config, &gid)
        .await
        .unwrap_or_else(|e| panic!("guest {gid}: {}", sdk_error(e)));
    assert_eq!(g.state, GuestState::Running, "{g:?}");
    for name in ["before", "held"] {
        done(&cloud, &remove(&cloud, &gid, name).await).await;
    }
    let left = snapshots(&cloud, &gid).await;
    assert!(left.is_empty(), "{left:?}");

    // The controller killed at each step of a snapshot: it finishes, once.
    for (i, fault) in [
        "unpushed:snapshot.create:take",
        "dispatched:snapshot.create:take",
        "after:snapshot.create:record",
        "dispatched:snapshot.revert:revert",
        "dispatched:snapshot.delete:delete",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("c{i}");
        if fault.contains("create") {
            cloud.arm_fault(fault).await;
            let id = take(&cloud, &gid, &name).await;
            cloud.restart_after_fault(fault).await;
            let op = cloud.wait_op(&id).await;
            assert_eq!(op["state"], "succeeded", "{fault}: {op}");
            done(&cloud, &remove(&cloud, &gid, &name).await).await;
        } else {
            done(&cloud, &take(&cloud, &gid, &name).await).await;
            cloud.arm_fault(fault).await;
            let id = if fault.contains("revert") {
                revert(&cloud, &gid, &name).await
            } else {
                remove(&cloud, &gid, &name).await
            };
            cloud.restart_after_fault(fault).await;
            let op = cloud.wait_op(&id).await;
            assert_eq!(op["state"], "succeeded", "{fault}: {op}");
            if fault.contains("revert") {
                done(&cloud, &remove(&cloud, &gid, &name).await).await;
            }
        }
        let left = snapshots(&cloud, &gid).await;
        assert!(left.is_empty(), "{fault}: {left:?}");
    }
    cloud.delete_all_and_check().await;
}
