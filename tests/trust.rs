//! Trust between users, each rule tested by making the attack, as another user would,
//! against a real controller and node (Redis, libvirt's test driver):
//! * images: a path names a file, and a file may be someone else's. Registering by path is
//!   an administrator's act; images corral writes (uploads, guests made templates) are
//!   named by the template's id, never by a name the caller chose; an upload whose backing
//!   file is not a template the uploader may use is refused, so a private image cannot be
//!   reached through another's chain.
//! * modes: another local user reads nothing corral keeps (0700 directories, 0600 files,
//!   seeds with password hashes and SSH keys above all); an older installation's wider
//!   modes are narrowed at start, and the change is logged.
//! * passwords: a token stolen before a password change stops working after it, whether
//!   the user changed it or an administrator did; the session that changed it stays.
//! * ownership is by user id: a user deleted and another created with the same name
//!   inherits nothing (operations, scripts); deleting a user who owns anything is refused.
//! * boot scripts are their author's (and operators') unless published: another user can
//!   neither read, list, change nor queue a private one.
//! * names: one rule for every kind of object, unique across the cloud; a lookup by name
//!   lands on the caller's object or on nothing, and a taken name or address is said to
//!   be taken without saying whose. A user learns no other user's guests from a pool's
//!   addresses, and no node ids by placing a disk.
//! * growth: anonymous writes add no audit rows; a user's uploads are bounded by a
//!   per-upload cap and a quota a site sets (the login throttle's bounds are unit tests).
//! * secrets at rest: the SMTP password is sealed in the database (`tests/recovery.rs`);
//!   a node job's arguments (SSH keys, password hashes) leave Redis once the job ends; a
//!   boot script's declared secret parameters are sealed, shown as `***` and deleted when
//!   the job ends or is withdrawn.
//! * terminals: a value someone else put on the server (a login name in the audit trail)
//!   is printed by the CLI with its control characters escaped, never sent raw.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{require, Cloud};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn parts() -> bool {
    require("redis-server") && require("qemu-img")
}

/// A new qcow2 at `path` (16 MiB), with `args` (a backing file) added to `qemu-img create`.
fn qcow2(path: &Path, args: &[&str]) -> (Vec<u8>, String) {
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(args)
        .arg(path)
        .arg("16M")
        .status()
        .unwrap()
        .success();
    assert!(ok, "qemu-img create {args:?}");
    let bytes = std::fs::read(path).unwrap();
    let sum = hex::encode(Sha256::digest(&bytes));
    (bytes, sum)
}

async fn upload(cloud: &Cloud, token: &str, name: &str, bytes: Vec<u8>, sum: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(cloud.url(&format!(
            "/templates/{name}/image?os_type=linux&sha256={sum}"
        )))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or_default())
}

/// The image files in the controller's template directory (the test's directory).
fn images(cloud: &Cloud) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cloud.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".qcow2") || n.ends_with(".raw") || n.ends_with(".upload"))
        .collect();
    v.sort();
    v
}

