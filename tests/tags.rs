//! Tags on guests (S61) against a real corral (Redis + libvirt test driver): given at
//! create, replaced with PATCH, filtering lists within what a caller may see; bad tags get
//! a 400 and change nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, sdk_error, Cloud};
use corral_client::apis::configuration::Configuration;
use corral_client::apis::{guests_api, users_api};
use corral_client::models::{Guest, NewUser, UpdateGuest, UserRole};
use corral_client::session::Session;
use reqwest::Method;
use serde_json::json;

fn names(v: &[Guest]) -> Vec<String> {
    let mut n: Vec<String> = v.iter().map(|g| g.name.clone()).collect();
    n.sort();
    n
}

/// The guests tagged `tag` that the caller of `c` may see.
async fn with_tag(c: &Configuration, tag: &str) -> Vec<Guest> {
    guests_api::guest_list(c, None, None, Some(tag), None, None)
        .await
        .unwrap_or_else(|e| panic!("guests tagged {tag}: {}", sdk_error(e)))
}

async fn guest(cloud: &Cloud, id: &str) -> Guest {
    guests_api::guest_get(&cloud.sdk().config, id)
        .await
        .unwrap_or_else(|e| panic!("guest {id}: {}", sdk_error(e)))
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
    let c = &cloud.sdk().config;
    let g = guest(&cloud, "web-b").await;
    assert_eq!(g.tags, vec!["web", "env=test"], "duplicates go: {g:?}");

    assert_eq!(names(&with_tag(c, "web").await), vec!["web-a", "web-b"]);
    assert_eq!(names(&with_tag(c, "env=prod").await), vec!["db-a", "web-a"]);
    assert_eq!(names(&with_tag(c, "nothing").await), Vec::<String>::new());

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
    let g = guest(&cloud, "web-a").await;
    assert_eq!(g.tags, vec!["web", "env=prod"], "{g:?}");
    assert_eq!(
        cloud.get("/guests/bad").await.0,
        404,
        "no guest was created"
    );

    // PATCH replaces the whole set, at once, with an event.
    let mut change = UpdateGuest::new();
    change.tags = Some(vec!["db".into()]);
    guests_api::guest_update(c, "web-a", change)
        .await
        .unwrap_or_else(|e| panic!("retagging web-a: {}", sdk_error(e)));
    assert_eq!(names(&with_tag(c, "db").await), vec!["db-a", "web-a"]);
    let tagged = cloud.events("guest.tags").await;
    assert!(
        tagged.iter().any(|e| e["tags"] == json!(["db"])),
        "{tagged:?}"
    );

    // A user's filter stays within their own guests.
    users_api::user_create(
        c,
        NewUser::new("ann".into(), "ann-password".into(), UserRole::User),
    )
    .await
    .unwrap_or_else(|e| panic!("user ann: {}", sdk_error(e)));
    let ann = Session::login(&cloud.url(""), "ann", "ann-password")
        .await
        .unwrap_or_else(|e| panic!("login of ann: {e}"));
    let l = with_tag(&ann.config, "db").await;
    assert_eq!(
        names(&l),
        Vec::<String>::new(),
        "ann sees no admin guest: {l:?}"
    );
}
