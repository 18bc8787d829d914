//! Rhai scripts against a real corral (Redis + libvirt test driver): OS-init profiles
//! through the API, boot-job queues and visibility, runs that cannot reach an agent
//! unwinding back to pending, and IP changes (checks, 409s, the stopped-guest path).
//! The test driver has no guest agent; tests/real_guest.rs runs jobs in real guests.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, Cloud};
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server") && require("qemu-img") && require("genisoimage")
}

const GOOD: &str = r#"
// A test profile: cloud-init's plan with a marker file.
fn plan(guest) {
    if guest.hostname == "explode" { throw "this profile refuses hostname explode"; }
    #{ hostname: guest.hostname,
       users: [#{ name: guest.user, password_hash: guest.password_hash, ssh_keys: guest.ssh_keys }],
       files: [#{ path: "/etc/marker", content: "x" }] }
}
"#;

async fn op_of(cloud: &Cloud, guest: &str, kind: &str) -> Vec<Value> {
    let (s, v) = cloud
        .get(&format!("/operations?guest_id={guest}&kind={kind}"))
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_managed_validated_and_used() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    let (s, v) = cloud.get("/os-init-profiles").await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for shipped in [
        "cloud-init",
        "debian-agent",
        "rhel-agent",
        "windows",
        "test-guest",
    ] {
        assert!(names.contains(&shipped), "{names:?}");
    }
    // A compile error names line and column, and nothing is stored.
    let (s, v) = cloud
        .post(
            "/os-init-profiles",
            json!({"name": "mine", "source": "fn plan(g) {\n  let = 1;\n}"}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["details"]["line"], json!(2), "{v}");
    assert!(v["details"]["column"].is_number(), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("os-init/mine"),
        "{v}"
    );
    // A hostile profile is stopped and the controller keeps serving.
    let (s, v) = cloud
        .post(
            "/os-init-profiles",
            json!({"name": "spin", "source": "fn plan(g) { loop {} }"}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let (s, _) = cloud.get("/os-init-profiles/mine").await;
    assert_eq!(s, 404);
    // A plan with a plain password is refused.
    let (s, v) = cloud
        .post("/os-init-profiles", json!({"name": "plain", "source":
            r#"fn plan(g) { #{ hostname: g.hostname, users: [#{ name: "root", password_hash: "hunter2" }] } }"#}))
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("crypt hash"), "{v}");
    let (s, v) = cloud
        .post("/os-init-profiles", json!({"name": "mine", "source": GOOD}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        v["description"],
        json!("A test profile: cloud-init's plan with a marker file.")
    );
    let (s, _) = cloud
        .post("/os-init-profiles", json!({"name": "mine", "source": GOOD}))
        .await;
    assert_eq!(s, 409);
    // Shipped profiles are read-only.
    let (s, v) = cloud
        .call(
            reqwest::Method::PUT,
            "/os-init-profiles/cloud-init",
            Some(json!({"source": GOOD})),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, _) = cloud.delete("/os-init-profiles/test-guest").await;
    assert_eq!(s, 409);
    // An invalid update changes nothing.
    let (s, _) = cloud
        .call(
            reqwest::Method::PUT,
            "/os-init-profiles/mine",
            Some(json!({"source": "fn nope() {}"})),
        )
        .await;
    assert_eq!(s, 422);
    let (_, v) = cloud.get("/os-init-profiles/mine").await;
    assert_eq!(v["source"], json!(GOOD));

    // Templates name their profile (S02); an unknown one is refused.
    let t = cloud.template("tiny").await;
    assert_eq!(t["os_init_profile"], json!("cloud-init"));
    let tid = t["id"].as_str().unwrap();
    let tpath = format!("/templates/{tid}");
    let patch = |p: Value| {
        cloud.call(
            reqwest::Method::PATCH,
            &tpath,
            Some(json!({"os_init_profile": p})),
        )
    };
    let (s, v) = patch(json!("nope")).await;
    assert_eq!(s, 422, "{v}");
    let (s, v) = patch(json!("mine")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["os_init_profile"], json!("mine"));
    let (s, v) = cloud.delete("/os-init-profiles/mine").await;
    assert_eq!(s, 409, "in use: {v}");
    assert!(v["message"].as_str().unwrap().contains("tiny"), "{v}");

    // The profile runs at create; a script error fails the create naming the script and
    // unwinds everything.
    let ok = cloud.create(json!({"name": "good", "template": "tiny", "cpus": 1, "memory_mib": 64, "password": "pw-123456"})).await;
    let op = cloud.wait_op(&ok[0].1).await;
    assert_eq!(op["state"], json!("succeeded"), "{op}");
    let bad = cloud.create(json!({"name": "bad", "template": "tiny", "cpus": 1, "memory_mib": 64, "hostname": "explode"})).await;
    let op = cloud.wait_op(&bad[0].1).await;
    assert_eq!(op["state"], json!("failed"), "{op}");
    let err = op["error"].as_str().unwrap();
    assert!(
        err.contains("os-init/mine") && err.contains("refuses hostname explode"),
        "{err}"
    );
    let (s, _) = cloud.delete("/guests/bad").await;
    assert_eq!(s, 202);
    let (s, d) = cloud.delete("/guests/good").await;
    assert_eq!(s, 202);
    cloud.wait_op(d["operation_id"].as_str().unwrap()).await;
    let (_, ops) = cloud.get("/operations?kind=guest.delete").await;
    for o in ops.as_array().unwrap() {
        cloud.wait_op(o["id"].as_str().unwrap()).await;
    }
    let (s, _) = patch(Value::Null).await;
    assert_eq!(s, 200);
    let (s, _) = cloud.delete("/os-init-profiles/mine").await;
    assert_eq!(s, 204);
    cloud.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_jobs_queue_list_hide_and_survive_a_failed_run() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    let ids = cloud
        .create(json!({"name": "bj", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 2}))
        .await;
    for (_, op) in &ids {
        assert_eq!(cloud.wait_op(op).await["state"], json!("succeeded"));
    }
    let (g1, g2) = (ids[0].0.clone(), ids[1].0.clone());
    // Stop g1: jobs queued for it wait for its next boot.
    let (s, v) = cloud
        .post(&format!("/guests/{g1}/actions/poweroff"), json!(null))
        .await;
    assert_eq!(s, 202, "{v}");
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;

    // A user script (S13), queued for both guests at once (S18).
    let src = "// Writes a motd.\nfn actions(guest, params) { [write_file(\"/etc/motd\", params.text), exec(\"true\")] }";
    let (s, v) = cloud
        .post("/boot-scripts", json!({"name": "motd", "source": src}))
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = cloud
        .post(
            "/boot-jobs",
            json!({"guests": [g1, g2], "script": "motd", "params": {"text": "hi"}}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert!(v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["operation_id"].is_null()));
    // Bad requests change nothing.
    for (body, code) in [
        (json!({"guests": [g1], "script": "nope"}), 422),
        (json!({"guests": ["no-such-guest"], "script": "motd"}), 404),
        (json!({"guests": [], "script": "motd"}), 400),
        (
            json!({"guests": [g1], "script": "motd", "params": [1]}),
            400,
        ),
    ] {
        let (s, v) = cloud.post("/boot-jobs", body.clone()).await;
        assert_eq!(s, code, "{body}: {v}");
    }
    // A hostname change queues the system job set-hostname (S78): hidden by default (S21).
    let (s, v) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/guests/{g1}"),
            Some(json!({"hostname": "renamed"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["operation_id"].is_null(), "g1 is off: at next boot: {v}");
    let (_, g) = cloud.get(&format!("/guests/{g1}")).await;
    assert_eq!(g["hostname"], json!("renamed"));
    let (_, jobs) = cloud
        .get(&format!("/guests/{g1}/boot-jobs?state=pending"))
        .await;
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
    let (_, all) = cloud
        .get(&format!(
            "/guests/{g1}/boot-jobs?state=pending&include_system=true"
        ))
        .await;
    let scripts: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["script"].as_str().unwrap())
        .collect();
    assert!(
        scripts.contains(&"set-hostname") && scripts.contains(&"motd"),
        "{all}"
    );
    let (_, pending) = cloud.get("/boot-jobs/pending").await;
    assert_eq!(pending.as_array().unwrap().len(), 2, "{pending}");
    let (_, pending) = cloud.get("/boot-jobs/pending?include_system=true").await;
    let p1 = pending
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["guest_id"] == json!(g1))
        .unwrap();
    assert_eq!(p1["pending"], json!(2), "{pending}");
    // Password resets store only the hash; the generated password appears once.
    let (s, v) = cloud
        .post(&format!("/guests/{g1}/password"), json!({"generate": true}))
        .await;
    assert_eq!(s, 202, "{v}");
    let pw = v["password"].as_str().unwrap().to_string();
    assert_eq!(pw.len(), 24);
    let (_, job) = cloud
        .get(&format!(
            "/boot-jobs/{}",
            v["boot_job_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(job["params"]["password_hash"], json!("***"), "{job}");
    assert!(!job.to_string().contains(&pw));
    let (s, _) = cloud
        .post(
            &format!("/guests/{g1}/password"),
            json!({"password": "short"}),
        )
        .await;
    assert_eq!(s, 400);

    // An operator (all guests, but not an administrator) sees no system jobs and may not
    // queue them.
    let store = corral::controller::store::Store::open(&cloud.dir().join("corral.db"))
        .await
        .unwrap();
    store
        .insert_user(&corral::controller::store::UserRow {
            id: "u-2".into(),
            name: "alice".into(),
            password_hash: "x".into(),
            is_admin: false,
            created_at: 0,
            role: "operator".into(),
        })
        .await
        .unwrap();
    store
        .insert_token(
            &corral::controller::store::TokenRow {
                id: "t-2".into(),
                user_id: "u-2".into(),
                name: "test".into(),
                created_at: 0,
                expires_at: None,
            },
            &corral::controller::auth::token_digest("alice-token"),
        )
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let alice = |path: &str| http.get(cloud.url(path)).bearer_auth("alice-token").send();
    let jobs: Value = alice(&format!("/guests/{g1}/boot-jobs?include_system=true"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["system"] == json!(false)),
        "{jobs}"
    );
    let scripts: Value = alice("/boot-scripts?include_system=true")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        scripts
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["system"] == json!(false)),
        "{scripts}"
    );
    let r = http
        .post(cloud.url("/boot-jobs"))
        .bearer_auth("alice-token")
        .json(&json!({"guests": [g2], "script": "set-hostname", "params": {"hostname": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Starting g1 is a boot: a run starts by itself, cannot reach an agent on the test
    // driver, and unwinds: every job is pending again, with the reason.
    let (s, v) = cloud
        .post(&format!("/guests/{g1}/actions/start"), json!(null))
        .await;
    assert_eq!(s, 202, "{v}");
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    let mut run = None;
    for _ in 0..100 {
        if let Some(o) = op_of(&cloud, &g1, "guest.boot_jobs").await.first() {
            run = Some(o["id"].as_str().unwrap().to_string());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let run = cloud
        .wait_op(&run.expect("no boot-job run started at boot"))
        .await;
    assert_eq!(run["state"], json!("failed"), "{run}");
    let (_, jobs) = cloud
        .get(&format!("/guests/{g1}/boot-jobs?include_system=true"))
        .await;
    for j in jobs.as_array().unwrap() {
        assert_eq!(j["state"], json!("pending"), "{j}");
        assert!(j["error"].as_str().unwrap().contains("agent"), "{j}");
        assert_eq!(j["attempts"], json!(1), "{j}");
    }
    // Withdrawing a job.
    let id = jobs[0]["id"].as_str().unwrap();
    let (s, _) = cloud.delete(&format!("/boot-jobs/{id}")).await;
    assert_eq!(s, 204);
    let (s, _) = cloud.delete(&format!("/boot-jobs/{id}")).await;
    assert_eq!(s, 409);
    // A boot script with queued jobs cannot be deleted.
    let (s, _) = cloud.delete("/boot-scripts/motd").await;
    assert_eq!(s, 409);

    cloud.delete_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_changes_are_checked_and_atomic() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    let (s, v) = cloud
        .post("/ip-pools", json!({"name": "p", "cidr": "198.51.100.0/28", "range_start": "198.51.100.2",
                                  "range_end": "198.51.100.6", "gateway": "198.51.100.1", "dns": []}))
        .await;
    assert_eq!(s, 201, "{v}");
    let ids = cloud
        .create(json!({"name": "ip", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 2}))
        .await;
    for (_, op) in &ids {
        assert_eq!(cloud.wait_op(op).await["state"], json!("succeeded"));
    }
    let (a, b) = (ids[0].0.clone(), ids[1].0.clone());
    let ip_of = |g: String| {
        let cloud = &cloud;
        async move {
            cloud.get(&format!("/guests/{g}")).await.1["ip"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let (ip_a, ip_b) = (ip_of(a.clone()).await, ip_of(b.clone()).await);
    let (s, v) = cloud
        .post(
            "/ip-pools/p/addresses/state",
            json!({"start": "198.51.100.5", "state": "reserved", "note": "vip"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Manual addresses: taken by a guest, reserved, outside every pool: refused, nothing changes.
    for (ip, code) in [
        (ip_b.as_str(), 409),
        ("198.51.100.5", 409),
        ("203.0.113.9", 422),
        ("198.51.100.1", 422),
        ("x", 400),
    ] {
        let (s, v) = cloud
            .post(&format!("/guests/{a}/change-ip"), json!({"ip": ip}))
            .await;
        assert_eq!(s, code, "{ip}: {v}");
    }
    assert_eq!(ip_of(a.clone()).await, ip_a);
    // A running guest on the test driver has no agent: the live change fails, and the
    // new lease, the seed and the record go back as they were.
    // (Its state settles from libvirt's events first: a change-ip of a guest not running
    // is applied at its next boot instead.)
    for _ in 0..100 {
        if cloud.get(&format!("/guests/{a}")).await.1["state"] == "running" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (s, v) = cloud
        .post(&format!("/guests/{a}/change-ip"), json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["state"], json!("failed"), "{op}");
    assert_eq!(ip_of(a.clone()).await, ip_a);
    let (_, pool) = cloud.get("/ip-pools/p").await;
    assert_eq!(pool["used"], json!(2), "the new lease was released: {pool}");
    // Stopped, it changes: record and pool now, the guest at its next boot (a system job).
    let (_, v) = cloud
        .post(&format!("/guests/{a}/actions/poweroff"), json!(null))
        .await;
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    let (s, v) = cloud
        .post(
            &format!("/guests/{a}/change-ip"),
            json!({"ip": "198.51.100.14"}),
        )
        .await;
    assert_eq!(s, 202, "outside the range but inside the network: {v}");
    let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["state"], json!("succeeded"), "{op}");
    assert_eq!(ip_of(a.clone()).await, "198.51.100.14");
    let (_, addrs) = cloud.get("/ip-pools/p/addresses?state=free").await;
    assert!(
        !addrs.to_string().contains(&format!("\"{ip_a}\"")),
        "the guest still uses its old address until its next boot: it stays leased: {addrs}"
    );
    let (_, jobs) = cloud
        .get(&format!(
            "/guests/{a}/boot-jobs?include_system=true&state=pending"
        ))
        .await;
    assert_eq!(jobs[0]["script"], json!("change-ip"), "{jobs}");
    assert_eq!(
        jobs[0]["params"]["address"],
        json!("198.51.100.14/28"),
        "{jobs}"
    );
    // Back into the pool: the hand-given address outside the range is dropped.
    let (_, v) = cloud
        .post(&format!("/guests/{a}/change-ip"), json!({}))
        .await;
    let op = cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    assert_eq!(op["state"], json!("succeeded"), "{op}");
    let new = ip_of(a.clone()).await;
    assert!(
        new.starts_with("198.51.100.") && new != "198.51.100.14" && new != ip_b,
        "{new}"
    );
    // In the range: b's, a's new one, and a's first (held until a change-ip job runs).
    let (_, pool) = cloud.get("/ip-pools/p").await;
    assert_eq!(pool["used"], json!(3), "{pool}");

    cloud.delete_all_and_check().await;
}
