//! Placement across several simulated nodes (separate `corral node` processes, each with
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
            json!({"name": "spread", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 10}),
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
