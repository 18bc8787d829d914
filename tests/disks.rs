//! Data disks on the libvirt test driver and a real Redis: create, attach to a stopped
//! guest (its definition changes), grow, detach, attach to another guest, survive the
//! guest's deletion, delete; every refusal a clear 4xx that changes nothing; and the
//! controller or the node killed at each step of create and attach, with nothing left.
//! Live attach, grow and detach in a running guest are in `real_guest.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{require, sdk_error, Cloud};
use corral_client::apis::guests_api;
use corral_client::models::{
    AttachDisk, CreateDisk, DiskDetail, DiskLimits, GuestAction, GuestState, ResizeDisk,
};
use corral_client::session::Session;
use reqwest::Method;
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server") && require("qemu-img") && require("virsh")
}

/// A disk file's virtual size in GiB.
fn gib(path: &str) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", path])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["virtual-size"].as_u64().unwrap() >> 30
}

/// Waits for operation `id` and checks it succeeded; returns it.
async fn done(cloud: &Cloud, id: &str) -> Value {
    let op = cloud.wait_op(id).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    op
}

/// A disk of `size_gib` named `name`, on guest `guest`'s node when given, with `limits`;
/// returns the operation's id.
async fn create(
    cloud: &Cloud,
    name: &str,
    size_gib: u64,
    guest: Option<&str>,
    limits: Option<DiskLimits>,
) -> String {
    let mut d = CreateDisk::new(name.into(), size_gib);
    d.guest = guest.map(Into::into);
    d.limits = limits.map(Box::new);
    guests_api::disk_create(&cloud.sdk().config, d)
        .await
        .unwrap_or_else(|e| panic!("create disk {name}: {}", sdk_error(e)))
        .operation_id
}

/// Attaches disk `disk` to `guest`; returns the operation's id.
async fn attach(cloud: &Cloud, disk: &str, guest: &str) -> String {
    guests_api::disk_attach(&cloud.sdk().config, disk, AttachDisk::new(guest.into()))
        .await
        .unwrap_or_else(|e| panic!("attach {disk} to {guest}: {}", sdk_error(e)))
        .operation_id
}

/// Detaches disk `disk`; returns the operation's id.
async fn detach(cloud: &Cloud, disk: &str) -> String {
    guests_api::disk_detach(&cloud.sdk().config, disk)
        .await
        .unwrap_or_else(|e| panic!("detach {disk}: {}", sdk_error(e)))
        .operation_id
}

/// Grows disk `disk` to `size_gib`; returns the operation's id.
async fn resize(cloud: &Cloud, disk: &str, size_gib: u64) -> String {
    guests_api::disk_resize(&cloud.sdk().config, disk, ResizeDisk::new(size_gib))
        .await
        .unwrap_or_else(|e| panic!("resize {disk}: {}", sdk_error(e)))
        .operation_id
}

/// Sets disk `disk`'s limits; returns the operation's id.
async fn set_limits(cloud: &Cloud, disk: &str, limits: DiskLimits) -> String {
    guests_api::disk_set_limits(&cloud.sdk().config, disk, limits)
        .await
        .unwrap_or_else(|e| panic!("limits of {disk}: {}", sdk_error(e)))
        .operation_id
}

/// Deletes disk `disk`; returns the operation's id.
async fn delete(cloud: &Cloud, disk: &str) -> String {
    guests_api::disk_delete(&cloud.sdk().config, disk)
        .await
        .unwrap_or_else(|e| panic!("delete disk {disk}: {}", sdk_error(e)))
        .operation_id
}

/// Disk `disk`'s record.
async fn disk(cloud: &Cloud, disk: &str) -> DiskDetail {
    guests_api::disk_get(&cloud.sdk().config, disk)
        .await
        .unwrap_or_else(|e| panic!("disk {disk}: {}", sdk_error(e)))
}

/// Limits of `iops` and `bytes` per second (None: not set).
fn limits_of(iops: Option<u64>, bytes: Option<u64>) -> DiskLimits {
    let mut l = DiskLimits::new();
    l.total_iops_sec = iops;
    l.total_bytes_sec = bytes;
    l
}

