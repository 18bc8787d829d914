//! Logging in and tokens against a real corral (Redis + libvirt test driver): failed
//! logins lock a user name for the address they came from, bodies over the limit are refused before anything reads them,
//! named tokens expire and are revoked, and `corral up`'s admin token survives restarts.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::host::Bridge;
use common::{require, Cloud};
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server")
}

async fn login(cloud: &Cloud, user: &str, password: &str) -> (u16, Value) {
    login_from(cloud, "127.0.0.1", user, password).await
}

/// A login from another loopback address (all of 127/8 reaches the server).
async fn login_from(cloud: &Cloud, from: &str, user: &str, password: &str) -> (u16, Value) {
    let r = reqwest::Client::builder()
        .local_address(Some(from.parse().unwrap()))
        .build()
        .unwrap()
        .post(cloud.url("/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn get_with(cloud: &Cloud, token: &str, path: &str) -> u16 {
    reqwest::Client::new()
        .get(cloud.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_the_name_and_tokens_expire_and_are_revoked() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;

    // A login token says when it expires: 12 hours by default.
    let (s, v) = login(&cloud, "admin", "test-admin-pw").await;
    assert_eq!(s, 200, "{v}");
    let expires = humantime::parse_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((11 * 3600..=12 * 3600).contains(&left), "{left}");

    // Five wrong passwords from one address lock the name for that address: even the
    // right one is refused there, with a 429 that says for how long. An unknown name
    // answers like a wrong password.
    let attacker = "127.0.0.2";
    for _ in 0..5 {
        let (s, v) = login_from(&cloud, attacker, "admin", "wrong").await;
        assert_eq!(s, 401, "{v}");
    }
    let (s, v) = login_from(&cloud, attacker, "admin", "test-admin-pw").await;
    assert_eq!(s, 429, "{v}");
    assert!(v["message"].as_str().unwrap().contains("locked"), "{v}");
    assert!(
        v["details"]["retry_after_secs"].as_u64().unwrap() > 0,
        "{v}"
    );
    // The administrator at another address is not locked out (no denial of service by
    // name), and a clean address's failure is its own.
    let (s, v) = login(&cloud, "admin", "test-admin-pw").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = login_from(&cloud, "127.0.0.3", "admin", "wrong").await;
    assert_eq!(s, 401, "{v}");
    // A name far beyond the API's limit is refused before anything counts it.
    let (s, v) = login_from(&cloud, "127.0.0.4", &"a".repeat(100_000), "x").await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = login(&cloud, "nobody", "x").await;
    assert_eq!(s, 401);
    // Tokens issued before keep working: the lock is on logging in.
    assert_eq!(get_with(&cloud, cloud.token(), "/about").await, 200);

    // A named token that expires in 2 s: listed without its value, then refused.
    let (s, v) = cloud
        .post("/tokens", json!({"name": "ci", "expires_in_secs": 2}))
        .await;
    assert_eq!(s, 201, "{v}");
    let short = v["token"].as_str().unwrap().to_string();
    assert_eq!(get_with(&cloud, &short, "/about").await, 200);
    let (_, list) = cloud.get("/tokens").await;
    let listed: Vec<&Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "ci")
        .collect();
    assert_eq!(listed.len(), 1, "{list}");
    assert!(
        listed[0].get("token").is_none(),
        "a token's value was listed: {list}"
    );
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|t| t["current"] == true),
        "{list}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get_with(&cloud, &short, "/about").await, 401);

    // Revoked by id: refused at once; someone else's id (or none) is a 404.
    let (_, v) = cloud.post("/tokens", json!({"name": "deploy"})).await;
    let (deploy, id) = (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    );
    // Asked for without an expiry, a token gets the site's maximum: 90 days.
    let expires = humantime::parse_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    let days = expires
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs()
        / 86_400;
    assert_eq!(days, 89, "{v}");
    assert_eq!(get_with(&cloud, &deploy, "/about").await, 200);
    let (s, _) = cloud.delete(&format!("/tokens/{id}")).await;
    assert_eq!(s, 204);
    assert_eq!(get_with(&cloud, &deploy, "/about").await, 401);
    let (s, _) = cloud.delete(&format!("/tokens/{id}")).await;
    assert_eq!(s, 404);

    // Logging out revokes the token the request carries.
    let (_, v) = cloud.post("/tokens", json!({"name": "session"})).await;
    let session = v["token"].as_str().unwrap().to_string();
    let s = reqwest::Client::new()
        .post(cloud.url("/auth/logout"))
        .bearer_auth(&session)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(s, 204);
    assert_eq!(get_with(&cloud, &session, "/about").await, 401);

    // Beyond the site's limit: 422, naming it. A site that allows eternal tokens gets them.
    let (s, v) = cloud
        .post(
            "/tokens",
            json!({"name": "long", "expires_in_secs": 91 * 86_400}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("90 days"), "{v}");
    let (s, v) = cloud
        .call(
            reqwest::Method::PATCH,
            "/settings",
            Some(json!({"tokens": {"max_days": 366, "allow_no_expiry": true}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = cloud.post("/tokens", json!({"name": "eternal"})).await;
    assert_eq!(s, 201, "{v}");
    assert!(v.get("expires_at").is_none(), "{v}");
    let (s, v) = cloud
        .post(
            "/tokens",
            json!({"name": "long", "expires_in_secs": 91 * 86_400}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // Bad token requests: a blank name, an expiry out of range.
    for bad in [
        json!({"name": " "}),
        json!({"name": "x", "expires_in_secs": 0}),
        json!({"name": "x", "expires_in_secs": 99_999_999}),
    ] {
        let (s, v) = cloud.post("/tokens", bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_and_changes_nothing() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let big = "// padding\n".repeat(200_000); // 2.2 MB
    let source = format!("{big}fn actions(guest, params) {{ [] }}");
    let (s, v) = cloud
        .post("/boot-scripts", json!({"name": "huge", "source": source}))
        .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["code"], "payload_too_large", "{v}");

    // The same without a Content-Length (a chunked body): read only up to the limit.
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(b"{\"name\": \"huge\", \"source\": \"".to_vec())];
    chunks.extend((0..2000).map(|_| Ok(vec![b'a'; 1024])));
    chunks.push(Ok(b"\"}".to_vec()));
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let r = reqwest::Client::new()
        .post(cloud.url("/boot-scripts"))
        .bearer_auth(cloud.token())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    let (s, _) = cloud.get("/boot-scripts/huge").await;
    assert_eq!(s, 404, "a refused body created the script");

    // A body of the wrong shape: 400 naming the field for a known caller, and 401 first
    // for an unknown one (nothing about the body is said to a caller without a token).
    let (s, v) = cloud
        .call(
            reqwest::Method::PATCH,
            "/guests/anything",
            Some(json!({"hostname": false})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("`hostname` must be a string"),
        "{v}"
    );
    for token in [None, Some("crl_not-a-token")] {
        let mut r = reqwest::Client::new()
            .patch(cloud.url("/guests/anything"))
            .json(&json!({"hostname": false}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        assert_eq!(r.send().await.unwrap().status().as_u16(), 401, "{token:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_file_is_written_once_and_private() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    let file = cloud.dir().join("admin.token");
    let first = std::fs::read_to_string(&file).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600, "admin.token");
    assert_eq!(mode(&cloud.dir().join("corral.db")), 0o600, "the database");
    assert_eq!(get_with(&cloud, first.trim(), "/about").await, 200);

    // A restart keeps the file and its token: no token is minted per start.
    cloud.controller.take().unwrap().kill9();
    cloud.start_controller(&[]).await;
    let second = std::fs::read_to_string(&file).unwrap();
    assert_eq!(first, second, "the admin token changed at a restart");
    let (_, tokens) = cloud.get("/tokens").await;
    let admin_tokens = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "admin.token")
        .count();
    assert_eq!(admin_tokens, 1, "{tokens}");

    // A revoked admin token is replaced at the next start.
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "admin.token")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, _) = cloud.delete(&format!("/tokens/{id}")).await;
    assert_eq!(s, 204);
    cloud.controller.take().unwrap().kill9();
    cloud.start_controller(&[]).await;
    let third = std::fs::read_to_string(&file).unwrap();
    assert_ne!(third, first);
    assert_eq!(get_with(&cloud, third.trim(), "/about").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_holds_a_bounded_number_of_pending_boot_jobs() {
    if !(parts() && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let ops = cloud
        .create(json!({"name": "q", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await;
    assert_eq!(cloud.wait_op(&ops[0].1).await["state"], "succeeded");
    let (s, v) = cloud
        .post(
            "/boot-scripts",
            json!({"name": "noop", "source": "fn actions(guest, params) { [] }"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    for i in 0..64 {
        let (s, v) = cloud
            .post("/boot-jobs", json!({"guests": ["q"], "script": "noop"}))
            .await;
        assert_eq!(s, 202, "job {i}: {v}");
    }
    let (s, v) = cloud
        .post("/boot-jobs", json!({"guests": ["q"], "script": "noop"}))
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("64 pending"), "{v}");
    let (_, jobs) = cloud
        .get("/guests/q/boot-jobs?state=pending&limit=1000")
        .await;
    assert_eq!(
        jobs.as_array().unwrap().len(),
        64,
        "the refused job was queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_boot_job_keeps_the_script_it_was_queued_with() {
    use sha2::Digest;
    if !(parts() && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let ops = cloud
        .create(json!({"name": "pin", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await;
    assert_eq!(cloud.wait_op(&ops[0].1).await["state"], "succeeded");
    let v1 = "fn actions(guest, params) { [write_file(\"/etc/v1\", \"1\")] }";
    let v2 = "fn actions(guest, params) { [exec(\"rm -rf /srv\")] }";
    let sha = |s: &str| hex::encode(sha2::Sha256::digest(s.as_bytes()));
    let (s, v) = cloud
        .post("/boot-scripts", json!({"name": "pinned", "source": v1}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (_, q) = cloud
        .post("/boot-jobs", json!({"guests": ["pin"], "script": "pinned"}))
        .await;
    let first = q["jobs"][0]["id"].as_str().unwrap().to_string();
    // The author changes the script after the job was queued.
    let (s, v) = cloud
        .call(
            reqwest::Method::PUT,
            "/boot-scripts/pinned",
            Some(json!({"source": v2})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, q) = cloud
        .post("/boot-jobs", json!({"guests": ["pin"], "script": "pinned"}))
        .await;
    let second = q["jobs"][0]["id"].as_str().unwrap().to_string();
    let (_, j1) = cloud.get(&format!("/boot-jobs/{first}")).await;
    let (_, j2) = cloud.get(&format!("/boot-jobs/{second}")).await;
    assert_eq!(j1["script_sha256"], json!(sha(v1)), "{j1}");
    assert_eq!(j2["script_sha256"], json!(sha(v2)), "{j2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_comes_only_from_the_image_directories() {
    if !(parts() && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    // Another guest's disk, or any host file: refused, naming the directories.
    for path in [
        "/etc/shadow".to_string(),
        cloud
            .images()
            .join("some-guest.qcow2")
            .display()
            .to_string(),
        format!("{}/../../etc/passwd", cloud.dir().display()),
    ] {
        let (s, v) = cloud
            .post(
                "/templates",
                json!({"name": "stolen", "path": path, "os_type": "linux"}),
            )
            .await;
        assert!(s == 422 || s == 400, "{path}: {s} {v}");
        if s == 422 {
            let m = v["message"].as_str().unwrap();
            assert!(
                m.contains("image directories") || m.contains("disk-image directory"),
                "{v}"
            );
        }
    }
    let (s, _) = cloud.get("/templates/stolen").await;
    assert_eq!(s, 404, "a refused template was registered");
    // Inside one: accepted.
    cloud.template("fine").await;
}

/// A pool may name any bridge, but a node puts guests only on the bridges it allows
/// (`allowed_bridges`, by default its guest bridge): a guest on the management bridge is
/// refused by the node itself, typed as `bridge_not_allowed`, and its failed creation
/// leaves nothing behind.
///
/// Host objects: the test makes the "management" bridge itself (a per-run name, removed
/// on drop). The node allows only another per-run name that no host has, so it reports no
/// guest bridge and placement has nothing to hold the pool's bridge against: the request
/// reaches the node, which is the defence under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_bridge_it_does_not_allow() {
    if !(parts() && common::require("qemu-img") && common::require("ip")) {
        return;
    }
    let mgmt = Bridge::new_bare();
    let allowed = common::host::per_run_name();
    assert!(!common::host::interface_exists(&allowed));
    let cloud = Cloud::split_with(
        "test:///default",
        vec![("CORRAL_ALLOWED_BRIDGES".into(), allowed.clone())],
    )
    .await;
    cloud.template("tiny").await;
    let (s, v) = cloud
        .post(
            "/ip-pools",
            json!({"name": "mgmt", "cidr": "198.51.100.0/24", "range_start": "198.51.100.10",
                   "range_end": "198.51.100.20", "bridge": mgmt.name}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (gid, op) = cloud
        .create(json!({"name": "sneaky", "template": "tiny", "cpus": 1, "memory_mib": 64, "pool": "mgmt"}))
        .await[0]
        .clone();
    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error_code"], "bridge_not_allowed", "{v}");
    let refused: Vec<&Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["error_code"] == "bridge_not_allowed")
        .collect();
    assert_eq!(refused.len(), 1, "one step was refused by the node: {v}");
    assert_eq!(refused[0]["runs_on"], "node", "{v}");
    let (s, d) = cloud.delete(&format!("/guests/{gid}")).await;
    assert_eq!(s, 202, "{d}");
    assert_eq!(
        cloud.wait_op(d["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    cloud.assert_no_leaks().await;
}
