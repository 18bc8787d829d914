//! The audit trail and retention against a real corral (Redis + libvirt test driver):
//! every write leaves who, from where, what, on which object and the result, including
//! refused and failed ones and logins; only administrators read it; settings round-trip
//! and a purge by the settings answers what it removed.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, Cloud};
use reqwest::Method;
use serde_json::{json, Value};

async fn call(
    cloud: &Cloud,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, cloud.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

async fn login(cloud: &Cloud, user: &str, password: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(cloud.url("/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The trail's entries matching `f`, newest first.
async fn entries(cloud: &Cloud, query: &str, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    let (s, v) = cloud.get(&format!("/audit?{query}")).await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| f(e))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_on_the_trail_and_old_records_are_purged() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let (s, v) = cloud
        .post(
            "/users",
            json!({"name": "ann", "password": "ann-password", "role": "user"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ann_id = v["id"].as_str().unwrap().to_string();

    // A failed and a good login: the trail names the account tried.
    assert_eq!(login(&cloud, "ann", "not-her-password").await.0, 401);
    let (s, v) = login(&cloud, "ann", "ann-password").await;
    assert_eq!(s, 200, "{v}");
    let ann = v["token"].as_str().unwrap().to_string();

    // Refused writes: a pool (administrators only), someone else's (or no) guest.
    let (s, _) = call(
        &cloud,
        &ann,
        Method::POST,
        "/ip-pools",
        Some(json!({"name": "x", "cidr": "192.0.2.0/24", "range_start": "192.0.2.10", "range_end": "192.0.2.20"})),
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(&cloud, &ann, Method::DELETE, "/guests/no-such-guest", None).await;
    assert_eq!(s, 404);
    // A write with a bad body, and one without a working token.
    let (s, _) = call(
        &cloud,
        &ann,
        Method::POST,
        "/guests",
        Some(json!({"name": 12})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = call(
        &cloud,
        "not-a-token",
        Method::POST,
        "/tokens",
        Some(json!({"name": "t"})),
    )
    .await;
    assert_eq!(s, 401);

    // Accepted writes by the admin: a pool (201) and a guest (202, an operation).
    cloud.pool("lan", "192.0.2.10", "192.0.2.20").await;
    cloud.template("tiny").await;
    let (gid, op) = cloud
        .create(json!({"name": "g1", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let (s, d) = cloud.delete(&format!("/guests/{gid}")).await;
    assert_eq!(s, 202, "{d}");

    // Reads are not on the trail.
    let all = entries(&cloud, "limit=1000", |_| true).await;
    assert!(all.iter().all(|e| e["method"] != "GET"), "{all:?}");
    for e in &all {
        assert_eq!(e["address"], "127.0.0.1", "{e}");
    }

    let logins = entries(&cloud, "action=auth_login&limit=1000", |e| {
        e["user"] == "ann"
    })
    .await;
    let statuses: Vec<u64> = logins
        .iter()
        .map(|e| e["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 401], "newest first: {logins:?}");
    assert!(
        logins.iter().all(|e| e.get("user_id").is_none()),
        "{logins:?}"
    );

    let by_ann = entries(&cloud, &format!("user={ann_id}&limit=1000"), |_| true).await;
    let seen: Vec<(String, u64, Option<String>)> = by_ann
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
                e["object"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("guest_create".to_string(), 400, None),
            (
                "guest_delete".to_string(),
                404,
                Some("no-such-guest".to_string())
            ),
            ("pool_create".to_string(), 403, None),
        ],
        "{by_ann:?}"
    );
    assert!(by_ann.iter().all(|e| e["user"] == "ann"), "{by_ann:?}");
    // A write without a working token changed nothing and is not recorded: anonymous
    // requests cannot grow the trail (logins are, bounded by the login throttle).
    let anonymous = entries(&cloud, "action=token_create", |e| e["status"] == 401).await;
    assert_eq!(anonymous, Vec::<Value>::new(), "{anonymous:?}");

    // What a write created, and what it acted on.
    let pools = entries(&cloud, "action=pool_create", |e| e["status"] == 201).await;
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert!(
        pools[0]["object"].is_string(),
        "the new pool's id: {pools:?}"
    );
    let creates = entries(&cloud, "action=guest_create", |e| e["status"] == 202).await;
    assert_eq!(
        creates[0]["object"],
        json!(op),
        "the operation it started: {creates:?}"
    );
    assert_eq!(creates[0]["user"], "admin");
    let deletes = entries(&cloud, &format!("object={gid}"), |_| true).await;
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0]["action"], "guest_delete");
    assert_eq!(deletes[0]["path"], format!("/api/v1/guests/{gid}"));

    // Pages: `before` continues where a page ended.
    let first = entries(&cloud, "limit=2", |_| true).await;
    assert_eq!(first.len(), 2);
    let next = entries(
        &cloud,
        &format!("limit=2&before={}", first[1]["seq"]),
        |_| true,
    )
    .await;
    assert!(
        next[0]["seq"].as_i64() < first[1]["seq"].as_i64(),
        "{next:?}"
    );
    let (s, v) = cloud.get("/audit?since=yesterday").await;
    assert_eq!(s, 400, "{v}");

    // Only administrators read it or change settings.
    assert_eq!(call(&cloud, &ann, Method::GET, "/audit", None).await.0, 403);
    assert_eq!(
        call(&cloud, &ann, Method::GET, "/settings", None).await.0,
        403
    );
    assert_eq!(
        call(&cloud, &ann, Method::POST, "/settings/purge", None)
            .await
            .0,
        403
    );

    // Settings: defaults, a change that sticks, a bad value refused.
    let (s, v) = cloud.get("/settings").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["retention"],
        json!({"audit_days": 365, "operations_days": 90, "events_days": 30})
    );
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/settings",
            Some(json!({"retention": {"audit_days": 30, "operations_days": 7, "events_days": 0}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        cloud.get("/settings").await.1["retention"]["operations_days"],
        7
    );
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/settings",
            Some(json!({"retention": {"audit_days": -1, "operations_days": 7, "events_days": 0}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        cloud.get("/settings").await.1["retention"]["audit_days"],
        30
    );

    // Nothing here is old enough to go; the purge says so, and the trail records it.
    let (s, v) = cloud.post("/settings/purge", json!(null)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"audit": 0, "operations": 0, "events": 0}));
    let purges = entries(&cloud, "action=settings_purge", |_| true).await;
    let who: Vec<(&str, u64)> = purges
        .iter()
        .map(|e| (e["user"].as_str().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(who, vec![("admin", 200), ("ann", 403)], "{purges:?}");
}
