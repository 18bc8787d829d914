//! Placement across several simulated nodes (separate `corral agent` processes, each with
//! its own libvirt test driver): a batch spreads, the auto-placement switch and capacity
//! thresholds are honoured, refusals name each node and why.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use common::{require, Cloud};
use serde_json::json;

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
    let (s, v) = cloud
        .call(
            reqwest::Method::PATCH,
            "/nodes/node-manual",
            Some(json!({"accept_auto": false})),
        )
        .await;
    assert_eq!((s, v["accept_auto"].clone()), (200, json!(false)));

    let ops = cloud
        .create(
            json!({"name": "spread", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 100}),
        )
        .await;
    let mut per_node: HashMap<String, i32> = HashMap::new();
    for (gid, op) in &ops {
        assert_eq!(cloud.wait_op(op).await["state"], "succeeded");
        let (_, g) = cloud.get(&format!("/guests/{gid}")).await;
        *per_node
            .entry(g["node_id"].as_str().unwrap().to_string())
            .or_default() += 1;
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
    let (_, live) = cloud.get("/nodes?online=true").await;
    assert_eq!(live.as_array().unwrap().len(), 4, "live nodes (S09)");

    // chosen by hand: the switch does not apply, capacity does
    let (gid, op) = cloud
        .create(json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "node": "node-manual"}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    assert_eq!(
        cloud.get(&format!("/guests/{gid}")).await.1["node_id"],
        "node-manual"
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
        cloud
            .call(
                reqwest::Method::PATCH,
                &format!("/nodes/{n}"),
                Some(json!({"accept_auto": false})),
            )
            .await;
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

    let (_, all) = cloud.get("/guests?limit=1000").await;
    for g in all.as_array().unwrap() {
        let (_, d) = cloud
            .delete(&format!("/guests/{}", g["id"].as_str().unwrap()))
            .await;
        assert_eq!(
            cloud.wait_op(d["operation_id"].as_str().unwrap()).await["state"],
            "succeeded"
        );
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
            if cloud.get(&format!("/nodes/{n}")).await.1["online"] == json!(false) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let (s, v) = cloud.delete("/nodes/node-keep?guests=keep").await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        cloud.wait_op(v["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    assert_eq!(cloud.get("/nodes/node-keep").await.0, 404);
    for g in &on["node-keep"] {
        let (s, g) = cloud.get(&format!("/guests/{g}")).await;
        assert_eq!(
            (s, g["state"].as_str()),
            (200, Some("unknown")),
            "kept: {g}"
        );
    }
    let (s, v) = cloud.delete("/nodes/node-drop?guests=delete").await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        cloud.wait_op(v["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    for g in &on["node-drop"] {
        assert_eq!(
            cloud.get(&format!("/guests/{g}")).await.0,
            404,
            "deleted with the node"
        );
    }
    let (_, pools) = cloud.get("/ip-pools").await;
    assert_eq!(
        pools[0]["used"], 2,
        "only the kept guests still hold addresses"
    );
    let (s, v) = cloud.delete("/nodes/nope?guests=keep").await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = cloud.delete(&format!("/nodes/{}", cloud.node_id)).await;
    assert_eq!(s, 400, "the guests choice is required: {v}");
}
