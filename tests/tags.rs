//! Tags on guests (S61) against a real corral (Redis + libvirt test driver): given at
//! create, replaced with PATCH, filtering lists within what a caller may see; bad tags get
//! a 400 and change nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, Cloud};
use reqwest::Method;
use serde_json::{json, Value};

fn names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_group_guests_and_filter_lists() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let mut ops = Vec::new();
    for (name, tags) in [
        ("web-a", json!(["web", "env=prod"])),
        ("web-b", json!(["web", "env=test", "web"])),
        ("db-a", json!(["db", "env=prod"])),
    ] {
        let created = cloud
            .create(json!({"name": name, "template": "tiny", "cpus": 1, "memory_mib": 64, "tags": tags}))
            .await;
        ops.push(created[0].clone());
    }
    for (_, op) in &ops {
        assert_eq!(cloud.wait_op(op).await["state"], "succeeded");
    }
    let (_, g) = cloud.get("/guests/web-b").await;
    assert_eq!(g["tags"], json!(["web", "env=test"]), "duplicates go: {g}");

    let (_, l) = cloud.get("/guests?tag=web").await;
    assert_eq!(names(&l), vec!["web-a", "web-b"]);
    let (_, l) = cloud.get("/guests?tag=env=prod").await;
    assert_eq!(names(&l), vec!["db-a", "web-a"]);
    let (_, l) = cloud.get("/guests?tag=nothing").await;
    assert_eq!(names(&l), Vec::<String>::new());

    // Bad tags: a 400 that says what to fix, and nothing created or changed.
    for bad in [json!([""]), json!(["has space"]), json!([("x".repeat(65))])] {
        let (s, v) = cloud
            .post(
                "/guests",
                json!({"name": "bad", "template": "tiny", "cpus": 1, "memory_mib": 64, "tags": bad}),
            )
            .await;
        assert_eq!(s, 400, "{v}");
        assert!(v["message"].as_str().unwrap().contains("tag"), "{v}");
    }
    let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    let (s, v) = cloud
        .call(Method::PATCH, "/guests/web-a", Some(json!({"tags": many})))
        .await;
    assert_eq!(s, 400, "{v}");
    // A good tag list with a bad hostname changes neither.
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/guests/web-a",
            Some(json!({"tags": ["other"], "hostname": "Not A Hostname"})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, g) = cloud.get("/guests/web-a").await;
    assert_eq!(g["tags"], json!(["web", "env=prod"]), "{g}");
    assert_eq!(
        cloud.get("/guests/bad").await.0,
        404,
        "no guest was created"
    );

    // PATCH replaces the whole set, at once, with an event.
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/guests/web-a",
            Some(json!({"tags": ["db"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, l) = cloud.get("/guests?tag=db").await;
    assert_eq!(names(&l), vec!["db-a", "web-a"]);
    let tagged = cloud.events("guest.tags").await;
    assert!(
        tagged.iter().any(|e| e["tags"] == json!(["db"])),
        "{tagged:?}"
    );

    // A user's filter stays within their own guests.
    let (s, v) = cloud
        .post(
            "/users",
            json!({"name": "ann", "password": "ann-password", "role": "user"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let r = reqwest::Client::new()
        .post(cloud.url("/auth/login"))
        .json(&json!({"username": "ann", "password": "ann-password"}))
        .send()
        .await
        .unwrap();
    let ann = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = reqwest::Client::new()
        .request(Method::GET, cloud.url("/guests?tag=db"))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let l: Value = r.json().await.unwrap();
    assert_eq!(
        names(&l),
        Vec::<String>::new(),
        "ann sees no admin guest: {l}"
    );
}
