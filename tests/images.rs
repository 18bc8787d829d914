//! Template images over HTTP against a real controller: an upload streamed past the API's
//! body limit, checked and registered with its checksum, downloaded byte for byte; a
//! wrong checksum, a foreign format, a backing file outside the template directories and
//! bad parameters each refused with a 4xx that keeps nothing; another user's private
//! image is not there for them.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{require, Cloud};
use serde_json::json;
use sha2::{Digest, Sha256};

fn image(dir: &std::path::Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let path = dir.join(name);
    let mut a = vec!["create", "-q"];
    a.extend_from_slice(args);
    let p = path.display().to_string();
    a.push(&p);
    a.push("16M");
    assert!(Command::new("qemu-img")
        .args(&a)
        .status()
        .unwrap()
        .success());
    path
}

/// A new empty qcow2's bytes and their SHA-256.
fn qcow2_with_sum(dir: &std::path::Path, name: &str) -> (Vec<u8>, String) {
    let bytes = std::fs::read(image(dir, name, &["-f", "qcow2"])).unwrap();
    let sum = hex::encode(Sha256::digest(&bytes));
    (bytes, sum)
}

async fn upload(
    cloud: &Cloud,
    token: &str,
    name: &str,
    query: &str,
    bytes: Vec<u8>,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .put(cloud.url(&format!("/templates/{name}/image?{query}")))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or_default())
}

