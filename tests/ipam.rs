//! IP address management against a real corral (Redis + libvirt test driver): address
//! states, reservations never handed out, ranges, validation, and correcting a guest's IP.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, sdk_error, Cloud};
use corral_client::apis::{guests_api, resources_api};
use corral_client::models::{
    AddRange, Address, AddressState, CorrectIp, CreatePool, GuestState, Pool, SetAddressState,
    StateChanged,
};
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server") && require("qemu-img") && require("genisoimage")
}

async fn states(cloud: &Cloud, pool: &str) -> Vec<(String, String)> {
    resources_api::pool_addresses(&cloud.sdk().config, pool, None, None, None)
        .await
        .unwrap_or_else(|e| panic!("addresses of {pool}: {}", sdk_error(e)))
        .into_iter()
        .map(|a| (a.ip, a.state.to_string()))
        .collect()
}

/// Pool `id`'s record.
async fn pool(cloud: &Cloud, id: &str) -> Pool {
    resources_api::pool_get(&cloud.sdk().config, id)
        .await
        .unwrap_or_else(|e| panic!("pool {id}: {}", sdk_error(e)))
}

/// Sets addresses `start`..=`end` (just `start` when None) of pool `id` to `state`.
async fn set_state(
    cloud: &Cloud,
    id: &str,
    start: &str,
    end: Option<&str>,
    state: AddressState,
    note: Option<&str>,
) -> StateChanged {
    let mut b = SetAddressState::new(start.into(), state);
    b.end = end.map(Into::into);
    b.note = note.map(Into::into);
    resources_api::pool_set_address_state(&cloud.sdk().config, id, b)
        .await
        .unwrap_or_else(|e| panic!("{state} {start} in {id}: {}", sdk_error(e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_states_ranges_and_ip_correction() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    let mk = |body: Value| cloud.post("/ip-pools", body);
    // validation: each error names the field
    let base = json!({"name": "p", "cidr": "198.51.100.0/24", "range_start": "198.51.100.2",
                      "range_end": "198.51.100.6", "gateway": "198.51.100.1", "dns": ["198.51.100.1"]});
    let mut bad = base.clone();
    bad["gateway"] = json!("198.51.100.4");
    let (s, v) = mk(bad).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("gateway"), "{v}");
    let mut bad = base.clone();
    bad["range_end"] = json!("198.51.101.9");
    let (s, v) = mk(bad).await;
    assert_eq!(s, 400, "{v}");
    let mut bad = base.clone();
    bad["cidr"] = json!("198.51.100.0/33");
    let (s, v) = mk(bad).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("cidr"));
    let good: CreatePool = serde_json::from_value(base.clone()).unwrap();
    let p = resources_api::pool_create(&cloud.sdk().config, good.clone())
        .await
        .unwrap_or_else(|e| panic!("pool p: {}", sdk_error(e)));
    assert_eq!(p.size, 5);
    let mut other = base.clone();
    other["name"] = json!("q");
    let (s, v) = mk(other.clone()).await;
    assert_eq!(s, 409, "overlap on the same network: {v}");
    let mut other = good.clone();
    other.name = "q".into();
    other.bridge = Some("br-other".into());
    resources_api::pool_create(&cloud.sdk().config, other)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the same range on another network is fine: {}",
                sdk_error(e)
            )
        });

    // reserve (blacklist) and disable
    let v = set_state(
        &cloud,
        "p",
        "198.51.100.3",
        None,
        AddressState::Reserved,
        Some("VIP"),
    )
    .await;
    assert_eq!(v.changed, 1);
    set_state(
        &cloud,
        "p",
        "198.51.100.4",
        None,
        AddressState::Disabled,
        None,
    )
    .await;
    let reserved = resources_api::pool_addresses(
        &cloud.sdk().config,
        "p",
        Some(AddressState::Reserved),
        None,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("reserved addresses: {}", sdk_error(e)));
    let mut vip = Address::new("198.51.100.3".into(), AddressState::Reserved);
    vip.note = Some("VIP".into());
    assert_eq!(reserved, vec![vip]);

    // allocation skips both
    let ops = cloud
        .create(json!({"name": "ip", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 3, "pool": "p"}))
        .await;
    for (_, op) in &ops {
        assert_eq!(cloud.wait_op(op).await["state"], "succeeded");
    }
    let st = states(&cloud, "p").await;
    let want: Vec<(String, String)> = [
        ("198.51.100.2", "allocated"),
        ("198.51.100.3", "reserved"),
        ("198.51.100.4", "disabled"),
        ("198.51.100.5", "allocated"),
        ("198.51.100.6", "allocated"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(st, want);
    let (s, v) = cloud
        .post(
            "/guests",
            json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "pool": "p"}),
        )
        .await;
    assert_eq!(s, 409, "pool full: {v}");
    // a requested reserved address is refused by name
    let (_, op) = cloud
        .create(json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "ip": "198.51.100.3"}))
        .await[0]
        .clone();
    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "failed");
    assert!(v["error"].as_str().unwrap().contains("reserved"), "{v}");

    // disabling an allocated address: 409, nothing changed
    let (s, v) = cloud
        .post(
            "/ip-pools/p/addresses/state",
            json!({"start": "198.51.100.2", "end": "198.51.100.4", "state": "disabled"}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert!(v["details"]["guest_id"].is_string());
    assert_eq!(states(&cloud, "p").await, want);

    // ranges
    let v = resources_api::pool_add_range(
        &cloud.sdk().config,
        "p",
        AddRange::new("198.51.100.11".into(), "198.51.100.10".into()),
    )
    .await
    .unwrap_or_else(|e| panic!("range: {}", sdk_error(e)));
    assert_eq!((v.size, v.free), (7, 2));
    let (s, _) = cloud
        .post(
            "/ip-pools/p/ranges",
            json!({"start": "198.51.100.6", "end": "198.51.100.8"}),
        )
        .await;
    assert_eq!(s, 409, "overlap");
    let (s, _) = cloud
        .post(
            "/ip-pools/p/ranges",
            json!({"start": "198.51.100.1", "end": "198.51.100.1"}),
        )
        .await;
    assert_eq!(s, 400, "the gateway is never allocatable");

    // correct a guest's recorded IP (S98)
    let gs = guests_api::guest_list(
        &cloud.sdk().config,
        Some(GuestState::Running),
        None,
        None,
        None,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("running guests: {}", sdk_error(e)));
    let (a, b) = (gs[0].id.as_str(), gs[1].ip.as_deref().unwrap());
    let v = guests_api::guest_correct_ip(
        &cloud.sdk().config,
        a,
        CorrectIp::new("198.51.100.10".into()),
    )
    .await
    .unwrap_or_else(|e| panic!("correct the IP of {a}: {}", sdk_error(e)));
    assert_eq!(v.ip.as_deref(), Some("198.51.100.10"));
    let (s, v) = cloud
        .call(
            reqwest::Method::PUT,
            &format!("/guests/{a}/ip"),
            Some(json!({"ip": b})),
        )
        .await;
    assert_eq!(s, 409, "taken by another guest: {v}");
    let (s, v) = cloud
        .call(
            reqwest::Method::PUT,
            &format!("/guests/{a}/ip"),
            Some(json!({"ip": "198.51.100.4"})),
        )
        .await;
    assert_eq!(s, 422, "disabled: {v}");
    let g = guests_api::guest_get(&cloud.sdk().config, a)
        .await
        .unwrap_or_else(|e| panic!("guest {a}: {}", sdk_error(e)));
    assert_eq!(
        g.ip.as_deref(),
        Some("198.51.100.10"),
        "a refused correction changes nothing"
    );
    let p = pool(&cloud, "p").await;
    assert_eq!((p.used, p.free), (3, 2));

    // re-enable and free
    set_state(
        &cloud,
        "p",
        "198.51.100.3",
        Some("198.51.100.4"),
        AddressState::Free,
        None,
    )
    .await;
    let p = pool(&cloud, "p").await;
    assert_eq!((p.reserved, p.disabled, p.free), (0, 0, 4));

    cloud.delete_all_and_check().await;
}
