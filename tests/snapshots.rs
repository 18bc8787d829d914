//! Snapshots on the libvirt test driver and a real Redis: taken, listed, reverted and
//! deleted as operations; exclusive per guest (a guest being snapshotted answers other
//! requests 409 naming the holder); refusals that change nothing; and the controller
//! killed at each step. Reverting real guests (files before and after) is in
//! `real_guest.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{require, Cloud};
use reqwest::Method;
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server") && require("qemu-img")
}

async fn done(cloud: &Cloud, (s, v): (u16, Value)) -> Value {
    assert_eq!(s, 202, "{v}");
    let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    v
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

    let v = done(
        &cloud,
        cloud
            .post(&base, json!({"name": "before", "description": "clean"}))
            .await,
    )
    .await;
    let sid = v["snapshot_id"].as_str().unwrap().to_string();
    let (_, list) = cloud.get(&base).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["state"], "ready");
    assert_eq!(list[0]["vm_state"], "running");
    assert_eq!(list[0]["description"], "clean");

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
    assert_eq!(cloud.get(&base).await.1.as_array().unwrap().len(), 1);

    // While a snapshot is being taken (its node frozen), other work on the guest waits
    // its turn: 409 naming the snapshot's operation.
    cloud.node.as_ref().unwrap().signal("STOP");
    let (s, v) = cloud.post(&base, json!({"name": "held"})).await;
    assert_eq!(s, 202, "{v}");
    let holder = v["operation_id"].as_str().unwrap().to_string();
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
    done(
        &cloud,
        cloud
            .post(&format!("{base}/before/revert"), json!(null))
            .await,
    )
    .await;
    let (_, g) = cloud.get(&format!("/guests/{gid}")).await;
    assert_eq!(g["state"], "running", "{g}");
    for name in ["before", "held"] {
        done(&cloud, cloud.delete(&format!("{base}/{name}")).await).await;
    }
    assert_eq!(cloud.get(&base).await.1, json!([]));

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
            let (s, v) = cloud.post(&base, json!({"name": name})).await;
            assert_eq!(s, 202, "{v}");
            cloud.restart_after_fault(fault).await;
            let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
            assert_eq!(op["state"], "succeeded", "{fault}: {op}");
            done(&cloud, cloud.delete(&format!("{base}/{name}")).await).await;
        } else {
            done(&cloud, cloud.post(&base, json!({"name": name})).await).await;
            cloud.arm_fault(fault).await;
            let (s, v) = if fault.contains("revert") {
                cloud
                    .post(&format!("{base}/{name}/revert"), json!(null))
                    .await
            } else {
                cloud.delete(&format!("{base}/{name}")).await
            };
            assert_eq!(s, 202, "{v}");
            cloud.restart_after_fault(fault).await;
            let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
            assert_eq!(op["state"], "succeeded", "{fault}: {op}");
            if fault.contains("revert") {
                done(&cloud, cloud.delete(&format!("{base}/{name}")).await).await;
            }
        }
        assert_eq!(cloud.get(&base).await.1, json!([]), "{fault}");
    }
    cloud.delete_all_and_check().await;
}
