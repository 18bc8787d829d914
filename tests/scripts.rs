//! Rhai scripts against a real corral (Redis + libvirt test driver): OS-init profiles
//! through the API, boot-job queues and visibility, runs that cannot reach an agent
//! unwinding back to pending, and IP changes (checks, 409s, the stopped-guest path).
//! The test driver has no guest agent; tests/real_guest.rs runs jobs in real guests.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, sdk_error, Cloud};
use corral_client::apis::configuration::Configuration;
use corral_client::apis::{guests_api, operations_api, resources_api, scripts_api};
use corral_client::models::{
    AddressState, BootJob, ChangeIp, CreatePool, Guest, GuestAction, GuestState, NewScript,
    Operation, Pool, QueueBootJobs, ResetPassword, SetAddressState, Template, UpdateGuest,
    UpdateTemplate,
};
use corral_client::session::Session;
use reqwest::Method;
use serde_json::json;

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

async fn op_of(cloud: &Cloud, guest: &str, kind: &str) -> Vec<Operation> {
    operations_api::operation_list(
        &cloud.sdk().config,
        None,
        Some(kind),
        Some(guest),
        None,
        None,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("{kind} operations of {guest}: {}", sdk_error(e)))
}

/// Guest `gid`'s record.
async fn guest(cloud: &Cloud, gid: &str) -> Guest {
    guests_api::guest_get(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("guest {gid}: {}", sdk_error(e)))
}

/// Runs `action` on guest `gid`; returns the operation's id.
async fn action(cloud: &Cloud, gid: &str, action: GuestAction) -> String {
    guests_api::guest_action(&cloud.sdk().config, gid, action, None)
        .await
        .unwrap_or_else(|e| panic!("{action} {gid}: {}", sdk_error(e)))
        .operation_id
}

/// Guest `gid`'s boot jobs in `state` (all when None), as the caller of `c` sees them.
async fn boot_jobs(
    c: &Configuration,
    gid: &str,
    state: Option<&str>,
    include_system: bool,
) -> Vec<BootJob> {
    scripts_api::guest_boot_jobs(c, gid, state, include_system.then_some(true), None, None)
        .await
        .unwrap_or_else(|e| panic!("boot jobs of {gid}: {}", sdk_error(e)))
}

/// Sets the OS-init profile of template `tid` (None: back to the default).
async fn set_profile(cloud: &Cloud, tid: &str, profile: Option<&str>) -> Template {
    let mut change = UpdateTemplate::new();
    change.os_init_profile = Some(profile.map(Into::into));
    resources_api::template_update(&cloud.sdk().config, tid, change)
        .await
        .unwrap_or_else(|e| panic!("profile {profile:?} of {tid}: {}", sdk_error(e)))
}

/// Changes guest `gid`'s address (to `ip`, or the pool's next); returns the operation's id.
async fn change_ip(cloud: &Cloud, gid: &str, ip: Option<&str>) -> String {
    let mut change = ChangeIp::new();
    change.ip = ip.map(Into::into);
    guests_api::guest_change_ip(&cloud.sdk().config, gid, change)
        .await
        .unwrap_or_else(|e| panic!("change-ip {gid} to {ip:?}: {}", sdk_error(e)))
        .operation_id
}

