//! An undo that cannot complete never gives back what may still exist (real Redis, real
//! libvirtd on `qemu:///system`): a create whose node loses libvirtd mid-way fails, the
//! `undefine` of its unwind fails, and the guest's address stays held, marked for cleanup
//! on the node's list, until the janitor's retry succeeds once libvirtd is back.
//!
//! This file stops and restarts the machine's libvirtd, so it holds one test only (test
//! binaries run one after another).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, nodes_api, resources_api};
use corral_client::models::{GuestState, Node, Pool};
use serde_json::json;

/// Every address pool.
async fn pools(cloud: &Cloud) -> Vec<Pool> {
    resources_api::pool_list(&cloud.sdk().config)
        .await
        .unwrap_or_else(|e| panic!("pools: {}", sdk_error(e)))
}

/// The test's node's record.
async fn node(cloud: &Cloud) -> Node {
    nodes_api::node_get(&cloud.sdk().config, &cloud.node_id)
        .await
        .unwrap_or_else(|e| panic!("node {}: {}", cloud.node_id, sdk_error(e)))
}

fn libvirtd_answers() -> bool {
    Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_libvirtd() {
    let _ = std::fs::remove_file("/var/run/libvirtd.pid");
    let _ = Command::new("libvirtd").arg("-d").status();
    for _ in 0..200 {
        if libvirtd_answers() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("libvirtd did not come back");
}

fn stop_libvirtd() {
    let _ = Command::new("pkill").args(["-x", "libvirtd"]).status();
    for _ in 0..200 {
        if !libvirtd_answers() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("libvirtd did not stop");
}

/// Brings libvirtd back whatever happens to the test: other tests need it.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        if !libvirtd_answers() {
            start_libvirtd();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_failing_against_a_stopped_libvirtd_keeps_its_lease() {
    if !(require("redis-server")
        && require("qemu-img")
        && require("genisoimage")
        && require("libvirtd")
        && require("virsh"))
    {
        return;
    }
    if !libvirtd_answers() {
        assert!(
            std::env::var("CI").is_err(),
            "libvirtd must answer on qemu:///system in CI"
        );
        eprintln!("SKIPPED: libvirtd does not answer on qemu:///system");
        return;
    }
    let _restore = Restore;
    let mut cloud = Cloud::split_with(
        "qemu:///system",
        vec![
            ("CORRAL_DOMAIN_TYPE".into(), "qemu".into()),
            ("CORRAL_JANITOR_SECS".into(), "2".into()),
        ],
    )
    .await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.30").await;
    // The node defines the domain, then dies before it can report.
    cloud.node.take().unwrap().kill9();
    cloud.start_node(&[("CORRAL_FAULT", "after:node:define")]);
    let name = format!("undo-{}", &cloud.node_id[5..]);
    let created = cloud
        .create(json!({"name": name, "template": "tiny", "cpus": 1, "memory_mib": 96}))
        .await;
    let (gid, op) = created[0].clone();
    assert!(
        cloud
            .node
            .as_mut()
            .unwrap()
            .wait_exit(Duration::from_secs(60)),
        "the fault never fired"
    );
    // libvirtd stops; the node comes back without it.
    stop_libvirtd();
    cloud.start_node(&[]);

    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "failed", "{v}");
    let err = v["error"].as_str().unwrap_or("");
    assert!(err.contains("undo of step build failed"), "{v}");
    let steps = v["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["name"] == "build" && s["state"] == "undo_failed"),
        "{v}"
    );
    let held = pools(&cloud).await;
    assert_eq!(held[0].used, 1, "the address stays held: {held:?}");
    let g = guests_api::guest_get(&cloud.sdk().config, &gid)
        .await
        .unwrap_or_else(|e| panic!("guest {gid}: {}", sdk_error(e)));
    assert_eq!(g.state, GuestState::Error, "{g:?}");
    assert!(g.ip.is_some(), "the record still names it: {g:?}");
    let n = node(&cloud).await;
    assert!(
        n.cleanup
            .iter()
            .any(|c| c.action == "undefine" && c.target == gid),
        "the failed undefine is on the node's list: {n:?}"
    );

    // libvirtd returns: the janitor's retry removes the domain and frees the lease.
    start_libvirtd();
    let mut freed = false;
    for _ in 0..300 {
        let used = pools(&cloud).await[0].used;
        if used == 0 && node(&cloud).await.cleanup.is_empty() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        freed,
        "the janitor never finished the cleanup\n{}",
        cloud.log_tail(30)
    );
    let gone = !Command::new("virsh")
        .args(["-c", "qemu:///system", "dominfo", &gid])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(gone, "domain {gid} is still defined");
    cloud.delete_all_and_check().await;
}
