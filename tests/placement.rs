//! Placement across several simulated nodes (separate `corral agent` processes, each with
//! its own libvirt test driver): a batch spreads, the auto-placement switch and capacity
//! thresholds are honoured, refusals name each node and why.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, nodes_api, resources_api};
use corral_client::models::{Guest, GuestRecords, GuestState, Node, NodeSettings};
use serde_json::json;

/// Sets node `id`'s automatic-placement switch; returns the node.
async fn accept_auto(cloud: &Cloud, id: &str, accept: bool) -> Node {
    let mut s = NodeSettings::new();
    s.accept_auto = Some(accept);
    nodes_api::node_update(&cloud.sdk().config, id, s)
        .await
        .unwrap_or_else(|e| panic!("accept_auto of {id}: {}", sdk_error(e)))
}

/// Guest `gid`'s record.
async fn guest(cloud: &Cloud, gid: &str) -> Guest {
    guests_api::guest_get(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("guest {gid}: {}", sdk_error(e)))
}

/// Node `id`'s record.
async fn node(cloud: &Cloud, id: &str) -> Node {
    nodes_api::node_get(&cloud.sdk().config, id)
        .await
        .unwrap_or_else(|e| panic!("node {id}: {}", sdk_error(e)))
}

/// Removes node `id`, keeping or deleting its guests' records; returns the operation's id.
async fn remove_node(cloud: &Cloud, id: &str, guests: GuestRecords) -> String {
    nodes_api::node_remove(&cloud.sdk().config, id, guests)
        .await
        .unwrap_or_else(|e| panic!("remove node {id}: {}", sdk_error(e)))
        .operation_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_spread_and_refusals_say_why() {
    if !(require("redis-server") && require("qemu-img") && require("genisoimage")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let a = cloud.node_id.clone();
    cloud.add_node("node-d", &[]).await;
    cloud.add_node("node-manual", &[]).await;
    cloud
        .add_node("node-tiny", &[("CORRAL_MEMORY_OVERCOMMIT", "0.0001")])
        .await;
    let n = accept_auto(&cloud, "node-manual", false).await;
    assert!(!n.accept_auto, "{n:?}");

    let ops = cloud
        .create(
            json!({"name": "spread", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 100}),
        )
        .await;
    let mut per_node: HashMap<String, i32> = HashMap::new();
    for (gid, op) in &ops {
        assert_eq!(cloud.wait_op(op).await["state"], "succeeded");
        let g = guest(&cloud, gid).await;
        *per_node.entry(g.node_id.unwrap()).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        2,
        "only the two eligible nodes: {per_node:?}"
    );
    assert!(
        (per_node[&a] - per_node["node-d"]).abs() <= 1,
        "spread evenly: {per_node:?}"
    );
    let live = nodes_api::node_list(&cloud.sdk().config, Some(true))
        .await
        .unwrap_or_else(|e| panic!("live nodes: {}", sdk_error(e)));
    assert_eq!(live.len(), 4, "live nodes (S09)");

    // chosen by hand: the switch does not apply, capacity does
    let (gid, op) = cloud
        .create(json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "node": "node-manual"}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    assert_eq!(
        guest(&cloud, &gid).await.node_id.as_deref(),
        Some("node-manual")
    );
    let (_, op) = cloud
        .create(json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "node": "node-tiny"}))
        .await[0]
        .clone();
    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "failed");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("node-tiny") && err.contains("memory"), "{err}");

    // nobody takes automatic guests: every node is named with its reason
    for n in [a.as_str(), "node-d"] {
        accept_auto(&cloud, n, false).await;
    }
    let (_, op) = cloud
        .create(json!({"template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "failed");
    let err = v["error"].as_str().unwrap();
    for n in [a.as_str(), "node-d", "node-manual"] {
        assert!(
            err.contains(&format!("{n}: does not accept automatically placed guests")),
            "{err}"
        );
    }
    assert!(err.contains("node-tiny: memory"), "{err}");

    let all = guests_api::guest_list(&cloud.sdk().config, None, None, None, Some(1000), None)
        .await
        .unwrap_or_else(|e| panic!("guests: {}", sdk_error(e)));
    for g in all {
        let d = guests_api::guest_delete(&cloud.sdk().config, &g.id)
            .await
            .unwrap_or_else(|e| panic!("delete {}: {}", g.id, sdk_error(e)));
        assert_eq!(cloud.wait_op(&d.operation_id).await["state"], "succeeded");
    }
    cloud.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_nodes_keeps_or_deletes_their_guests() {
    if !(require("redis-server") && require("qemu-img") && require("genisoimage")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.30").await;
    cloud.add_node("node-keep", &[]).await;
    cloud.add_node("node-drop", &[]).await;
    let mut on = HashMap::new();
    for n in ["node-keep", "node-drop"] {
        let ops = cloud.create(json!({"name": n.replace("node-", "g-"), "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 2, "node": n})).await;
        for (gid, op) in &ops {
            assert_eq!(cloud.wait_op(op).await["state"], "succeeded");
            on.entry(n).or_insert_with(Vec::new).push(gid.clone());
        }
    }
    let (s, v) = cloud.delete("/nodes/node-keep?guests=keep").await;
    assert_eq!(s, 409, "online with guests: {v}");

    // both nodes die
    for p in &mut cloud.extra_nodes {
        p.kill9();
    }
    for n in ["node-keep", "node-drop"] {
        for _ in 0..200 {
            if !node(&cloud, n).await.online {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let op = remove_node(&cloud, "node-keep", GuestRecords::Keep).await;
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    // Raw: the test is about the status of a read of a removed node.
    assert_eq!(cloud.get("/nodes/node-keep").await.0, 404);
    for g in &on["node-keep"] {
        let g = guest(&cloud, g).await;
        assert_eq!(g.state, GuestState::Unknown, "kept: {g:?}");
    }
    let op = remove_node(&cloud, "node-drop", GuestRecords::Delete).await;
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    for g in &on["node-drop"] {
        // Raw: the test is about the status of a read of a deleted guest.
        assert_eq!(
            cloud.get(&format!("/guests/{g}")).await.0,
            404,
            "deleted with the node"
        );
    }
    let pools = resources_api::pool_list(&cloud.sdk().config)
        .await
        .unwrap_or_else(|e| panic!("pools: {}", sdk_error(e)));
    assert_eq!(
        pools[0].used, 2,
        "only the kept guests still hold addresses"
    );
    let (s, v) = cloud.delete("/nodes/nope?guests=keep").await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = cloud.delete(&format!("/nodes/{}", cloud.node_id)).await;
    assert_eq!(s, 400, "the guests choice is required: {v}");
}
