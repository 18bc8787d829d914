//! Data disks on the libvirt test driver and a real Redis: create, attach to a stopped
//! guest (its definition changes), grow, detach, attach to another guest, survive the
//! guest's deletion, delete; every refusal a clear 4xx that changes nothing; and the
//! controller or the node killed at each step of create and attach, with nothing left.
//! Live attach, grow and detach in a running guest are in `real_guest.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{require, Cloud};
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

async fn done(cloud: &Cloud, (s, v): (u16, Value)) -> Value {
    assert_eq!(s, 202, "{v}");
    let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    op
}

/// A guest made and powered off: the test driver changes definitions of stopped guests.
async fn stopped_guest(cloud: &Cloud, name: &str) -> String {
    let (gid, op) = cloud
        .create(json!({"name": name, "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    done(
        cloud,
        cloud
            .post(&format!("/guests/{gid}/actions/poweroff"), json!({}))
            .await,
    )
    .await;
    gid
}

async fn xml(cloud: &Cloud, gid: &str) -> String {
    let (s, x) = cloud.get(&format!("/guests/{gid}/domain-xml")).await;
    assert_eq!(s, 200, "{x}");
    x["xml"].as_str().unwrap().to_string()
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
    let created = cloud
        .post(
            "/disks",
            json!({"name": "data1", "size_gib": 1, "guest": "g1",
                   "limits": {"total_iops_sec": 500, "total_bytes_sec": 10485760}}),
        )
        .await;
    done(&cloud, created).await;
    let (s, d) = cloud.get("/disks/data1").await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["state"], "ready");
    assert_eq!(d["size_gib"], 1);
    assert_eq!(d["node_id"], json!(cloud.node_id));
    let path = d["path"].as_str().unwrap().to_string();
    assert!(
        path.starts_with(&cloud.images().display().to_string()),
        "{path}"
    );
    assert_eq!(gib(&path), 1);

    // System disks only when asked (S20).
    let (_, list) = cloud.get("/disks").await;
    assert!(
        list.as_array().unwrap().iter().all(|d| d["kind"] == "data"),
        "{list}"
    );
    let (_, all) = cloud.get("/disks?include_system=true").await;
    let kinds: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"system") && kinds.contains(&"data"),
        "{kinds:?}"
    );

    // Attached to the stopped guest: in its definition, limits included.
    done(
        &cloud,
        cloud
            .post("/disks/data1/attach", json!({"guest": "g1"}))
            .await,
    )
    .await;
    let (_, d) = cloud.get("/disks/data1").await;
    assert_eq!(d["guest_id"], json!(g1));
    assert_eq!(d["target"], "vdc");
    let x = xml(&cloud, &g1).await;
    assert!(x.contains(&path) && x.contains("dev='vdc'"), "{x}");
    assert!(x.contains("<total_iops_sec>500</total_iops_sec>"), "{x}");
    assert!(
        x.contains("<total_bytes_sec>10485760</total_bytes_sec>"),
        "{x}"
    );

    // Refusals, each a 4xx naming what to fix, none changing anything.
    let other = cloud.new_user("ann").await;
    let before = cloud.get("/disks/data1").await.1;
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
    let (_, theirs) = cloud.call_as(&other, Method::GET, "/disks", None).await;
    assert_eq!(theirs, json!([]));
    assert_eq!(cloud.get("/disks/data1").await.1, before);

    // Grown while its guest is stopped: on the file.
    done(
        &cloud,
        cloud
            .post("/disks/data1/resize", json!({"size_gib": 2}))
            .await,
    )
    .await;
    assert_eq!(gib(&path), 2);
    assert_eq!(cloud.get("/disks/data1").await.1["size_gib"], 2);

    // Detached, then attached to another guest on the node.
    done(&cloud, cloud.post("/disks/data1/detach", json!({})).await).await;
    assert!(!xml(&cloud, &g1).await.contains(&path));
    let g2 = stopped_guest(&cloud, "g2").await;
    done(
        &cloud,
        cloud
            .post("/disks/data1/attach", json!({"guest": "g2"}))
            .await,
    )
    .await;
    assert!(xml(&cloud, &g2).await.contains(&path));

    // The guest goes; the disk stays, detached, with its file.
    let (_, del) = cloud.delete(&format!("/guests/{g2}")).await;
    assert_eq!(
        cloud.wait_op(del["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    let (_, d) = cloud.get("/disks/data1").await;
    assert!(d.get("guest_id").is_none(), "{d}");
    assert!(std::path::Path::new(&path).exists());

    // Deleted: file and record.
    done(&cloud, cloud.delete("/disks/data1").await).await;
    assert!(!std::path::Path::new(&path).exists());
    assert_eq!(cloud.get("/disks/data1").await.0, 404);
    let (_, del) = cloud.delete(&format!("/guests/{g1}")).await;
    cloud.wait_op(del["operation_id"].as_str().unwrap()).await;
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
    done(
        &cloud,
        cloud
            .post(
                "/disks",
                json!({"name": "d", "size_gib": 1, "guest": "run"}),
            )
            .await,
    )
    .await;
    let (s, v) = cloud.post("/disks/d/attach", json!({"guest": "run"})).await;
    assert_eq!(s, 202, "{v}");
    let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert!(
        op["error"].as_str().unwrap().contains("hot-plugging"),
        "{op}"
    );
    let (_, d) = cloud.get("/disks/d").await;
    assert!(
        d.get("guest_id").is_none() && d.get("busy_with").is_none(),
        "{d}"
    );
    assert!(!xml(&cloud, &gid)
        .await
        .contains(d["path"].as_str().unwrap()));
    done(&cloud, cloud.delete("/disks/d").await).await;
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
        let create_body = json!({"name": name, "size_gib": 1, "guest": "g"});
        // What runs before the faulted operation, and the faulted operation.
        let (s, v) = if fault.contains("disk.create") {
            cloud.arm_fault(fault).await;
            cloud.post("/disks", create_body.clone()).await
        } else {
            done(&cloud, cloud.post("/disks", create_body.clone()).await).await;
            let attached = fault.contains("disk.detach");
            if attached || fault.contains("disk.attach") {
                done(
                    &cloud,
                    cloud
                        .post(&format!("{path}/attach"), json!({"guest": "g"}))
                        .await,
                )
                .await;
                if !attached {
                    done(
                        &cloud,
                        cloud.post(&format!("{path}/detach"), json!({})).await,
                    )
                    .await;
                }
            }
            cloud.arm_fault(fault).await;
            if attached {
                cloud.post(&format!("{path}/detach"), json!({})).await
            } else if fault.contains("disk.attach") {
                cloud
                    .post(&format!("{path}/attach"), json!({"guest": "g"}))
                    .await
            } else if fault.contains("disk.resize") {
                cloud
                    .post(&format!("{path}/resize"), json!({"size_gib": 2}))
                    .await
            } else {
                cloud.delete(&path).await
            }
        };
        assert_eq!(s, 202, "{fault}: {v}");
        cloud.restart_after_fault(fault).await;
        let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
        assert_eq!(op["state"], "succeeded", "{fault}: {op}");
        let (s, d) = cloud.get(&path).await;
        if fault.contains("disk.delete") {
            assert_eq!(s, 404, "{fault}: {d}");
            continue;
        }
        if fault.contains("disk.attach") {
            assert_eq!(d["guest_id"], json!(g), "{fault}: {d}");
            assert_eq!(
                xml(&cloud, &g).await.matches("-data.qcow2").count(),
                1,
                "{fault}"
            );
            done(
                &cloud,
                cloud.post(&format!("{path}/detach"), json!({})).await,
            )
            .await;
        }
        if fault.contains("disk.resize") {
            assert_eq!(d["size_gib"], 2, "{fault}: {d}");
        }
        assert!(!xml(&cloud, &g).await.contains("-data.qcow2"), "{fault}");
        let (_, d) = cloud.get(&path).await;
        assert_eq!(d["state"], "ready", "{fault}: {d}");
        assert!(d.get("busy_with").is_none(), "{fault}: {d}");
        done(&cloud, cloud.delete(&path).await).await;
    }
    // The node killed after it wrote the file, before it reported. (The test driver's
    // domains live in the node process, so the node-side attach is killed on real
    // libvirt, in `real_guest.rs`.)
    cloud.node.take().unwrap().kill9();
    cloud.start_node(&[("CORRAL_FAULT", "after:node:create_volume")]);
    let (s, v) = cloud
        .post("/disks", json!({"name": "n0", "size_gib": 1}))
        .await;
    assert_eq!(s, 202, "{v}");
    assert!(
        cloud
            .node
            .as_mut()
            .unwrap()
            .wait_exit(std::time::Duration::from_secs(60)),
        "the node fault did not fire"
    );
    cloud.start_node(&[]);
    let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    done(&cloud, cloud.delete("/disks/n0").await).await;
    // Nothing left: no disk record, no disk file, no device in the definition.
    let (_, disks) = cloud.get("/disks").await;
    assert_eq!(disks, json!([]));
    let files: Vec<String> = cloud
        .image_files()
        .into_iter()
        .filter(|f| f.contains("-data"))
        .collect();
    assert_eq!(files, Vec::<String>::new());
    let (_, g) = cloud.get("/guests/g").await;
    assert!(!xml(&cloud, g["id"].as_str().unwrap())
        .await
        .contains("-data.qcow2"));
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
    done(
        &cloud,
        cloud
            .post(
                "/disks",
                json!({"name": "d", "size_gib": 1, "guest": "g",
                                   "limits": {"total_iops_sec": 500}}),
            )
            .await,
    )
    .await;
    let (_, d) = cloud.get("/disks/d").await;
    let path = d["path"].as_str().unwrap().to_string();
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
    let (_, d) = cloud.get("/disks/d").await;
    assert_eq!(d["limits"], json!({"total_iops_sec": 500}));

    // Detached: only the record changes; attaching renders them. (The test driver cannot
    // hot-plug: the disk is attached while the guest is off, then it starts.)
    done(&cloud, limits(json!({"total_iops_sec": 600})).await).await;
    done(
        &cloud,
        cloud.post("/disks/d/attach", json!({"guest": "g"})).await,
    )
    .await;
    assert_eq!(tune_of(&xml(&cloud, &gid).await, &path), Some((600, 0)));
    done(
        &cloud,
        cloud
            .post(&format!("/guests/{gid}/actions/start"), json!({}))
            .await,
    )
    .await;

    // Attached to a running guest: live, with the controller killed after dispatching
    // the node's part and after recording.
    for (fault, iops, bytes) in [
        ("dispatched:disk.set_limits:apply", 700, 0),
        ("after:disk.set_limits:record", 0, 1_048_576),
    ] {
        cloud.arm_fault(fault).await;
        let body = match iops {
            0 => json!({"total_bytes_sec": bytes}),
            n => json!({"total_iops_sec": n}),
        };
        let (s, v) = cloud
            .call(reqwest::Method::PUT, "/disks/d/limits", Some(body))
            .await;
        assert_eq!(s, 202, "{v}");
        cloud.restart_after_fault(fault).await;
        let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
        assert_eq!(op["state"], "succeeded", "{fault}: {op}");
        assert_eq!(
            tune_of(&xml(&cloud, &gid).await, &path),
            Some((iops, bytes)),
            "{fault}"
        );
        let (_, d) = cloud.get("/disks/d").await;
        assert!(d.get("busy_with").is_none(), "{fault}: {d}");
    }
    let (_, g) = cloud.get(&format!("/guests/{gid}")).await;
    assert_eq!(
        g["state"], "running",
        "changing limits never stops the guest"
    );

    // Stopped: the definition is rewritten; `{}` lifts every limit.
    done(
        &cloud,
        cloud
            .post(&format!("/guests/{gid}/actions/poweroff"), json!({}))
            .await,
    )
    .await;
    done(
        &cloud,
        cloud
            .call(reqwest::Method::PUT, "/disks/d/limits", Some(json!({})))
            .await,
    )
    .await;
    assert_eq!(tune_of(&xml(&cloud, &gid).await, &path), None);
    let (_, d) = cloud.get("/disks/d").await;
    assert!(d.get("limits").is_none(), "{d}");
    done(&cloud, cloud.post("/disks/d/detach", json!({})).await).await;
    done(&cloud, cloud.delete("/disks/d").await).await;
    cloud.delete_all_and_check().await;
}
