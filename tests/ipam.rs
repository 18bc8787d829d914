//! IP address management against a real corral (Redis + libvirt test driver): address
//! states, reservations never handed out, ranges, validation, and correcting a guest's IP.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, Cloud};
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server") && require("qemu-img") && require("genisoimage")
}

async fn states(cloud: &Cloud, pool: &str) -> Vec<(String, String)> {
    let (s, v) = cloud.get(&format!("/ip-pools/{pool}/addresses")).await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["ip"].as_str().unwrap().to_string(),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
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
    let (s, p) = mk(base.clone()).await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(p["size"], 5);
    let mut other = base.clone();
    other["name"] = json!("q");
    let (s, v) = mk(other.clone()).await;
    assert_eq!(s, 409, "overlap on the same network: {v}");
    other["bridge"] = json!("br-other");
    let (s, v) = mk(other).await;
    assert_eq!(s, 201, "the same range on another network is fine: {v}");

    // reserve (blacklist) and disable
    let (s, v) = cloud
        .post(
            "/ip-pools/p/addresses/state",
            json!({"start": "198.51.100.3", "state": "reserved", "note": "VIP"}),
        )
        .await;
    assert_eq!((s, v["changed"].as_u64()), (200, Some(1)));
    let (s, _) = cloud
        .post(
            "/ip-pools/p/addresses/state",
            json!({"start": "198.51.100.4", "state": "disabled"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, reserved) = cloud.get("/ip-pools/p/addresses?state=reserved").await;
    assert_eq!(
        reserved,
        json!([{"ip": "198.51.100.3", "state": "reserved", "note": "VIP"}])
    );

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
    let (s, v) = cloud
        .post(
            "/guests",
            json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "ip": "198.51.100.3"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let v = cloud
        .wait_op(v["operations"][0]["operation_id"].as_str().unwrap())
        .await;
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
    let (s, v) = cloud
        .post(
            "/ip-pools/p/ranges",
            json!({"start": "198.51.100.10", "end": "198.51.100.11"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["size"].as_u64(), v["free"].as_u64()), (Some(7), Some(2)));
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
    let (_, guests) = cloud.get("/guests?state=running").await;
    let gs = guests.as_array().unwrap();
    let (a, b) = (gs[0]["id"].as_str().unwrap(), gs[1]["ip"].as_str().unwrap());
    let (s, v) = cloud
        .call(
            reqwest::Method::PUT,
            &format!("/guests/{a}/ip"),
            Some(json!({"ip": "198.51.100.10"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ip"], "198.51.100.10");
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
    let (_, g) = cloud.get(&format!("/guests/{a}")).await;
    assert_eq!(
        g["ip"], "198.51.100.10",
        "a refused correction changes nothing"
    );
    let (_, pool) = cloud.get("/ip-pools/p").await;
    assert_eq!(
        (pool["used"].as_u64(), pool["free"].as_u64()),
        (Some(3), Some(2))
    );

    // re-enable and free
    let (s, _) = cloud
        .post(
            "/ip-pools/p/addresses/state",
            json!({"start": "198.51.100.3", "end": "198.51.100.4", "state": "free"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, pool) = cloud.get("/ip-pools/p").await;
    assert_eq!(
        (
            pool["reserved"].as_u64(),
            pool["disabled"].as_u64(),
            pool["free"].as_u64()
        ),
        (Some(0), Some(0), Some(4))
    );

    cloud.delete_all_and_check().await;
}