/// Ann's private image, and everything Bob might try to take it with: its path registered
/// as his own template, an upload backed by it, a download. Each is refused and leaves
/// nothing; an upload backed by a public template is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_take_another_users_private_image() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let ann = cloud.new_user("ann").await;
    let bob = cloud.new_user("bob").await;
    let work = tempfile::tempdir().unwrap();
    let tiny = cloud.template("tiny").await;

    // Ann's upload is kept under a name she did not choose: the template's id.
    let (bytes, sum) = qcow2(&work.path().join("secret.qcow2"), &[]);
    let (s, secret) = upload(&cloud, &ann, "ann-secret", bytes, &sum).await;
    assert_eq!(s, 201, "{secret}");
    assert_eq!(secret["public"], false, "{secret}");
    let path = secret["path"].as_str().unwrap().to_string();
    assert_eq!(
        Path::new(&path).file_name().unwrap().to_str().unwrap(),
        format!("{}.qcow2", secret["id"].as_str().unwrap()),
        "{secret}"
    );
    assert!(!path.contains("ann-secret"), "{path}");
    let before = images(&cloud);

    // 1. Her path, registered as Bob's template (he learnt or guessed it): 403, by role.
    for public in [false, true] {
        let (s, v) = cloud
            .call_as(
                &bob,
                Method::POST,
                "/templates",
                Some(json!({"name": "mine", "path": path, "os_type": "linux", "public": public})),
            )
            .await;
        assert_eq!(s, 403, "{v}");
        assert!(
            v["message"].as_str().unwrap().contains("administrator"),
            "{v}"
        );
    }
    // 2. An upload whose backing file is her image: 422, nothing kept.
    let (bytes, sum) = qcow2(
        &work.path().join("thief.qcow2"),
        &["-b", &path, "-F", "qcow2"],
    );
    let (s, v) = upload(&cloud, &bob, "thief", bytes, &sum).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("backing file"),
        "{v}"
    );
    // The same by a relative backing name, resolved next to the upload.
    let relative = Path::new(&path).file_name().unwrap().to_str().unwrap();
    let (bytes, sum) = qcow2(
        &work.path().join("thief-rel.qcow2"),
        &["-u", "-b", relative, "-F", "qcow2"],
    );
    let (s, v) = upload(&cloud, &bob, "thief-rel", bytes, &sum).await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(images(&cloud), before, "a refused upload left a file");
    // 3. Her template by name or id, and its image: 404, as if it did not exist.
    for p in [
        "/templates/ann-secret".to_string(),
        format!("/templates/{}", secret["id"].as_str().unwrap()),
        "/templates/ann-secret/image".into(),
    ] {
        let (s, v) = cloud.call_as(&bob, Method::GET, &p, None).await;
        assert_eq!(s, 404, "{p}: {v}");
    }
    let (_, list) = cloud.call_as(&bob, Method::GET, "/templates", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["tiny"], "{list}");

    // A backing file that is a public template is his to use.
    let (bytes, sum) = qcow2(
        &work.path().join("layer.qcow2"),
        &["-b", tiny["path"].as_str().unwrap(), "-F", "qcow2"],
    );
    let (s, v) = upload(&cloud, &bob, "bob-layer", bytes, &sum).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["public"], false, "{v}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Whether the unprivileged user `nobody` can read `path` (the attack itself).
fn nobody_reads(path: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "nobody", "--", "head", "-c", "1"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_reads_nothing_corral_keeps() {
    if !(parts() && require("runuser")) {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.20").await;
    let (gid, op) = cloud
        .create(
            json!({"name": "s", "template": "tiny", "cpus": 1, "memory_mib": 64,
                       "pool": "lan", "password": "s3cret-pw"}),
        )
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let disk = std::path::PathBuf::from(cloud.system_disk(&gid).await);
    let seed = std::fs::read_dir(cloud.images())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "iso"))
        .expect("the guest's seed");
    let data = cloud.dir().to_path_buf();
    let db = data.join("corral.db");
    let images = cloud.images();
    let files = [&disk, &seed, &db];
    let check = |when: &str| {
        assert_eq!(mode(&data), 0o700, "{when}: the data directory");
        assert_eq!(mode(&images), 0o700, "{when}: the disk-image directory");
        for f in files {
            assert_eq!(mode(f), 0o600, "{when}: {}", f.display());
        }
    };
    check("new");
    // The attack: another user on the host, the directory opened up as old releases left it.
    set_mode(&data, 0o755);
    set_mode(&images, 0o755);
    assert!(
        !nobody_reads(&seed),
        "mode 0600 alone keeps the seed from nobody"
    );

    // An older installation: everything as wide as it used to be, then a restart.
    for f in files {
        set_mode(f, 0o644);
    }
    assert!(
        nobody_reads(&seed),
        "the setup of the old modes did not take"
    );
    cloud.controller.as_mut().unwrap().kill9();
    cloud.node.as_mut().unwrap().kill9();
    cloud.start_controller(&[]).await;
    cloud.start_node(&[]);
    cloud.wait_node_online().await;
    check("narrowed at start");
    assert!(!nobody_reads(&seed));
    assert!(!nobody_reads(&db));
    let log = cloud.log_tail(400);
    for f in [&data, &seed, &db] {
        assert!(
            log.lines()
                .any(|l| l.contains("narrowed the mode") && l.contains(&*f.to_string_lossy())),
            "no log line for {}:\n{log}",
            f.display()
        );
    }
    cloud.delete_all_and_check().await;
}

