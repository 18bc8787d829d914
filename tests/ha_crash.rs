//! HA's operation kinds with the controller killed (abort, as `kill -9`) after each of
//! their steps, on simulated nodes (each `corral agent` with its own libvirt test
//! driver, whose domains die with it: a killed agent is a powered-off host). Both nodes
//! declare the same shared storage; node b's fence command confirms at once.
//!
//! - `guest.set_ha`: killed after each step, the flag is recorded once the operation
//!   finishes after the restart.
//! - `node.failover` and `guest.failover`: for each step, an HA guest on b, b lost, the
//!   controller killed there; after the restart the guest runs on a, recorded there, and
//!   b comes back for the next round. At the end every guest is deleted and nothing is
//!   left (addresses, ports, operations).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, nodes_api};
use corral_client::models::{GuestHa, GuestState, NodeSettings};
use serde_json::json;

const SET_HA_FAULTS: &[&str] = &["dispatched:guest.set_ha:mark", "after:guest.set_ha:record"];

const FAILOVER_FAULTS: &[&str] = &[
    "after:node.failover:fence",
    "after:node.failover:restart",
    "after:node.failover:report",
    "after:guest.failover:reserve",
    "dispatched:guest.failover:define",
    "dispatched:guest.failover:start",
    "after:guest.failover:switch",
];

async fn set_ha(cloud: &Cloud, gid: &str) -> String {
    guests_api::guest_set_ha(&cloud.sdk().config, gid, GuestHa::new(true))
        .await
        .unwrap_or_else(|e| panic!("ha: {}", sdk_error(e)))
        .operation_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_operations_survive_a_controller_killed_after_each_step() {
    if !(require("redis-server") && require("qemu-img") && require("genisoimage")) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let fence = tempfile::tempdir().unwrap();
    let script = fence.path().join("confirm");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let mut cloud = Cloud::split_with(
        "test:///default",
        vec![
            env("CORRAL_SHARED_STORAGE", "ha-crash"),
            env("CORRAL_HA_AFTER_SECS", "2"),
            env("CORRAL_FENCE_DIR", fence.path().to_str().unwrap()),
        ],
    )
    .await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.40").await;
    let a = cloud.node_id.clone();
    cloud.add_node("node-b", &[]).await;
    let mut set = NodeSettings::new();
    set.fence_command = Some(vec!["confirm".into()]);
    nodes_api::node_update(&cloud.sdk().config, "node-b", set)
        .await
        .unwrap_or_else(|e| panic!("fence: {}", sdk_error(e)));

    for (i, fault) in SET_HA_FAULTS.iter().enumerate() {
        let (gid, op) = cloud
            .create(json!({"name": format!("flag-{i}"), "template": "tiny", "cpus": 1, "memory_mib": 64, "node": a}))
            .await[0]
            .clone();
        assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
        cloud.arm_fault(fault).await;
        let op = set_ha(&cloud, &gid).await;
        cloud.restart_after_fault(fault).await;
        let end = cloud.wait_op(&op).await;
        assert_eq!(end["state"], "succeeded", "after {fault}: {end}");
        let g = guests_api::guest_get(&cloud.sdk().config, &gid)
            .await
            .unwrap();
        assert!(g.ha, "after {fault}: the flag");
    }

    for (i, fault) in FAILOVER_FAULTS.iter().enumerate() {
        let (gid, op) = cloud
            .create(json!({"name": format!("fo-{i}"), "template": "tiny", "cpus": 1, "memory_mib": 64, "node": "node-b"}))
            .await[0]
            .clone();
        assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
        assert_eq!(
            cloud.wait_op(&set_ha(&cloud, &gid).await).await["state"],
            "succeeded"
        );
        cloud.arm_fault(fault).await;
        // b is lost: its agent, and with it its test-driver domains.
        for p in &mut cloud.extra_nodes {
            p.kill9();
        }
        cloud.extra_nodes.clear();
        cloud.restart_after_fault(fault).await;
        let t0 = Instant::now();
        loop {
            let g = guests_api::guest_get(&cloud.sdk().config, &gid)
                .await
                .unwrap();
            if g.node_id.as_deref() == Some(a.as_str()) && g.state == GuestState::Running {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "after {fault}: {g:?}\n{}",
                cloud.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        eprintln!("controller killed {fault}: the guest runs on a, recorded there");
        // b returns (its cleanup list runs first), for the next round.
        cloud.add_node("node-b", &[]).await;
    }
    cloud.delete_all_and_check().await;
}