/// Runs `action` on guest `gid`; returns the operation's id.
async fn action(cloud: &Cloud, gid: &str, action: GuestAction) -> String {
    guests_api::guest_action(&cloud.sdk().config, gid, action, None)
        .await
        .unwrap_or_else(|e| panic!("{action} {gid}: {}", sdk_error(e)))
        .operation_id
}

/// Deletes guest `gid`; returns the operation's id.
async fn delete_guest(cloud: &Cloud, gid: &str) -> String {
    guests_api::guest_delete(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("delete guest {gid}: {}", sdk_error(e)))
        .operation_id
}

/// A guest made and powered off: the test driver changes definitions of stopped guests.
async fn stopped_guest(cloud: &Cloud, name: &str) -> String {
    let (gid, op) = cloud
        .create(json!({"name": name, "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    done(cloud, &action(cloud, &gid, GuestAction::Poweroff).await).await;
    gid
}

async fn xml(cloud: &Cloud, gid: &str) -> String {
    let x = guests_api::guest_domain_xml(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("domain XML of {gid}: {}", sdk_error(e)));
    x.xml
        .unwrap_or_else(|| panic!("guest {gid} has no domain XML"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_disk_lives_on_its_own_across_guests() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let g1 = stopped_guest(&cloud, "g1").await;

    // Created on the guest's node, with I/O limits.
    let created = create(
        &cloud,
        "data1",
        1,
        Some("g1"),
        Some(limits_of(Some(500), Some(10485760))),
    )
    .await;
    done(&cloud, &created).await;
    let d = disk(&cloud, "data1").await;
    assert_eq!(d.state, "ready");
    assert_eq!(d.size_gib, Some(1));
    assert_eq!(d.node_id, cloud.node_id);
    let path = d.path.clone();
    assert!(
        path.starts_with(&cloud.images().display().to_string()),
        "{path}"
    );
    assert_eq!(gib(&path), 1);

    // System disks only when asked (S20).
    let list = guests_api::disk_list(&cloud.sdk().config, None)
        .await
        .unwrap_or_else(|e| panic!("disks: {}", sdk_error(e)));
    assert!(list.iter().all(|d| d.kind == "data"), "{list:?}");
    let all = guests_api::disk_list(&cloud.sdk().config, Some(true))
        .await
        .unwrap_or_else(|e| panic!("disks with system: {}", sdk_error(e)));
    let kinds: Vec<&str> = all.iter().map(|d| d.kind.as_str()).collect();
    assert!(
        kinds.contains(&"system") && kinds.contains(&"data"),
        "{kinds:?}"
    );

    // Attached to the stopped guest: in its definition, limits included.
    done(&cloud, &attach(&cloud, "data1", "g1").await).await;
    let d = disk(&cloud, "data1").await;
    assert_eq!(d.guest_id, Some(g1.clone()));
    assert_eq!(d.target.as_deref(), Some("vdc"));
    let x = xml(&cloud, &g1).await;
    assert!(x.contains(&path) && x.contains("dev='vdc'"), "{x}");
    assert!(x.contains("<total_iops_sec>500</total_iops_sec>"), "{x}");
    assert!(
        x.contains("<total_bytes_sec>10485760</total_bytes_sec>"),
        "{x}"
    );

    // Refusals, each a 4xx naming what to fix, none changing anything.
    let other = cloud.new_user("ann").await;
    let before = disk(&cloud, "data1").await;
    for (method, path, body, want, says) in [
        (
            Method::POST,
            "/disks/data1/attach",
            json!({"guest": "g1"}),
            409,
            "detach it first",
        ),
        (
            Method::DELETE,
            "/disks/data1",
            Value::Null,
            409,
            "detach it first",
        ),
        (
            Method::POST,
            "/disks/data1/resize",
            json!({"size_gib": 1}),
            400,
            "only grows",
        ),
        (
            Method::POST,
            "/disks/data1/resize",
            json!({"size_gib": 0}),
            400,
            "size_gib",
        ),
        (
            Method::POST,
            "/disks",
            json!({"name": "data1", "size_gib": 1}),
            409,
            "",
        ),
        (
            Method::POST,
            "/disks",
            json!({"name": "bad name", "size_gib": 1}),
            400,
            "disk name",
        ),
        (
            Method::POST,
            "/disks",
            json!({"name": "x", "size_gib": 70000}),
            400,
            "size_gib",
        ),
        (
            Method::POST,
            "/disks",
            json!({"name": "x", "size_gib": 1, "node": "nowhere"}),
            422,
            "not known",
        ),
        (
            Method::POST,
            "/disks",
            json!({"name": "x", "size_gib": 1, "node": "n", "guest": "g1"}),
            400,
            "not both",
        ),
        (
            Method::POST,
            "/disks/nothing/attach",
            json!({"guest": "g1"}),
            404,
            "not found",
        ),
        (
            Method::POST,
            "/disks/data1/attach",
            json!({"guest": "nobody"}),
            404,
            "not found",
        ),
        (Method::POST, "/disks/data1/attach", json!({}), 400, "guest"),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = cloud.call(method.clone(), path, body.clone()).await;
        assert_eq!(s, want, "{method} {path} {body:?}: {v}");
        let msg = v["message"].as_str().unwrap_or("");
        assert!(
            !msg.is_empty() && msg.contains(says),
            "{method} {path}: {v}"
        );
    }
    // Someone else's disk does not exist for them.
    for (method, path) in [
        (Method::GET, "/disks/data1"),
        (Method::POST, "/disks/data1/detach"),
        (Method::DELETE, "/disks/data1"),
    ] {
        assert_eq!(
            cloud.call_as(&other, method, path, None).await.0,
            404,
            "{path}"
        );
    }
    let theirs = guests_api::disk_list(&Session::with_token(&cloud.url(""), &other).config, None)
        .await
        .unwrap_or_else(|e| panic!("ann's disks: {}", sdk_error(e)));
    assert!(theirs.is_empty(), "{theirs:?}");
    assert_eq!(disk(&cloud, "data1").await, before);

    // Grown while its guest is stopped: on the file.
    done(&cloud, &resize(&cloud, "data1", 2).await).await;
    assert_eq!(gib(&path), 2);
    assert_eq!(disk(&cloud, "data1").await.size_gib, Some(2));

    // Detached, then attached to another guest on the node.
    done(&cloud, &detach(&cloud, "data1").await).await;
    assert!(!xml(&cloud, &g1).await.contains(&path));
    let g2 = stopped_guest(&cloud, "g2").await;
    done(&cloud, &attach(&cloud, "data1", "g2").await).await;
    assert!(xml(&cloud, &g2).await.contains(&path));

    // The guest goes; the disk stays, detached, with its file.
    done(&cloud, &delete_guest(&cloud, &g2).await).await;
    let d = disk(&cloud, "data1").await;
    assert!(d.guest_id.is_none(), "{d:?}");
    assert!(std::path::Path::new(&path).exists());

    // Deleted: file and record.
    done(&cloud, &delete(&cloud, "data1").await).await;
    assert!(!std::path::Path::new(&path).exists());
    // A status check of a refused read: raw.
    assert_eq!(cloud.get("/disks/data1").await.0, 404);
    cloud.wait_op(&delete_guest(&cloud, &g1).await).await;
    cloud.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_the_node_cannot_do_unwinds_and_frees_the_disk() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    // A running test-driver guest: that driver cannot hot-plug.
    let (gid, op) = cloud
        .create(json!({"name": "run", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    done(&cloud, &create(&cloud, "d", 1, Some("run"), None).await).await;
    let op = cloud.wait_op(&attach(&cloud, "d", "run").await).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert!(
        op["error"].as_str().unwrap().contains("hot-plugging"),
        "{op}"
    );
    let d = disk(&cloud, "d").await;
    assert!(d.guest_id.is_none() && d.busy_with.is_none(), "{d:?}");
    assert!(!xml(&cloud, &gid).await.contains(&d.path));
    done(&cloud, &delete(&cloud, "d").await).await;
    cloud.delete_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_operations_survive_the_controller_or_the_node_killed_at_each_step() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let g = stopped_guest(&cloud, "g").await;
    // Each step of each disk operation, with the controller killed there: the operation
    // finishes exactly once.
    let controller_faults = [
        "unpushed:disk.create:create_volume",
        "dispatched:disk.create:create_volume",
        "after:disk.create:record",
        "dispatched:disk.attach:attach",
        "after:disk.attach:record",
        "unpushed:disk.detach:detach",
        "dispatched:disk.detach:detach",
        "after:disk.detach:record",
        "dispatched:disk.resize:grow",
        "after:disk.resize:record",
        "unpushed:disk.delete:remove_file",
        "dispatched:disk.delete:remove_file",
        "after:disk.delete:forget",
    ];
    for (i, fault) in controller_faults.iter().enumerate() {
        let name = format!("c{i}");
        let path = format!("/disks/{name}");
        // What runs before the faulted operation, and the faulted operation.
        let id = if fault.contains("disk.create") {
            cloud.arm_fault(fault).await;
            create(&cloud, &name, 1, Some("g"), None).await
        } else {
            done(&cloud, &create(&cloud, &name, 1, Some("g"), None).await).await;
            let attached = fault.contains("disk.detach");
            if attached || fault.contains("disk.attach") {
                done(&cloud, &attach(&cloud, &name, "g").await).await;
                if !attached {
                    done(&cloud, &detach(&cloud, &name).await).await;
                }
            }
            cloud.arm_fault(fault).await;
            if attached {
                detach(&cloud, &name).await
            } else if fault.contains("disk.attach") {
                attach(&cloud, &name, "g").await
            } else if fault.contains("disk.resize") {
                resize(&cloud, &name, 2).await
            } else {
                delete(&cloud, &name).await
            }
        };
        cloud.restart_after_fault(fault).await;
        let op = cloud.wait_op(&id).await;
        assert_eq!(op["state"], "succeeded", "{fault}: {op}");
        if fault.contains("disk.delete") {
            // A status check of a refused read: raw.
            let (s, d) = cloud.get(&path).await;
            assert_eq!(s, 404, "{fault}: {d}");
            continue;
        }
        let d = disk(&cloud, &name).await;
        if fault.contains("disk.attach") {
            assert_eq!(d.guest_id.as_deref(), Some(g.as_str()), "{fault}: {d:?}");
            assert_eq!(
                xml(&cloud, &g).await.matches("-data.qcow2").count(),
                1,
                "{fault}"
            );
            done(&cloud, &detach(&cloud, &name).await).await;
        }
        if fault.contains("disk.resize") {
            assert_eq!(d.size_gib, Some(2), "{fault}: {d:?}");
        }
        assert!(!xml(&cloud, &g).await.contains("-data.qcow2"), "{fault}");
        let d = disk(&cloud, &name).await;
        assert_eq!(d.state, "ready", "{fault}: {d:?}");
        assert!(d.busy_with.is_none(), "{fault}: {d:?}");
        done(&cloud, &delete(&cloud, &name).await).await;
    }
    // The node killed after it wrote the file, before it reported. (The test driver's
    // domains live in the node process, so the node-side attach is killed on real
    // libvirt, in `real_guest.rs`.)
    cloud.node.take().unwrap().kill9();
    cloud.start_node(&[("CORRAL_FAULT", "after:node:create_volume")]);
    let id = create(&cloud, "n0", 1, None, None).await;
    assert!(
        cloud
            .node
            .as_mut()
            .unwrap()
            .wait_exit(std::time::Duration::from_secs(60)),
        "the node fault did not fire"
    );
    cloud.start_node(&[]);
    let op = cloud.wait_op(&id).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    done(&cloud, &delete(&cloud, "n0").await).await;
    // Nothing left: no disk record, no disk file, no device in the definition.
    let disks = guests_api::disk_list(&cloud.sdk().config, None)
        .await
        .unwrap_or_else(|e| panic!("disks: {}", sdk_error(e)));
    assert!(disks.is_empty(), "{disks:?}");
    let files: Vec<String> = cloud
        .image_files()
        .into_iter()
        .filter(|f| f.contains("-data"))
        .collect();
    assert_eq!(files, Vec::<String>::new());
    let g = guests_api::guest_get(&cloud.sdk().config, "g")
        .await
        .unwrap_or_else(|e| panic!("guest g: {}", sdk_error(e)));
    assert!(!xml(&cloud, &g.id).await.contains("-data.qcow2"));
    cloud.delete_all_and_check().await;
}

/// The `<iotune>` of disk `path` in `xml`, as (iops, bytes/s); None without limits.
fn tune_of(xml: &str, path: &str) -> Option<(u64, u64)> {
    let at = xml.find(&format!("file='{path}'"))?;
    let disk = &xml[at..at + xml[at..].find("</disk>")?];
    let num = |tag: &str| {
        let open = format!("<{tag}>");
        disk.find(&open).map(|i| {
            let rest = &disk[i + open.len()..];
            rest[..rest.find('<').unwrap()].parse::<u64>().unwrap()
        })
    };
    disk.contains("<iotune>").then(|| {
        (
            num("total_iops_sec").unwrap_or(0),
            num("total_bytes_sec").unwrap_or(0),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disks_limits_change_on_a_running_a_stopped_and_no_guest() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let gid = stopped_guest(&cloud, "g").await;
    let created = create(&cloud, "d", 1, Some("g"), Some(limits_of(Some(500), None))).await;
    done(&cloud, &created).await;
    let path = disk(&cloud, "d").await.path;
    let limits = |body: Value| cloud.call(reqwest::Method::PUT, "/disks/d/limits", Some(body));

    // Bad input: 400 naming what to fix, nothing changes.
    for (body, want) in [
        (json!({"total_iops_sec": 500}), "already has"),
        (json!({"total_iops_sec": 0}), "total_iops_sec"),
        (json!({"total_iops_sec": "x"}), "total_iops_sec"),
        (json!({"read_iops_sec": 5}), "read_iops_sec"),
    ] {
        let (s, v) = limits(body.clone()).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert!(v["message"].as_str().unwrap().contains(want), "{body}: {v}");
    }
    let d = disk(&cloud, "d").await;
    assert_eq!(
        d.limits,
        Some(Box::new(limits_of(Some(500), None))),
        "{d:?}"
    );

    // Detached: only the record changes; attaching renders them. (The test driver cannot
    // hot-plug: the disk is attached while the guest is off, then it starts.)
    done(
        &cloud,
        &set_limits(&cloud, "d", limits_of(Some(600), None)).await,
    )
    .await;
    done(&cloud, &attach(&cloud, "d", "g").await).await;
    assert_eq!(tune_of(&xml(&cloud, &gid).await, &path), Some((600, 0)));
    done(&cloud, &action(&cloud, &gid, GuestAction::Start).await).await;

    // Attached to a running guest: live, with the controller killed after dispatching
    // the node's part and after recording.
    for (fault, iops, bytes) in [
        ("dispatched:disk.set_limits:apply", 700, 0),
        ("after:disk.set_limits:record", 0, 1_048_576),
    ] {
        cloud.arm_fault(fault).await;
        let body = match iops {
            0 => limits_of(None, Some(bytes)),
            n => limits_of(Some(n), None),
        };
        let id = set_limits(&cloud, "d", body).await;
        cloud.restart_after_fault(fault).await;
        let op = cloud.wait_op(&id).await;
        assert_eq!(op["state"], "succeeded", "{fault}: {op}");
        assert_eq!(
            tune_of(&xml(&cloud, &gid).await, &path),
            Some((iops, bytes)),
            "{fault}"
        );
        let d = disk(&cloud, "d").await;
        assert!(d.busy_with.is_none(), "{fault}: {d:?}");
    }
    let g = guests_api::guest_get(&cloud.sdk().config, &gid)
        .await
        .unwrap_or_else(|e| panic!("guest {gid}: {}", sdk_error(e)));
    assert_eq!(
        g.state,
        GuestState::Running,
        "changing limits never stops the guest"
    );

    // Stopped: the definition is rewritten; `{}` lifts every limit.
    done(&cloud, &action(&cloud, &gid, GuestAction::Poweroff).await).await;
    done(&cloud, &set_limits(&cloud, "d", DiskLimits::new()).await).await;
    assert_eq!(tune_of(&xml(&cloud, &gid).await, &path), None);
    let d = disk(&cloud, "d").await;
    assert!(d.limits.is_none(), "{d:?}");
    done(&cloud, &detach(&cloud, "d").await).await;
    done(&cloud, &delete(&cloud, "d").await).await;
    cloud.delete_all_and_check().await;
}