/// Pool `name`'s record.
async fn pool(cloud: &Cloud, name: &str) -> Pool {
    resources_api::pool_get(&cloud.sdk().config, name)
        .await
        .unwrap_or_else(|e| panic!("pool {name}: {}", sdk_error(e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_are_managed_validated_and_used() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    let c = &cloud.sdk().config;
    let profiles = scripts_api::profile_list(c)
        .await
        .unwrap_or_else(|e| panic!("profiles: {}", sdk_error(e)));
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
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
    let v = scripts_api::profile_create(c, NewScript::new("mine".into(), GOOD.into()))
        .await
        .unwrap_or_else(|e| panic!("profile mine: {}", sdk_error(e)));
    assert_eq!(
        v.description,
        "A test profile: cloud-init's plan with a marker file."
    );
    let (s, _) = cloud
        .post("/os-init-profiles", json!({"name": "mine", "source": GOOD}))
        .await;
    assert_eq!(s, 409);
    // Shipped profiles are read-only.
    let (s, v) = cloud
        .call(
            Method::PUT,
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
            Method::PUT,
            "/os-init-profiles/mine",
            Some(json!({"source": "fn nope() {}"})),
        )
        .await;
    assert_eq!(s, 422);
    let mine = scripts_api::profile_get(c, "mine")
        .await
        .unwrap_or_else(|e| panic!("profile mine: {}", sdk_error(e)));
    assert_eq!(mine.source, GOOD);

    // Templates name their profile (S02); an unknown one is refused.
    let t = cloud.template("tiny").await;
    assert_eq!(t["os_init_profile"], json!("cloud-init"));
    let tid = t["id"].as_str().unwrap();
    let (s, v) = cloud
        .call(
            Method::PATCH,
            &format!("/templates/{tid}"),
            Some(json!({"os_init_profile": "nope"})),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let v = set_profile(&cloud, tid, Some("mine")).await;
    assert_eq!(v.os_init_profile, "mine");
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
    guests_api::guest_delete(c, "bad")
        .await
        .unwrap_or_else(|e| panic!("delete bad: {}", sdk_error(e)));
    let d = guests_api::guest_delete(c, "good")
        .await
        .unwrap_or_else(|e| panic!("delete good: {}", sdk_error(e)));
    cloud.wait_op(&d.operation_id).await;
    let ops = operations_api::operation_list(c, None, Some("guest.delete"), None, None, None, None)
        .await
        .unwrap_or_else(|e| panic!("delete operations: {}", sdk_error(e)));
    for o in &ops {
        cloud.wait_op(&o.id).await;
    }
    set_profile(&cloud, tid, None).await;
    scripts_api::profile_delete(c, "mine")
        .await
        .unwrap_or_else(|e| panic!("delete profile mine: {}", sdk_error(e)));
    cloud.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_jobs_queue_list_hide_and_survive_a_failed_run() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    let c = &cloud.sdk().config;
    cloud.template("tiny").await;
    let ids = cloud
        .create(json!({"name": "bj", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 2}))
        .await;
    for (_, op) in &ids {
        assert_eq!(cloud.wait_op(op).await["state"], json!("succeeded"));
    }
    let (g1, g2) = (ids[0].0.clone(), ids[1].0.clone());
    // Stop g1: jobs queued for it wait for its next boot.
    cloud
        .wait_op(&action(&cloud, &g1, GuestAction::Poweroff).await)
        .await;

    // A user script (S13), queued for both guests at once (S18).
    let src = "// Writes a motd.\nfn actions(guest, params) { [write_file(\"/etc/motd\", params.text), exec(\"true\")] }";
    scripts_api::boot_script_create(c, NewScript::new("motd".into(), src.into()))
        .await
        .unwrap_or_else(|e| panic!("boot script motd: {}", sdk_error(e)));
    let mut queue = QueueBootJobs::new(vec![g1.clone(), g2.clone()], "motd".into());
    queue.params = Some(Some(json!({"text": "hi"})));
    let v = scripts_api::boot_job_queue(c, queue)
        .await
        .unwrap_or_else(|e| panic!("queue motd: {}", sdk_error(e)));
    assert!(v.jobs.iter().all(|j| j.operation_id.is_none()), "{v:?}");
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
    let mut change = UpdateGuest::new();
    change.hostname = Some("renamed".into());
    let v = guests_api::guest_update(c, &g1, change)
        .await
        .unwrap_or_else(|e| panic!("hostname of {g1}: {}", sdk_error(e)));
    assert!(v.operation_id.is_none(), "g1 is off: at next boot: {v:?}");
    assert_eq!(guest(&cloud, &g1).await.hostname, "renamed");
    let jobs = boot_jobs(c, &g1, Some("pending"), false).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let all = boot_jobs(c, &g1, Some("pending"), true).await;
    let scripts: Vec<&str> = all.iter().map(|j| j.script.as_str()).collect();
    assert!(
        scripts.contains(&"set-hostname") && scripts.contains(&"motd"),
        "{all:?}"
    );
    let pending = scripts_api::boot_job_pending_guests(c, None)
        .await
        .unwrap_or_else(|e| panic!("pending guests: {}", sdk_error(e)));
    assert_eq!(pending.len(), 2, "{pending:?}");
    let pending = scripts_api::boot_job_pending_guests(c, Some(true))
        .await
        .unwrap_or_else(|e| panic!("pending guests with system jobs: {}", sdk_error(e)));
    let p1 = pending.iter().find(|p| p.guest_id == g1).unwrap();
    assert_eq!(p1.pending, 2, "{pending:?}");
    // Password resets store only the hash; the generated password appears once.
    let mut reset = ResetPassword::new();
    reset.generate = Some(true);
    let v = guests_api::guest_reset_password(c, &g1, reset)
        .await
        .unwrap_or_else(|e| panic!("password of {g1}: {}", sdk_error(e)));
    let pw = v.password.clone().unwrap();
    assert_eq!(pw.len(), 24);
    // Raw: the password must appear nowhere in the job as sent, not only in the fields
    // the SDK's model carries.
    let (_, job) = cloud.get(&format!("/boot-jobs/{}", v.boot_job_id)).await;
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
                scope: "api".into(),
            },
            &corral::controller::auth::token_digest("alice-token"),
        )
        .await
        .unwrap();
    let alice = Session::with_token(&cloud.url(""), "alice-token");
    let jobs = boot_jobs(&alice.config, &g1, None, true).await;
    assert!(jobs.iter().all(|j| !j.system), "{jobs:?}");
    let scripts = scripts_api::boot_script_list(&alice.config, Some(true))
        .await
        .unwrap_or_else(|e| panic!("alice's boot scripts: {}", sdk_error(e)));
    assert!(scripts.iter().all(|j| !j.system), "{scripts:?}");
    let (s, v) = cloud
        .call_as(
            "alice-token",
            Method::POST,
            "/boot-jobs",
            Some(json!({"guests": [g2], "script": "set-hostname", "params": {"hostname": "x"}})),
        )
        .await;
    assert_eq!(s, 403, "{v}");

    // Starting g1 is a boot: a run starts by itself, cannot reach an agent on the test
    // driver, and unwinds: every job is pending again, with the reason.
    cloud
        .wait_op(&action(&cloud, &g1, GuestAction::Start).await)
        .await;
    let mut run = None;
    for _ in 0..100 {
        if let Some(o) = op_of(&cloud, &g1, "guest.boot_jobs").await.first() {
            run = Some(o.id.clone());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let run = cloud
        .wait_op(&run.expect("no boot-job run started at boot"))
        .await;
    assert_eq!(run["state"], json!("failed"), "{run}");
    let jobs = boot_jobs(c, &g1, None, true).await;
    for j in &jobs {
        assert_eq!(j.state, "pending", "{j:?}");
        assert!(j.error.as_deref().unwrap().contains("agent"), "{j:?}");
        assert_eq!(j.attempts, 1, "{j:?}");
    }
    // Withdrawing a job.
    let id = &jobs[0].id;
    scripts_api::boot_job_cancel(c, id)
        .await
        .unwrap_or_else(|e| panic!("withdraw {id}: {}", sdk_error(e)));
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
    let c = &cloud.sdk().config;
    cloud.template("tiny").await;
    let mut p = CreatePool::new(
        "198.51.100.0/28".into(),
        "p".into(),
        "198.51.100.6".into(),
        "198.51.100.2".into(),
    );
    p.gateway = Some("198.51.100.1".into());
    p.dns = Some(vec![]);
    resources_api::pool_create(c, p)
        .await
        .unwrap_or_else(|e| panic!("pool p: {}", sdk_error(e)));
    let ids = cloud
        .create(json!({"name": "ip", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 2}))
        .await;
    for (_, op) in &ids {
        assert_eq!(cloud.wait_op(op).await["state"], json!("succeeded"));
    }
    let (a, b) = (ids[0].0.clone(), ids[1].0.clone());
    let ip_of = |g: String| {
        let cloud = &cloud;
        async move { guest(cloud, &g).await.ip.unwrap() }
    };
    let (ip_a, ip_b) = (ip_of(a.clone()).await, ip_of(b.clone()).await);
    let mut vip = SetAddressState::new("198.51.100.5".into(), AddressState::Reserved);
    vip.note = Some("vip".into());
    resources_api::pool_set_address_state(c, "p", vip)
        .await
        .unwrap_or_else(|e| panic!("reserve 198.51.100.5: {}", sdk_error(e)));
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
        if guest(&cloud, &a).await.state == GuestState::Running {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let op = cloud.wait_op(&change_ip(&cloud, &a, None).await).await;
    assert_eq!(op["state"], json!("failed"), "{op}");
    assert_eq!(ip_of(a.clone()).await, ip_a);
    let p = pool(&cloud, "p").await;
    assert_eq!(p.used, 2, "the new lease was released: {p:?}");
    // Stopped, it changes: record and pool now, the guest at its next boot (a system job).
    cloud
        .wait_op(&action(&cloud, &a, GuestAction::Poweroff).await)
        .await;
    // Outside the range but inside the network.
    let op = cloud
        .wait_op(&change_ip(&cloud, &a, Some("198.51.100.14")).await)
        .await;
    assert_eq!(op["state"], json!("succeeded"), "{op}");
    assert_eq!(ip_of(a.clone()).await, "198.51.100.14");
    let free = resources_api::pool_addresses(c, "p", Some(AddressState::Free), None, None)
        .await
        .unwrap_or_else(|e| panic!("free addresses of p: {}", sdk_error(e)));
    assert!(
        !free.iter().any(|f| f.ip == ip_a),
        "the guest still uses its old address until its next boot: it stays leased: {free:?}"
    );
    let jobs = boot_jobs(c, &a, Some("pending"), true).await;
    assert_eq!(jobs[0].script, "change-ip", "{jobs:?}");
    assert_eq!(
        jobs[0].params.as_ref().map(|p| &p["address"]),
        Some(&json!("198.51.100.14/28")),
        "{jobs:?}"
    );
    // Back into the pool: the hand-given address outside the range is dropped.
    let op = cloud.wait_op(&change_ip(&cloud, &a, None).await).await;
    assert_eq!(op["state"], json!("succeeded"), "{op}");
    let new = ip_of(a.clone()).await;
    assert!(
        new.starts_with("198.51.100.") && new != "198.51.100.14" && new != ip_b,
        "{new}"
    );
    // In the range: b's, a's new one, and a's first (held until a change-ip job runs).
    let p = pool(&cloud, "p").await;
    assert_eq!(p.used, 3, "{p:?}");

    cloud.delete_all_and_check().await;
}