fn leftovers(cloud: &Cloud) -> Vec<String> {
    std::fs::read_dir(cloud.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        // An upload is kept as `<template id>.<format>`; `.<id>.upload` while it arrives.
        .filter(|n| {
            n.ends_with(".upload")
                || n.split('.')
                    .next()
                    .is_some_and(|stem| uuid::Uuid::parse_str(stem).is_ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_uploaded_checked_and_downloaded() {
    if !(require("redis-server") && require("qemu-img") && require("qemu-io")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let admin = cloud.token().to_string();
    let work = tempfile::tempdir().unwrap();

    // A qcow2 with 4 MiB of data: past the API's 1 MiB body limit.
    let good = image(work.path(), "good.qcow2", &["-f", "qcow2"]);
    assert!(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x61 0 4M",
            good.to_str().unwrap()
        ])
        .status()
        .unwrap()
        .success());
    let bytes = std::fs::read(&good).unwrap();
    assert!(bytes.len() > 4 << 20);
    let sum = hex::encode(Sha256::digest(&bytes));

    // Refusals first: nothing is kept by any of them.
    let vdi = std::fs::read(image(work.path(), "x.vdi", &["-f", "vdi"])).unwrap();
    let vdi_sum = hex::encode(Sha256::digest(&vdi));
    let outside = std::fs::read(image(
        work.path(),
        "backed.qcow2",
        &["-f", "qcow2", "-b", "/etc/hostname", "-F", "raw"],
    ))
    .unwrap();
    let outside_sum = hex::encode(Sha256::digest(&outside));
    let zeros = "0".repeat(64);
    for (name, query, body, want, says) in [
        (
            "up-bad-sum",
            format!("os_type=linux&sha256={zeros}"),
            bytes.clone(),
            422,
            "SHA-256",
        ),
        (
            "up-vdi",
            format!("os_type=linux&sha256={vdi_sum}"),
            vdi,
            422,
            "qcow2 or raw",
        ),
        (
            "up-backed",
            format!("os_type=linux&sha256={outside_sum}"),
            outside,
            422,
            "backing file",
        ),
        (
            "up-x",
            "os_type=linux&sha256=abc".into(),
            bytes.clone(),
            400,
            "64 hex",
        ),
        (
            "up-x",
            format!("os_type=plan9&sha256={sum}"),
            bytes.clone(),
            400,
            "",
        ),
        (
            "bad name",
            format!("os_type=linux&sha256={sum}"),
            bytes.clone(),
            400,
            "",
        ),
        (
            "tiny",
            format!("os_type=linux&sha256={sum}"),
            bytes.clone(),
            409,
            "exists",
        ),
    ] {
        if name == "tiny" {
            cloud.template("tiny").await;
        }
        let (s, v) = upload(&cloud, &admin, name, &query, body).await;
        assert_eq!(s, want, "{name} {query}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(says)),
            "{name}: {v}"
        );
        assert_eq!(leftovers(&cloud), Vec::<String>::new(), "{name} left files");
    }
    let (_, list) = cloud.get("/templates").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "only tiny: {list}");

    // The good one.
    let (s, t) = upload(
        &cloud,
        &admin,
        "up-good",
        &format!("os_type=linux&sha256={sum}"),
        bytes.clone(),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["sha256"], serde_json::json!(sum));
    assert_eq!(t["size_bytes"], serde_json::json!(bytes.len()));
    assert_eq!(t["public"], true);
    assert_eq!(std::fs::read(t["path"].as_str().unwrap()).unwrap(), bytes);
    let r = reqwest::Client::new()
        .get(cloud.url("/templates/up-good/image"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-checksum-sha256"].to_str().unwrap(), sum);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
    // It was followed on the event stream: bytes up to the whole, then the checks.
    let stages = upload_events(&cloud, "up-good").await;
    assert_eq!(stages.first().unwrap()["stage"], "receiving", "{stages:?}");
    let last_received = stages
        .iter()
        .rev()
        .find(|e| e["stage"] == "receiving")
        .unwrap();
    assert_eq!(last_received["percent"], 100, "{stages:?}");
    assert_eq!(last_received["total_bytes"], json!(bytes.len()));
    assert_eq!(last_received["requested_by"], "admin");
    let ends: Vec<&str> = stages
        .iter()
        .filter_map(|e| e["stage"].as_str())
        .filter(|s| *s != "receiving")
        .collect();
    assert_eq!(ends, ["checking", "registered"]);
    // A guest from it.
    let (_, op) = cloud
        .create(serde_json::json!({"name": "from-upload", "template": "up-good", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");

    // A user's upload is private: another user cannot download it.
    let ann = cloud.new_user("ann").await;
    let bob = cloud.new_user("bob").await;
    let (s, t) = upload(
        &cloud,
        &ann,
        "up-ann",
        &format!("os_type=linux&sha256={sum}"),
        bytes.clone(),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["public"], false);
    let status = |token: String| {
        let url = cloud.url("/templates/up-ann/image");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(bob).await, 404);
    assert_eq!(status(ann).await, 200);
    cloud.delete_all_and_check().await;
}

/// The backing file a qcow2 names.
fn backing_of(path: &str) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U", path])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["backing-filename"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A node on a host without the template directory: it fetches an uploaded image from the
/// controller once, checks its SHA-256, and makes every guest of that template on its
/// copy. Only an enrolled node's credential opens the route; a template whose image the
/// controller cannot read fails its guest's creation cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_template_directory_fetches_the_image_once() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    let admin = cloud.token().to_string();
    let work = tempfile::tempdir().unwrap();
    let (bytes, sum) = qcow2_with_sum(work.path(), "far.qcow2");
    let (s, t) = upload(
        &cloud,
        &admin,
        "far",
        &format!("os_type=linux&sha256={sum}"),
        bytes.clone(),
    )
    .await;
    assert_eq!(s, 201, "{t}");
    let tid = t["id"].as_str().unwrap().to_string();

    // Node "far" sees none of the controller's template directories.
    let far = cloud.dir().join("far");
    let base = cloud.url("").trim_end_matches("/api/v1").to_string();
    let env = [
        ("CORRAL_IMAGE_DIRS", far.join("templates")),
        ("CORRAL_STORAGE_DIR", far.join("disks")),
        ("CORRAL_TEMPLATE_CACHE", far.join("cache")),
    ]
    .map(|(k, v)| (k, v.display().to_string()));
    let mut extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    extra.push(("CORRAL_CONTROLLER_URL", &base));
    cloud.add_node("far", &extra).await;

    let created = cloud
        .create(
            json!({"name": "f", "template": "far", "cpus": 1, "memory_mib": 64,
                       "count": 2, "node": "far"}),
        )
        .await;
    for (_, op) in &created {
        let op = cloud.wait_op(op).await;
        assert_eq!(op["state"], "succeeded", "{op}");
    }
    let cached = far.join("cache").join(format!("{tid}.img"));
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        bytes,
        "the cached copy differs"
    );
    for (gid, _) in &created {
        let system = cloud.system_disk(gid).await;
        assert_eq!(backing_of(&system), cached.display().to_string());
    }
    let log = std::fs::read_to_string(cloud.dir().join("controller.log")).unwrap();
    assert_eq!(
        log.matches("a node fetches a template image").count(),
        1,
        "fetched more than once"
    );
    // The fetch was the creation's progress while it ran.
    let db = cloud.db().await;
    let (fetching,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM events WHERE kind = 'operation' \
         AND data LIKE '%fetching the template image%'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert!(fetching >= 1, "no progress while fetching");

    // The route: no user token, no wrong secret, no unknown node.
    let route = format!("{base}/node/v1/templates/{tid}/image");
    let secret = {
        let url = cloud.node_urls["far"].clone();
        reqwest::Url::parse(&url)
            .unwrap()
            .password()
            .unwrap()
            .to_string()
    };
    let http = reqwest::Client::new();
    for (node, bearer) in [
        ("far", admin.as_str()),
        ("far", "not-the-secret"),
        ("nobody", secret.as_str()),
    ] {
        let r = http
            .get(&route)
            .bearer_auth(bearer)
            .header("X-Corral-Node", node)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{node} with {bearer}");
    }
    let r = http.get(&route).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "a user token alone");
    let r = http
        .get(&route)
        .bearer_auth(&secret)
        .header("X-Corral-Node", "far")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-checksum-sha256"].to_str().unwrap(), sum);

    // An image the controller cannot read: the creation fails and unwinds.
    let gone = image(cloud.dir(), "gone.qcow2", &["-f", "qcow2"]);
    let (s, v) = cloud
        .post(
            "/templates",
            json!({"name": "gone", "path": gone.display().to_string(), "os_type": "linux"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    std::fs::remove_file(&gone).unwrap();
    let (_, op) = cloud
        .create(
            json!({"name": "g", "template": "gone", "cpus": 1, "memory_mib": 64,
                       "node": "far"}),
        )
        .await[0]
        .clone();
    let op = cloud.wait_op(&op).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert!(
        op["error"].as_str().unwrap().contains("cannot be read"),
        "{op}"
    );
    assert!(!far
        .join("cache")
        .join(format!("{}.img", v["id"].as_str().unwrap()))
        .exists());
    cloud.delete_all_and_check().await;
}

/// The `template.upload` events of template `name`, in order.
async fn upload_events(cloud: &Cloud, name: &str) -> Vec<serde_json::Value> {
    let db = cloud.db().await;
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT data FROM events WHERE kind = 'template.upload' AND subject = ? ORDER BY seq",
    )
    .bind(name)
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.iter()
        .map(|(d,)| serde_json::from_str(d).unwrap())
        .collect()
}

/// A controller killed while it receives an upload: the caller's request fails, and the
/// controller, started again, removes the partial file; the same upload then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_controller_crash_leaves_nothing() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    let admin = cloud.token().to_string();
    let work = tempfile::tempdir().unwrap();
    let (bytes, sum) = qcow2_with_sum(work.path(), "cut.qcow2");

    // The first half, then silence: the controller holds a partial file.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(bytes[..bytes.len() / 2].to_vec()))
        .unwrap();
    let sending = tokio::spawn(
        reqwest::Client::new()
            .put(cloud.url(&format!("/templates/cut/image?os_type=linux&sha256={sum}")))
            .bearer_auth(&admin)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(rx))
            .send(),
    );
    for _ in 0..100 {
        if !leftovers(&cloud).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(leftovers(&cloud).len(), 1, "no partial upload to cut");
    cloud.controller.take().unwrap().kill9();
    assert!(
        sending.await.unwrap().is_err(),
        "the cut upload was answered"
    );
    drop(tx);
    cloud.start_controller(&[]).await;
    assert_eq!(
        leftovers(&cloud),
        Vec::<String>::new(),
        "the partial upload stayed"
    );
    let (s, _) = cloud.get("/templates/cut").await;
    assert_eq!(s, 404, "a cut upload registered a template");

    // Sent again, whole: registered.
    let (s, t) = upload(
        &cloud,
        &admin,
        "cut",
        &format!("os_type=linux&sha256={sum}"),
        bytes,
    )
    .await;
    assert_eq!(s, 201, "{t}");
    cloud.delete_all_and_check().await;
}

/// A template registered by path gets its checksum and size in the background, and the
/// template list is a downloads list: each entry's `download_url` streams the image with
/// that checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_list_is_a_downloads_list_with_checksums() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let t = cloud.template("by-path").await;
    let path = t["path"].as_str().unwrap().to_string();
    let bytes = std::fs::read(&path).unwrap();
    let sum = hex::encode(Sha256::digest(&bytes));
    let mut listed = json!(null);
    for _ in 0..100 {
        let (_, list) = cloud.get("/templates").await;
        listed = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "by-path")
            .cloned()
            .unwrap();
        if listed.get("sha256").is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(listed["sha256"], json!(sum), "{listed}");
    assert_eq!(listed["size_bytes"], json!(bytes.len()));
    let url = listed["download_url"].as_str().unwrap();
    let r = reqwest::Client::new()
        .get(format!(
            "{}{url}",
            cloud.url("").trim_end_matches("/api/v1")
        ))
        .bearer_auth(cloud.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-checksum-sha256"].to_str().unwrap(), sum);
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
    cloud.delete_all_and_check().await;
}