async fn status(cloud: &Cloud, token: &str, path: &str) -> u16 {
    cloud.call_as(token, Method::GET, path, None).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_the_other_sessions() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let ann = cloud.new_user("ann").await;
    // The thief's copy: a named token of Ann's, made with her session.
    let (s, v) = cloud
        .call_as(
            &ann,
            Method::POST,
            "/tokens",
            Some(json!({"name": "laptop"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let stolen = v["token"].as_str().unwrap().to_string();
    assert_eq!(status(&cloud, &stolen, "/about").await, 200);

    // Ann changes her password: the stolen token dies, her session lives.
    let (s, v) = cloud
        .call_as(
            &ann,
            Method::POST,
            "/users/me/password",
            Some(json!({"current": "ann-password-1", "new": "ann-password-2"})),
        )
        .await;
    assert!(s == 200 || s == 204, "{s} {v}");
    assert_eq!(status(&cloud, &stolen, "/about").await, 401);
    assert_eq!(status(&cloud, &ann, "/about").await, 200);

    // An administrator sets a new one: every session of hers ends.
    let (_, users) = cloud.get("/users").await;
    let id = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ann")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = cloud
        .call(
            Method::PATCH,
            &format!("/users/{id}"),
            Some(json!({"password": "ann-password-3"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(status(&cloud, &ann, "/about").await, 401);
    assert_eq!(status(&cloud, cloud.token(), "/about").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_no_ones_terminal_escapes() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    // Anyone may try a login: its name lands in the audit trail an administrator reads.
    let evil = "x\u{1b}]0;pwned\u{7}\u{1b}[2J";
    let r = reqwest::Client::new()
        .post(cloud.url("/auth/login"))
        .json(&json!({"username": evil, "password": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let out = Command::new(common::bin())
        .args(["audit", "--limit", "20"])
        .env("CORRAL_URL", cloud.url(""))
        .env("CORRAL_TOKEN", cloud.token())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("x\\x1b]0;pwned\\x07"), "{text}");
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
}

/// Creates guest `name` (template `tiny`, pool `lan` when the cloud has one) as the holder
/// of `token`, waits for it, and returns its (guest id, operation id).
async fn create_as(cloud: &Cloud, token: &str, name: &str) -> (String, String) {
    let (_, pools) = cloud.get("/ip-pools").await;
    let mut body = json!({"name": name, "template": "tiny", "cpus": 1, "memory_mib": 64});
    if pools.as_array().is_some_and(|p| !p.is_empty()) {
        body["pool"] = json!("lan");
    }
    let (s, v) = cloud
        .call_as(token, Method::POST, "/guests", Some(body))
        .await;
    assert_eq!(s, 202, "{v}");
    let op = v["operations"][0]["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let gid = v["operations"][0]["guest_id"].as_str().unwrap().to_string();
    let done = cloud.wait_op(&op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    (gid, op)
}

async fn user_id(cloud: &Cloud, name: &str) -> String {
    let (_, users) = cloud.get("/users").await;
    users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_with_an_old_name_inherits_nothing_and_scripts_are_private() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let ann = cloud.new_user("ann").await;
    let bob = cloud.new_user("bob").await;
    let (gid, ann_op) = create_as(&cloud, &ann, "ann-1").await;
    let src = "// Ann's own.\nfn actions(guest, params) { [exec(\"true\")] }";
    let (s, v) = cloud
        .call_as(
            &ann,
            Method::POST,
            "/boot-scripts",
            Some(json!({"name": "ann-job", "source": src})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["public"], false, "{v}");

    // Bob: her script is not there for him, whatever he tries.
    let (s, v) = cloud
        .call_as(&bob, Method::GET, "/boot-scripts/ann-job", None)
        .await;
    assert_eq!(s, 404, "{v}");
    let (_, list) = cloud
        .call_as(&bob, Method::GET, "/boot-scripts", None)
        .await;
    assert!(!list.to_string().contains("ann-job"), "{list}");
    let (s, v) = cloud
        .call_as(
            &bob,
            Method::PUT,
            "/boot-scripts/ann-job",
            Some(json!({"source": src})),
        )
        .await;
    assert_eq!(s, 404, "{v}");
    create_as(&cloud, &bob, "bob-1").await;
    let (s, v) = cloud
        .call_as(
            &bob,
            Method::POST,
            "/boot-jobs",
            Some(json!({"guests": ["bob-1"], "script": "ann-job"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    // Published, it is his to read and queue; still not his to change.
    let (s, v) = cloud
        .call_as(
            &ann,
            Method::PUT,
            "/boot-scripts/ann-job",
            Some(json!({"source": src, "public": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = cloud
        .call_as(&bob, Method::GET, "/boot-scripts/ann-job", None)
        .await;
    assert_eq!(s, 200);
    let (s, v) = cloud
        .call_as(
            &bob,
            Method::PUT,
            "/boot-scripts/ann-job",
            Some(json!({"source": src})),
        )
        .await;
    assert_eq!(s, 403, "{v}");

    // Deleting Ann is refused while she owns anything.
    let ann_id = user_id(&cloud, "ann").await;
    let (s, v) = cloud.delete(&format!("/users/{ann_id}")).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["details"]["guests"], 1, "{v}");
    assert_eq!(v["details"]["scripts"], 1, "{v}");
    let (_, d) = cloud.delete(&format!("/guests/{gid}")).await;
    assert_eq!(
        cloud.wait_op(d["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    let (s, v) = cloud.delete("/boot-scripts/ann-job").await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = cloud.delete(&format!("/users/{ann_id}")).await;
    assert!(s == 200 || s == 204, "{s} {v}");

    // A new Ann: none of the old one's operations are hers.
    let ann2 = cloud.new_user("ann").await;
    assert_ne!(user_id(&cloud, "ann").await, ann_id);
    let (s, v) = cloud
        .call_as(&ann2, Method::GET, &format!("/operations/{ann_op}"), None)
        .await;
    assert_eq!(s, 404, "{v}");
    let (_, ops) = cloud.call_as(&ann2, Method::GET, "/operations", None).await;
    assert_eq!(ops, json!([]), "{ops}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_addresses_of_others_are_only_ever_taken() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let pool = cloud.pool("lan", "192.0.2.10", "192.0.2.30").await;
    let pool_id = pool["id"].as_str().unwrap().to_string();
    let ann = cloud.new_user("ann").await;
    let bob = cloud.new_user("bob").await;
    let guest = |name: &str| json!({"name": name, "template": "tiny", "cpus": 1, "memory_mib": 64, "pool": "lan"});
    create_as(&cloud, &ann, "web-7").await;
    create_as(&cloud, &bob, "bob-1").await;
    let (_, g) = cloud
        .call_as(&ann, Method::GET, "/guests/web-7", None)
        .await;
    let ann_ip = g["ip"].as_str().unwrap().to_string();
    let (s, v) = cloud
        .call_as(
            &ann,
            Method::POST,
            "/disks",
            Some(json!({"name": "data-1", "size_gib": 1, "guest": "web-7"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;

    // Bob's attempts: each name is "taken", never "ann's", and nothing is created.
    let taken = |v: &Value, name: &str| {
        let m = v["message"].as_str().unwrap_or("");
        assert!(m.contains(&format!("{name} is taken")), "{v}");
        assert!(
            !m.contains("ann") && !v.to_string().contains("guest_id"),
            "{v}"
        );
    };
    let (s, v) = cloud
        .call_as(&bob, Method::POST, "/guests", Some(guest("web-7")))
        .await;
    assert_eq!(s, 409, "{v}");
    taken(&v, "web-7");
    let (s, v) = cloud
        .call_as(
            &bob,
            Method::POST,
            "/disks",
            Some(json!({"name": "data-1", "size_gib": 1, "guest": "bob-1"})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    taken(&v, "data-1");
    let (s, v) = cloud
        .call_as(
            &bob,
            Method::POST,
            "/guests/bob-1/change-ip",
            Some(json!({"ip": ann_ip})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(
        !v.to_string().contains("web-7") && !v.to_string().contains("guest_id"),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("taken"), "{v}");
    // By name, Ann's disk is not there for Bob, and is there for Ann.
    let (s, _) = cloud
        .call_as(&bob, Method::GET, "/disks/data-1", None)
        .await;
    assert_eq!(s, 404);
    let (s, d) = cloud
        .call_as(&ann, Method::GET, "/disks/data-1", None)
        .await;
    assert_eq!(s, 200, "{d}");
    // The pool's addresses: Bob sees his own guest's, and Ann's only as allocated.
    let (s, list) = cloud
        .call_as(
            &bob,
            Method::GET,
            &format!("/ip-pools/{pool_id}/addresses?state=allocated"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{list}");
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list}");
    let ann_row = rows.iter().find(|a| a["ip"] == json!(ann_ip)).unwrap();
    assert!(ann_row.get("guest_id").is_none(), "{list}");
    assert!(
        rows.iter().any(|a| a["guest_id"].is_string()),
        "his own: {list}"
    );
    // A node of his choosing: refused by role, whether or not it exists.
    let node = cloud.node_id.clone();
    for n in [node.as_str(), "no-such-node"] {
        let (s, v) = cloud
            .call_as(
                &bob,
                Method::POST,
                "/disks",
                Some(json!({"name": "d", "size_gib": 1, "node": n})),
            )
            .await;
        assert_eq!(s, 403, "{n}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_grows_the_controller_without_bound() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let ann = cloud.new_user("ann").await;
    // Anonymous writes: no audit rows, however many.
    let (_, before) = cloud.get("/audit?limit=1000").await;
    for _ in 0..50 {
        let r = reqwest::Client::new()
            .post(cloud.url("/tokens"))
            .bearer_auth("not-a-token")
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    let (_, after) = cloud.get("/audit?limit=1000").await;
    assert_eq!(after, before, "anonymous writes were recorded");
    // Uploads: a 1 MiB quota takes one small image, not a second of over a MiB.
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/settings",
            Some(json!({"uploads": {"max_upload_mib": 4, "user_quota_mib": 1}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let work = tempfile::tempdir().unwrap();
    let (bytes, sum) = qcow2(&work.path().join("small.qcow2"), &[]);
    let (s, v) = upload(&cloud, &ann, "small", bytes, &sum).await;
    assert_eq!(s, 201, "{v}");
    let big = vec![0u8; 1 << 20];
    let big_sum = hex::encode(Sha256::digest(&big));
    let (s, v) = upload(&cloud, &ann, "big", big.clone(), &big_sum).await;
    assert_eq!(s, 413, "{v}");
    // The per-upload cap binds operators and administrators too.
    let huge = vec![0u8; 5 << 20];
    let huge_sum = hex::encode(Sha256::digest(&huge));
    let (s, v) = upload(&cloud, cloud.token(), "huge", huge, &huge_sum).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(
        images(&cloud)
            .iter()
            .filter(|n| n.ends_with(".upload"))
            .count(),
        0,
        "a refused upload left a file"
    );
}

/// Every value of `hash` in Redis, as text.
async fn redis_hash_values(url: &str, key: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    all.into_iter()
        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
        .collect()
}

/// Whether the controller's database files (with the write-ahead log) hold `text`.
fn database_holds(cloud: &Cloud, text: &str) -> bool {
    ["corral.db", "corral.db-wal"].iter().any(|f| {
        std::fs::read(cloud.dir().join(f))
            .is_ok_and(|b| b.windows(text.len()).any(|w| w == text.as_bytes()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_leave_redis_and_the_database_once_their_jobs_end() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    // A guest's SSH key and password hash travel in its create's node job.
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAKeptOutOfRedis test";
    let ids = cloud
        .create(
            json!({"name": "sec", "template": "tiny", "cpus": 1, "memory_mib": 64,
            "password": "pw-12345678", "ssh_keys": [key]}),
        )
        .await;
    let (gid, op) = ids[0].clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    // Once the jobs ended, their data leaves the node's queue (swept every 2 s).
    let data = format!("corral:node:{}:data", cloud.node_id);
    let mut left = Vec::new();
    for _ in 0..150 {
        left = redis_hash_values(&cloud.redis.url(), &data)
            .await
            .into_iter()
            .filter(|v| v.contains("KeptOutOfRedis") || v.contains("$6$"))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        left.is_empty(),
        "ended jobs still hold secrets in {data}: {left:?}"
    );

    // A script says which parameters are secret; a name corral would not have guessed.
    let src = "fn secrets() { [\"pwd\"] }\n\
               fn actions(guest, params) { [write_file(\"/etc/app.conf\", params.pwd + params.note)] }";
    let (s, v) = cloud
        .post("/boot-scripts", json!({"name": "vault", "source": src}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = cloud
        .post(&format!("/guests/{gid}/actions/poweroff"), json!(null))
        .await;
    assert_eq!(s, 202, "{v}");
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    let pwd = "PwdMarker-8c1f2e";
    let (s, v) = cloud
        .post(
            "/boot-jobs",
            json!({"guests": [gid], "script": "vault",
                   "params": {"pwd": pwd, "note": "visible-note"}}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let job = v["jobs"][0]["id"].as_str().unwrap().to_string();
    let (_, shown) = cloud.get(&format!("/boot-jobs/{job}")).await;
    assert_eq!(shown["params"]["pwd"], json!("***"), "{shown}");
    assert_eq!(shown["params"]["note"], json!("visible-note"), "{shown}");
    assert!(
        !database_holds(&cloud, pwd),
        "the database holds the secret in clear"
    );
    let sealed = || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT sealed_params FROM boot_jobs WHERE id = ?")
            .bind(&job)
            .fetch_one(&cloud.db().await)
            .await
            .unwrap()
    };
    assert!(sealed().await.is_some_and(|s| s.starts_with("sealed:v1:")));
    // Withdrawn, the job keeps no secret, even sealed.
    let (s, _) = cloud.delete(&format!("/boot-jobs/{job}")).await;
    assert_eq!(s, 204);
    assert_eq!(sealed().await, None);
    // A declaration that names no parameters is refused when the script is saved.
    let (s, v) = cloud
        .post(
            "/boot-scripts",
            json!({"name": "bad-secrets",
                   "source": "fn secrets() { 42 }\nfn actions(guest, params) { [] }"}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("secrets()"), "{v}");
}
