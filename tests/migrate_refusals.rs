//! Migration requests that cannot be, on simulated nodes (each `corral agent` with its own
//! libvirt test driver): to an offline node, to a node without the guest's bridge, to a
//! node without the memory, for a running and for a stopped guest. Each answers 409
//! naming the node and the reason, and changes nothing: no operation, the guest where
//! and as it was.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::host::Bridge;
use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, operations_api, resources_api};
use corral_client::models::{CreatePool, GuestAction};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_nowhere_to_go_is_refused_and_changes_nothing() {
    if !(require("redis-server") && require("qemu-img") && require("genisoimage")) {
        return;
    }
    // Two real bridges (placement counts only bridges a node has): every node may use
    // `net`, but node-nobridge only `other`.
    let net = Bridge::new("198.51.100.177/28");
    let other = Bridge::new("198.51.100.193/28");
    let mut cloud = Cloud::split_with(
        "test:///default",
        vec![("CORRAL_ALLOWED_BRIDGES".into(), net.name.clone())],
    )
    .await;
    cloud.template("tiny").await;
    let a = cloud.node_id.clone();
    cloud
        .add_node(
            "node-nobridge",
            &[
                ("CORRAL_VM_NETWORK_BRIDGE", other.name.as_str()),
                ("CORRAL_ALLOWED_BRIDGES", other.name.as_str()),
            ],
        )
        .await;
    cloud
        .add_node("node-tiny", &[("CORRAL_MEMORY_OVERCOMMIT", "0.0001")])
        .await;
    cloud.add_node("node-off", &[]).await;
    // Its pool's network is on bridge `net`, which node-nobridge does not have.
    let mut pool = CreatePool::new(
        "192.0.2.0/28".into(),
        "lan".into(),
        "192.0.2.14".into(),
        "192.0.2.2".into(),
    );
    pool.bridge = Some(net.name.clone());
    resources_api::pool_create(&cloud.sdk().config, pool)
        .await
        .unwrap_or_else(|e| panic!("pool: {}", sdk_error(e)));
    let (gid, op) = cloud
        .create(
            json!({"name": "stay", "template": "tiny", "cpus": 1, "memory_mib": 256,
                       "node": a, "pool": "lan"}),
        )
        .await[0]
        .clone();
    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    // node-off goes offline.
    cloud.extra_nodes.pop().unwrap().kill9();
    for _ in 0..300 {
        if cloud.get("/nodes/node-off").await.1["online"] == json!(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = cloud.sdk().config.clone();
    let ops_before = operations_api::operation_list(&c, None, None, None, None, Some(1000), None)
        .await
        .unwrap_or_else(|e| panic!("operations: {}", sdk_error(e)))
        .len();
    for stopped in [false, true] {
        if stopped {
            let off = guests_api::guest_action(&c, &gid, GuestAction::Poweroff, None)
                .await
                .unwrap();
            assert_eq!(cloud.wait_op(&off.operation_id).await["state"], "succeeded");
        }
        for (to, why) in [
            ("node-off", "offline"),
            ("node-nobridge", "bridge"),
            ("node-tiny", "memory"),
        ] {
            let (s, v) = cloud
                .call(
                    Method::POST,
                    &format!("/guests/{gid}/migrate"),
                    Some(json!({ "node_id": to })),
                )
                .await;
            assert_eq!(s, 409, "to {to} (stopped: {stopped}): {v}");
            let m = v["message"].as_str().unwrap();
            assert!(m.contains(to) && m.contains(why), "to {to}: {m}");
        }
        let g = guests_api::guest_get(&c, &gid).await.unwrap();
        assert_eq!(g.node_id.as_deref(), Some(a.as_str()));
        assert!(g.operation_id.is_none(), "{g:?}");
        let want = if stopped { "shutoff" } else { "running" };
        assert_eq!(serde_json::to_value(g.state).unwrap(), json!(want));
    }
    let ops_after = operations_api::operation_list(&c, None, None, None, None, Some(1000), None)
        .await
        .unwrap()
        .len();
    // Only the poweroff was added.
    assert_eq!(
        ops_after,
        ops_before + 1,
        "a refused migration left an operation"
    );
}
