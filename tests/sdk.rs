//! The Rust SDK (sdk/rust, generated from the committed spec) against a live corral on the
//! test driver: the smoke scenario every SDK runs (log in, create a pool, a template and a
//! guest, wait for the operation, list, power off, delete, the address free again), then
//! the event stream resumed after a reconnect with `Last-Event-ID`.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, Cloud};
use corral_client::apis::{guests_api, resources_api};
use corral_client::models::{
    AddressState, CreateGuest, CreatePool, CreateTemplate, GuestAction, GuestState, OsType,
};
use corral_client::session::{Session, SessionError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_drives_a_guest_through_its_life() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::up().await;
    let base = cloud.url("");
    let s = Session::login(&base, "admin", "test-admin-pw")
        .await
        .unwrap();
    let c = &s.config;

    // A wrong password is the server's 401 with its message, not a transport error.
    match Session::login(&base, "admin", "wrong").await {
        Err(SessionError::Api { status, message }) => {
            assert_eq!(status, 401, "{message}");
        }
        other => panic!("a wrong password logged in: {other:?}"),
    }

    let mut pool = CreatePool::new(
        "10.90.0.0/24".into(),
        "rs-net".into(),
        "10.90.0.20".into(),
        "10.90.0.10".into(),
    );
    pool.gateway = Some("10.90.0.1".into());
    let pool = resources_api::pool_create(c, pool).await.unwrap();
    let image = cloud.dir().join("rs.qcow2");
    assert!(std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("16M")
        .status()
        .unwrap()
        .success());
    resources_api::template_create(
        c,
        CreateTemplate::new("rs-tmpl".into(), OsType::Linux, image.display().to_string()),
    )
    .await
    .unwrap();

    let mut events = s.events(Some(0));
    let mut g = CreateGuest::new(1, 64, "rs-tmpl".into());
    g.name = Some("rs-1".into());
    g.pool = Some("rs-net".into());
    let accepted = guests_api::guest_create(c, g).await.unwrap();
    let op = s.wait(&accepted.operations[0].operation_id).await.unwrap();
    assert_eq!(op.state, "succeeded", "{op:?}");

    let listed: Vec<_> = guests_api::guest_list(c, None, None, None, None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.name == "rs-1")
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, GuestState::Running);
    let ip = listed[0].ip.clone().unwrap();
    assert!(ip.starts_with("10.90.0."), "{ip}");

    let off = guests_api::guest_action(c, "rs-1", GuestAction::Poweroff, None)
        .await
        .unwrap();
    assert_eq!(s.wait(&off.operation_id).await.unwrap().state, "succeeded");
    let got = guests_api::guest_get(c, "rs-1").await.unwrap();
    assert_eq!(got.state, GuestState::Shutoff);

    let del = guests_api::guest_delete(c, "rs-1").await.unwrap();
    assert_eq!(s.wait(&del.operation_id).await.unwrap().state, "succeeded");
    let free = resources_api::pool_addresses(c, &pool.id, Some(AddressState::Free), None, None)
        .await
        .unwrap();
    assert!(free.iter().any(|a| a.ip == ip), "{ip} is not free again");

    // Unknown ids are the server's 404 with its message.
    match guests_api::guest_get(c, "no-such-guest").await {
        Err(e) => match SessionError::from(e) {
            SessionError::Api { status, message } => {
                assert_eq!(status, 404);
                assert!(message.contains("no-such-guest"), "{message}");
            }
            other => panic!("{other:?}"),
        },
        Ok(g) => panic!("found {g:?}"),
    }

    // The stream replays from the start: the guest's whole life, in order, no repeats, up
    // to its deletion's end.
    let mut seqs = Vec::new();
    let mut states = Vec::new();
    loop {
        let ev = tokio::time::timeout(std::time::Duration::from_secs(20), events.next())
            .await
            .unwrap_or_else(|_| panic!("the event stream went quiet after {states:?}"))
            .unwrap();
        seqs.push(ev.seq);
        let data = ev.data.clone().unwrap_or_default();
        if ev.kind == "guest.state" {
            states.push(data["state"].as_str().unwrap_or("").to_string());
        }
        if ev.kind == "operation"
            && data["operation_id"] == del.operation_id.as_str()
            && data["state"] == "succeeded"
        {
            break;
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(states.iter().any(|s| s == "running"), "{states:?}");
    assert!(seqs.len() > 10, "{seqs:?}");

    // A second stream resuming after the tenth event starts at the eleventh.
    let mut resumed = s.events(Some(seqs[9]));
    let next = resumed.next().await.unwrap();
    assert_eq!(next.seq, seqs[10]);
}
