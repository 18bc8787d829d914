//! Guests made into templates on the libvirt test driver and a real Redis: refused while
//! the guest runs, with a name in use or a snapshot that is not there; done (image,
//! checksum, registration, a new guest from it) once it is shut off, also with the
//! controller or the node killed mid-way; and a conversion that fails leaves no image.
//! A real guest's data carried into a new guest is in `real_guest.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, operations_api, resources_api};
use corral_client::models::{CreateSnapshot, CreateTemplate, GuestAction, GuestToTemplate, OsType};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Powers guest `gid` off and waits for it.
async fn poweroff(cloud: &Cloud, gid: &str) {
    let a = guests_api::guest_action(&cloud.sdk().config, gid, GuestAction::Poweroff, None)
        .await
        .unwrap_or_else(|e| panic!("poweroff {gid}: {}", sdk_error(e)));
    cloud.wait_op(&a.operation_id).await;
}

/// Asks for guest `gid` to become template `to` (accepted); returns the operation's id.
async fn to_template(cloud: &Cloud, gid: &str, to: GuestToTemplate) -> String {
    resources_api::guest_to_template(&cloud.sdk().config, gid, to)
        .await
        .unwrap_or_else(|e| panic!("{gid} to a template: {}", sdk_error(e)))
        .operation_id
}

