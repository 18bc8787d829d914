//! Guests made into templates on the libvirt test driver and a real Redis: refused while
//! the guest runs, with a name in use or a snapshot that is not there; done (image,
//! checksum, registration, a new guest from it) once it is shut off, also with the
//! controller or the node killed mid-way; and a conversion that fails leaves no image.
//! A real guest's data carried into a new guest is in `real_guest.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{require, Cloud};
use serde_json::json;
use sha2::{Digest, Sha256};

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
    let (_, v) = cloud
        .post(&format!("/guests/{gid}/actions/poweroff"), json!(null))
        .await;
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
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
    let (s, v) = cloud.post(&path, json!({"name": "made"})).await;
    assert_eq!(s, 202, "{v}");
    let op = v["operation_id"].as_str().unwrap().to_string();
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

    let (s, t) = cloud.get("/templates/made").await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["public"], false);
    let file = t["path"].as_str().unwrap();
    assert!(
        file.starts_with(&cloud.dir().display().to_string()),
        "{file}"
    );
    let bytes = std::fs::read(file).unwrap();
    assert_eq!(t["sha256"], json!(hex::encode(Sha256::digest(&bytes))));
    assert_eq!(t["size_bytes"], json!(bytes.len()));
    let made: Vec<String> = std::fs::read_dir(cloud.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("made-"))
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
    let path = format!("/guests/{copy}/template");
    let (_, v) = cloud
        .post(
            &format!("/guests/{copy}/snapshots"),
            json!({"name": "meta"}),
        )
        .await;
    assert_eq!(
        cloud.wait_op(v["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    let (s, v) = cloud
        .post(&path, json!({"name": "from-snap", "snapshot": "meta"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let failed = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(cloud.get("/templates/from-snap").await.0, 404);
    assert!(!std::fs::read_dir(cloud.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("from-snap")));
    cloud.delete_all_and_check().await;
}
