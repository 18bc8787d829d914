//! The audit trail and retention against a real corral (Redis + libvirt test driver):
//! every write leaves who, from where, what, on which object and the result, including
//! refused and failed ones and logins; only administrators read it; settings round-trip
//! and a purge by the settings answers what it removed.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, system_api, users_api};
use corral_client::models::{
    AuditEntry, NewUser, Purged, Retention, Settings, SettingsChange, UserRole,
};
use corral_client::session::Session;
use reqwest::Method;
use serde_json::json;

/// The trail's entries by the filters given (newest first), then those matching `f`.
async fn entries(
    cloud: &Cloud,
    user: Option<&str>,
    object: Option<&str>,
    action: Option<&str>,
    before: Option<i64>,
    limit: Option<u64>,
    f: impl Fn(&AuditEntry) -> bool,
) -> Vec<AuditEntry> {
    system_api::audit_list(
        &cloud.sdk().config,
        user,
        object,
        action,
        None,
        before,
        limit,
    )
    .await
    .unwrap_or_else(|e| panic!("audit: {}", sdk_error(e)))
    .into_iter()
    .filter(|e| f(e))
    .collect()
}

/// The settings, as the administrator reads them.
async fn settings(cloud: &Cloud) -> Settings {
    system_api::settings_get(&cloud.sdk().config)
        .await
        .unwrap_or_else(|e| panic!("settings: {}", sdk_error(e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_is_on_the_trail_and_old_records_are_purged() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let c = &cloud.sdk().config;
    let ann_id = users_api::user_create(
        c,
        NewUser::new("ann".into(), "ann-password".into(), UserRole::User),
    )
    .await
    .unwrap_or_else(|e| panic!("user ann: {}", sdk_error(e)))
    .id;

    // A failed and a good login: the trail names the account tried.
    // Raw: the test checks the refusal's status.
    let r = reqwest::Client::new()
        .post(cloud.url("/auth/login"))
        .json(&json!({"username": "ann", "password": "not-her-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let ann = Session::login(&cloud.url(""), "ann", "ann-password")
        .await
        .unwrap_or_else(|e| panic!("login of ann: {e}"))
        .config
        .bearer_access_token
        .unwrap();

    // Refused writes: a pool (administrators only), someone else's (or no) guest.
    let (s, _) = cloud
        .call_as(
            &ann,
            Method::POST,
            "/ip-pools",
            Some(json!({"name": "x", "cidr": "192.0.2.0/24", "range_start": "192.0.2.10", "range_end": "192.0.2.20"})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = cloud
        .call_as(&ann, Method::DELETE, "/guests/no-such-guest", None)
        .await;
    assert_eq!(s, 404);
    // A write with a bad body, and one without a working token.
    let (s, _) = cloud
        .call_as(&ann, Method::POST, "/guests", Some(json!({"name": 12})))
        .await;
    assert_eq!(s, 400);
    let (s, _) = cloud
        .call_as(
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
    guests_api::guest_delete(c, &gid)
        .await
        .unwrap_or_else(|e| panic!("delete {gid}: {}", sdk_error(e)));

    // Reads are not on the trail.
    let all = entries(&cloud, None, None, None, None, Some(1000), |_| true).await;
    assert!(all.iter().all(|e| e.method != "GET"), "{all:?}");
    for e in &all {
        assert_eq!(e.address, "127.0.0.1", "{e:?}");
    }

    let logins = entries(
        &cloud,
        None,
        None,
        Some("auth_login"),
        None,
        Some(1000),
        |e| e.user.as_deref() == Some("ann"),
    )
    .await;
    let statuses: Vec<u16> = logins.iter().map(|e| e.status).collect();
    assert_eq!(statuses, vec![200, 401], "newest first: {logins:?}");
    assert!(logins.iter().all(|e| e.user_id.is_none()), "{logins:?}");

    let by_ann = entries(&cloud, Some(&ann_id), None, None, None, Some(1000), |_| {
        true
    })
    .await;
    let seen: Vec<(String, u16, Option<String>)> = by_ann
        .iter()
        .map(|e| (e.action.clone(), e.status, e.object.clone()))
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
    assert!(
        by_ann.iter().all(|e| e.user.as_deref() == Some("ann")),
        "{by_ann:?}"
    );
    // A write without a working token changed nothing and is not recorded: anonymous
    // requests cannot grow the trail (logins are, bounded by the login throttle).
    let anonymous = entries(&cloud, None, None, Some("token_create"), None, None, |e| {
        e.status == 401
    })
    .await;
    assert_eq!(anonymous, Vec::<AuditEntry>::new(), "{anonymous:?}");

    // What a write created, and what it acted on.
    let pools = entries(&cloud, None, None, Some("pool_create"), None, None, |e| {
        e.status == 201
    })
    .await;
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert!(pools[0].object.is_some(), "the new pool's id: {pools:?}");
    let creates = entries(&cloud, None, None, Some("guest_create"), None, None, |e| {
        e.status == 202
    })
    .await;
    assert_eq!(
        creates[0].object.as_deref(),
        Some(op.as_str()),
        "the operation it started: {creates:?}"
    );
    assert_eq!(creates[0].user.as_deref(), Some("admin"));
    let deletes = entries(&cloud, None, Some(&gid), None, None, None, |_| true).await;
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].action, "guest_delete");
    assert_eq!(deletes[0].path, format!("/api/v1/guests/{gid}"));

    // Pages: `before` continues where a page ended.
    let first = entries(&cloud, None, None, None, None, Some(2), |_| true).await;
    assert_eq!(first.len(), 2);
    let next = entries(
        &cloud,
        None,
        None,
        None,
        Some(first[1].seq),
        Some(2),
        |_| true,
    )
    .await;
    assert!(next[0].seq < first[1].seq, "{next:?}");
    let (s, v) = cloud.get("/audit?since=yesterday").await;
    assert_eq!(s, 400, "{v}");

    // Only administrators read it or change settings.
    assert_eq!(
        cloud.call_as(&ann, Method::GET, "/audit", None).await.0,
        403
    );
    assert_eq!(
        cloud.call_as(&ann, Method::GET, "/settings", None).await.0,
        403
    );
    assert_eq!(
        cloud
            .call_as(&ann, Method::POST, "/settings/purge", None)
            .await
            .0,
        403
    );

    // Settings: defaults, a change that sticks, a bad value refused.
    let mut defaults = Retention::new(365, 30, 90);
    (defaults.metrics_days, defaults.metrics_raw_hours) = (Some(15), Some(24));
    assert_eq!(*settings(&cloud).await.retention, defaults);
    let mut change = SettingsChange::new();
    change.retention = Some(Box::new(Retention::new(30, 0, 7)));
    system_api::settings_update(c, change)
        .await
        .unwrap_or_else(|e| panic!("retention: {}", sdk_error(e)));
    assert_eq!(settings(&cloud).await.retention.operations_days, 7);
    // Raw: -1 is beyond what the SDK's model can send.
    let (s, v) = cloud
        .call(
            Method::PATCH,
            "/settings",
            Some(json!({"retention": {"audit_days": -1, "operations_days": 7, "events_days": 0}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(settings(&cloud).await.retention.audit_days, 30);

    // Nothing here is old enough to go; the purge says so, and the trail records it.
    let purged = system_api::settings_purge(c)
        .await
        .unwrap_or_else(|e| panic!("purge: {}", sdk_error(e)));
    assert_eq!(purged, Purged::new(0, 0, 0, 0, 0));
    let purges = entries(
        &cloud,
        None,
        None,
        Some("settings_purge"),
        None,
        None,
        |_| true,
    )
    .await;
    let who: Vec<(&str, u16)> = purges
        .iter()
        .map(|e| (e.user.as_deref().unwrap(), e.status))
        .collect();
    assert_eq!(who, vec![("admin", 200), ("ann", 403)], "{purges:?}");
}