/// An image corral wrote for a template: named by the template's id (`<id>.qcow2`, or
/// `<id>.qcow2.tmp` while it is written).
fn by_id(file: &str) -> bool {
    file.split('.')
        .next()
        .is_some_and(|stem| uuid::Uuid::parse_str(stem).is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shut_off_guest_becomes_a_template_with_its_checksum() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let (gid, op) = cloud
        .create(json!({"name": "src", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let path = format!("/guests/{gid}/template");

    let (s, v) = cloud.post(&path, json!({"name": "made"})).await;
    assert_eq!(s, 409, "a running guest without a snapshot: {v}");
    poweroff(&cloud, &gid).await;
    for (body, want) in [
        (json!({"name": "tiny"}), 409),
        (json!({"name": "bad name"}), 400),
        (json!({"name": "x", "snapshot": "none"}), 404),
        (
            json!({"name": "x", "os_init_profile": "no-such-profile"}),
            422,
        ),
    ] {
        let (s, v) = cloud.post(&path, body.clone()).await;
        assert_eq!(s, want, "{body}: {v}");
    }

    // The controller killed after dispatching the conversion, then the node killed after
    // converting: it finishes once, with one image.
    let fault = "dispatched:template.from_guest:convert";
    cloud.arm_fault(fault).await;
    cloud.node.take().unwrap().kill9();
    cloud.start_node(&[("CORRAL_FAULT", "after:node:convert_image")]);
    let op = to_template(&cloud, &gid, GuestToTemplate::new("made".into())).await;
    cloud.restart_after_fault(fault).await;
    assert!(
        cloud
            .node
            .as_mut()
            .unwrap()
            .wait_exit(std::time::Duration::from_secs(60)),
        "the node fault never fired"
    );
    cloud.start_node(&[]);
    let done = cloud.wait_op(&op).await;
    assert_eq!(done["state"], "succeeded", "{done}");

    let t = resources_api::template_get(&cloud.sdk().config, "made")
        .await
        .unwrap_or_else(|e| panic!("template made: {}", sdk_error(e)));
    assert!(!t.public, "{t:?}");
    let file = t.path.as_str();
    assert!(
        file.starts_with(&cloud.dir().display().to_string()),
        "{file}"
    );
    // Named by the template's id, not by anything the caller chose.
    assert_eq!(
        std::path::Path::new(file).file_name().unwrap().to_str(),
        Some(format!("{}.qcow2", t.id).as_str()),
        "{t:?}"
    );
    let bytes = std::fs::read(file).unwrap();
    assert_eq!(t.sha256, Some(hex::encode(Sha256::digest(&bytes))));
    assert_eq!(t.size_bytes, Some(bytes.len() as u64));
    let made: Vec<String> = std::fs::read_dir(cloud.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| by_id(n))
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");

    // A new guest from it.
    let (copy, op) = cloud
        .create(json!({"name": "copy", "template": "made", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");

    // A snapshot the test driver keeps only as metadata cannot be read by qemu-img: the
    // conversion fails and leaves no image and no template. (The restarted test-driver
    // node no longer has `src`'s domain: `copy` is used.)
    let v = guests_api::snapshot_create(
        &cloud.sdk().config,
        &copy,
        CreateSnapshot::new("meta".into()),
    )
    .await
    .unwrap_or_else(|e| panic!("snapshot meta: {}", sdk_error(e)));
    assert_eq!(cloud.wait_op(&v.operation_id).await["state"], "succeeded");
    let mut from_snap = GuestToTemplate::new("from-snap".into());
    from_snap.snapshot = Some("meta".into());
    let failed = cloud
        .wait_op(&to_template(&cloud, &copy, from_snap).await)
        .await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(cloud.get("/templates/from-snap").await.0, 404);
    assert!(!std::fs::read_dir(cloud.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("from-snap")));
    cloud.delete_all_and_check().await;
}

/// A cancel does not wait for a long conversion: the node stops `qemu-img` and removes
/// the partial image, the step is given up (not awaited), no template is registered, and
/// the node takes work again once its cleanup ran. The conversion is slowed with the
/// node's `convert_rate_mib` so the cancel lands while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_a_conversion_in_flight() {
    if !(require("redis-server") && require("qemu-img") && require("qemu-io")) {
        return;
    }
    let cloud = Cloud::split_with(
        "test:///default",
        vec![("CORRAL_CONVERT_RATE_MIB".into(), "4".into())],
    )
    .await;
    // A template with room for 64 MiB of data, and a guest whose disk holds it.
    let big = cloud.dir().join("big.qcow2");
    let ok = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&big)
        .arg("256M")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    resources_api::template_create(
        &cloud.sdk().config,
        CreateTemplate::new("big".into(), OsType::Linux, big.display().to_string()),
    )
    .await
    .unwrap_or_else(|e| panic!("template big: {}", sdk_error(e)));
    let (gid, op) = cloud
        .create(json!({"name": "src", "template": "big", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    poweroff(&cloud, &gid).await;
    let system = cloud.system_disk(&gid).await;
    let wrote = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64M", &system])
        .output()
        .unwrap();
    assert!(wrote.status.success(), "{wrote:?}");

    let op = to_template(&cloud, &gid, GuestToTemplate::new("slow".into())).await;
    // Cancelled once the copy is under way (its partial image exists).
    let partial = |cloud: &Cloud| {
        std::fs::read_dir(cloud.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| by_id(n))
            .collect::<Vec<_>>()
    };
    for _ in 0..200 {
        if !partial(&cloud).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!partial(&cloud).is_empty(), "the conversion never started");
    operations_api::operation_cancel(&cloud.sdk().config, &op)
        .await
        .unwrap_or_else(|e| panic!("cancel {op}: {}", sdk_error(e)));
    let done = cloud.wait_op(&op).await;
    assert_eq!(done["state"], "cancelled", "{done}");
    assert_eq!(
        done["steps"][0]["state"], "abandoned",
        "not awaited: {done}"
    );

    // The node stopped the copy itself and removed its partial image.
    let mut stopped = false;
    for _ in 0..100 {
        let log = std::fs::read_to_string(cloud.dir().join("agent.log")).unwrap_or_default();
        if log.contains("interrupted by a cancel") {
            stopped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(stopped, "the node never stopped the conversion");
    let (s, _) = cloud.get("/templates/slow").await;
    assert_eq!(s, 404, "a cancelled conversion registered a template");
    // The cleanup list goes through; the node takes work again, and nothing is left.
    cloud.delete_all_and_check().await;
    assert_eq!(partial(&cloud), Vec::<String>::new(), "the image stayed");
}
