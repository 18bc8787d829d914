//! Resizing guests on the libvirt test driver and a real Redis: a running guest is
//! refused, bad sizes are 400s, a size the node cannot hold fails naming the node and
//! the reason and changes nothing, a good one changes definition and record, and a
//! controller killed mid-way finishes it. A resized real guest booting with its new
//! size is in `real_guest.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use common::{require, sdk_error, Cloud};
use corral_client::apis::guests_api;
use corral_client::models::{DomainXml, Guest, GuestAction, GuestSize, GuestState};
use serde_json::{json, Value};

/// A raw `PUT`, for the refusals (their status and message are what is tested).
async fn put(cloud: &Cloud, path: &str, body: Value) -> (u16, Value) {
    cloud.call(reqwest::Method::PUT, path, Some(body)).await
}

/// A size of `cpus` and `memory_mib`, and maxima `max_cpus` (None: unchanged).
fn to_size(cpus: Option<u32>, memory_mib: Option<u32>, max_cpus: Option<u32>) -> GuestSize {
    let mut s = GuestSize::new();
    s.cpus = cpus;
    s.memory_mib = memory_mib;
    s.max_cpus = max_cpus;
    s
}

/// Asks for guest `gid` to be resized (accepted); returns the operation's id.
async fn resize(cloud: &Cloud, gid: &str, to: GuestSize) -> String {
    guests_api::guest_resize(&cloud.sdk().config, gid, to)
        .await
        .unwrap_or_else(|e| panic!("resize {gid}: {}", sdk_error(e)))
        .operation_id
}

async fn guest(cloud: &Cloud, gid: &str) -> Guest {
    guests_api::guest_get(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("guest {gid}: {}", sdk_error(e)))
}

/// Powers guest `gid` off and waits for it.
async fn poweroff(cloud: &Cloud, gid: &str) {
    let a = guests_api::guest_action(&cloud.sdk().config, gid, GuestAction::Poweroff, None)
        .await
        .unwrap_or_else(|e| panic!("poweroff {gid}: {}", sdk_error(e)));
    cloud.wait_op(&a.operation_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_guest_is_resized_within_its_nodes_capacity() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let (gid, op) = cloud
        .create(json!({"name": "r", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    let created = cloud.wait_op(&op).await;
    assert_eq!(created["state"], "succeeded", "{created}");
    let size = format!("/guests/{gid}/size");

    let (s, v) = put(&cloud, &size, json!({"cpus": 2})).await;
    assert_eq!(s, 409, "a running guest: {v}");
    assert!(
        v["message"].as_str().unwrap().contains("shut it down"),
        "{v}"
    );
    poweroff(&cloud, &gid).await;

    for (body, want) in [
        (json!({}), 400),
        (json!({"cpus": 1, "memory_mib": 128}), 400),
        (json!({"cpus": 0}), 400),
        (json!({"memory_mib": 1}), 400),
        (json!({"cpus": "two"}), 400),
    ] {
        let (s, v) = put(&cloud, &size, body.clone()).await;
        assert_eq!(s, want, "{body}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }

    // More than the node holds: the operation fails naming the node and the reason.
    let xml_before = domain_xml(&cloud, &gid).await;
    let id = resize(&cloud, &gid, to_size(None, Some(1_048_576), None)).await;
    let op = cloud.wait_op(&id).await;
    assert_eq!(op["state"], "failed", "{op}");
    let err = op["error"].as_str().unwrap();
    assert!(
        err.contains(&format!("node {}", cloud.node_id)) && err.contains("memory"),
        "{err}"
    );
    let g = guest(&cloud, &gid).await;
    assert_eq!((g.cpus, g.memory_mib), (1, 128));
    assert_eq!(domain_xml(&cloud, &gid).await, xml_before);

    // A good size, with the controller killed after dispatching the node's part.
    let fault = "dispatched:guest.resize:redefine";
    cloud.arm_fault(fault).await;
    let id = resize(&cloud, &gid, to_size(Some(2), Some(256), None)).await;
    cloud.restart_after_fault(fault).await;
    let op = cloud.wait_op(&id).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let g = guest(&cloud, &gid).await;
    assert_eq!((g.cpus, g.memory_mib), (2, 256));
    let x = xml(&cloud, &gid).await;
    assert!(x.contains(">2</vcpu>") && x.contains("262144"), "{x}");
    cloud.delete_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_changes_size_live_within_its_maxima() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let base = json!({"name": "l", "template": "tiny", "cpus": 2, "memory_mib": 128});
    for (extra, field) in [
        (json!({"max_cpus": 1}), "max_cpus"),
        (json!({"max_cpus": 257}), "max_cpus"),
        (json!({"max_memory_mib": 64}), "max_memory_mib"),
    ] {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, v) = cloud.post("/guests", body).await;
        assert_eq!(s, 400, "{extra}: {v}");
        assert!(v["message"].as_str().unwrap().contains(field), "{v}");
    }
    let guests = guests_api::guest_list(&cloud.sdk().config, None, None, None, None, None)
        .await
        .unwrap_or_else(|e| panic!("guests: {}", sdk_error(e)));
    assert!(
        guests.is_empty(),
        "a refused create left a guest: {guests:?}"
    );

    let mut body = base.clone();
    body["cpus"] = json!(1);
    body["max_cpus"] = json!(4);
    body["max_memory_mib"] = json!(512);
    let (gid, op) = cloud.create(body).await[0].clone();
    let created = cloud.wait_op(&op).await;
    assert_eq!(created["state"], "succeeded", "{created}");
    let g = guest(&cloud, &gid).await;
    assert_eq!((g.max_cpus, g.max_memory_mib), (4, 512));
    let x = xml(&cloud, &gid).await;
    assert!(
        x.contains("current='1'>4</vcpu>") && x.contains("524288"),
        "{x}"
    );

    // Beyond the maxima, or changing them, while it runs: 409, nothing changes.
    let size = format!("/guests/{gid}/size");
    for body in [
        json!({"cpus": 5}),
        json!({"max_cpus": 8}),
        json!({"memory_mib": 1024}),
    ] {
        let (s, v) = put(&cloud, &size, body.clone()).await;
        assert_eq!(s, 409, "{body}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("4 vCPUs and 512 MiB"),
            "{v}"
        );
    }
    // Less than its template needs: 422 naming the minimum.
    let (s, v) = put(&cloud, &size, json!({"memory_mib": 40})).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("minimum"), "{v}");

    // Growing live, with the controller killed after each of its controller steps.
    for (fault, cpus, mem) in [
        ("after:guest.resize:check", 3, 384),
        ("after:guest.resize:record", 2, 256),
    ] {
        cloud.arm_fault(fault).await;
        let id = resize(&cloud, &gid, to_size(Some(cpus), Some(mem), None)).await;
        cloud.restart_after_fault(fault).await;
        let op = cloud.wait_op(&id).await;
        assert_eq!(op["state"], "succeeded", "{fault}: {op}");
        let g = guest(&cloud, &gid).await;
        assert_eq!(g.state, GuestState::Running, "{g:?}");
        assert_eq!((g.cpus, g.memory_mib), (cpus, mem), "{g:?}");
        assert_eq!((g.max_cpus, g.max_memory_mib), (4, 512));
        let x = xml(&cloud, &gid).await;
        assert!(
            x.contains(&format!("current='{cpus}'>4</vcpu>"))
                && x.contains(&format!(">{}</currentMemory>", mem * 1024)),
            "{fault}: {x}"
        );
    }

    // Shut off, the maxima change too, and a size beyond the old ones is fine.
    poweroff(&cloud, &gid).await;
    let id = resize(&cloud, &gid, to_size(Some(6), Some(640), Some(8))).await;
    assert_eq!(cloud.wait_op(&id).await["state"], "succeeded");
    let g = guest(&cloud, &gid).await;
    assert_eq!(
        (g.cpus, g.max_cpus, g.memory_mib, g.max_memory_mib),
        (6, 8, 640, 640),
        "a size past the old memory maximum raises it: {g:?}"
    );
    let x = xml(&cloud, &gid).await;
    assert!(x.contains("current='6'>8</vcpu>"), "{x}");
    cloud.delete_all_and_check().await;
}

async fn domain_xml(cloud: &Cloud, gid: &str) -> DomainXml {
    guests_api::guest_domain_xml(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("domain XML of {gid}: {}", sdk_error(e)))
}

async fn xml(cloud: &Cloud, gid: &str) -> String {
    let x = domain_xml(cloud, gid).await;
    x.xml
        .unwrap_or_else(|| panic!("guest {gid} has no domain XML"))
}
