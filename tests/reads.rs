//! The list endpoints over a few hundred records: the documented order (ties included),
//! every filter, and limit/offset pages that tile the whole list exactly. The records are
//! written straight into the controller's database, as `corral bench --reads` writes them:
//! behaviour, not time.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use common::{require, Cloud};
use corral::controller::store::{self as st, GuestRow, OpRow, Store};
use serde_json::{json, Value};

const GUESTS: usize = 300;
const T0: i64 = 1_700_000_000_000;

fn parts() -> bool {
    require("redis-server") && require("qemu-img")
}

/// A seeded record, in its list's sort order: (created_at, name or id, ...).
type Rec = (i64, String, String, String, String);

struct Seeded {
    /// (created_at, name, id, state, node)
    guests: Vec<Rec>,
    /// (created_at, id, kind, state, guest)
    ops: Vec<Rec>,
    /// address -> guest
    leases: HashMap<Ipv4Addr, String>,
}

fn lease_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 9, 0, 10)) + (i * 3 + i % 2) as u32)
}

/// Guests in groups of seven sharing a timestamp, named out of insertion order, so the
/// list order depends on the tie-break; one operation each (two for every tenth guest).
async fn seed(store: &Store, pool: &str, template: &str) -> Seeded {
    let mut s = Seeded {
        guests: vec![],
        ops: vec![],
        leases: HashMap::new(),
    };
    let mut tx = store.begin().await.unwrap();
    for i in 0..GUESTS {
        let at = T0 + (i / 7) as i64 * 1000;
        let id = uuid::Uuid::new_v4().to_string();
        let name = format!("g{:03}", (i * 37) % GUESTS);
        let state = if i % 3 == 0 { "shutoff" } else { "running" };
        let node = if i % 2 == 0 { "n-a" } else { "n-b" };
        st::insert_guest(
            &mut tx,
            &GuestRow {
                memory_mib: 128,
                pool_id: Some(pool.into()),
                state: corral::model::GuestState::parse(state).unwrap(),
                ..GuestRow::seeded(&id, &name, template, "/t.qcow2", at)
            },
        )
        .await
        .unwrap();
        let ip = lease_ip(i);
        sqlx::query("UPDATE guests SET node_id = ?, ip = ?, domain_xml = '<domain/>' WHERE id = ?")
            .bind(node)
            .bind(ip.to_string())
            .bind(&id)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO ip_leases (ip, pool_id, guest_id) VALUES (?, ?, ?)")
            .bind(ip.to_string())
            .bind(pool)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .unwrap();
        s.leases.insert(ip, id.clone());
        for kind in ["system", "seed"] {
            st::insert_disk(
                &mut tx,
                &st::DiskRow {
                    id: format!("{id}-{kind}"),
                    guest_id: Some(id.clone()),
                    node_id: node.into(),
                    path: format!("/images/{id}-{kind}"),
                    kind: kind.into(),
                    backing: None,
                    created_at: at,
                },
            )
            .await
            .unwrap();
        }
        for n in 0..1 + usize::from(i % 10 == 0) {
            let op_id = uuid::Uuid::new_v4().to_string();
            let kind = if (i + n) % 2 == 0 {
                "guest.create"
            } else {
                "guest.start"
            };
            // Only finished states: the saga engine must not pick these up.
            let op_state = if i % 4 == 0 { "failed" } else { "succeeded" };
            st::insert_op(
                &mut tx,
                &OpRow {
                    id: op_id.clone(),
                    kind: kind.into(),
                    guest_id: Some(id.clone()),
                    node_id: Some(node.into()),
                    state: corral::model::OpState::parse(op_state).unwrap(),
                    requested_by_id: None,
                    steps: "[]".into(),
                    cursor: 0,
                    payload: "{}".into(),
                    stage: String::new(),
                    percent: 100,
                    message: String::new(),
                    error: None,
                    cancel_requested: false,
                    inflight_node: None,
                    requested_by: "admin".into(),
                    created_at: at,
                    started_at: Some(at),
                    updated_at: at,
                    finished_at: Some(at),
                    abandon_reason: None,
                },
            )
            .await
            .unwrap();
            s.ops
                .push((at, op_id, kind.into(), op_state.into(), id.clone()));
        }
        s.guests.push((at, name, id, state.into(), node.into()));
    }
    store.commit(tx).await.unwrap();
    s.guests.sort();
    s.ops.sort();
    s
}

fn keys(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|e| e[key].as_str().unwrap().to_string())
        .collect()
}

/// The whole list in one page, then in pages of several sizes: the pages must tile it.
async fn check_pages(cloud: &Cloud, path: &str, key: &str, max: usize, want: &[String]) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (s, all) = cloud.get(&format!("{path}{sep}limit={max}")).await;
    assert_eq!(s, 200, "{path}: {all}");
    assert_eq!(keys(&all, key), want, "{path}: one page");
    for size in [1, 7, 100] {
        let mut got = vec![];
        let mut offset = 0;
        loop {
            let (s, page) = cloud
                .get(&format!("{path}{sep}limit={size}&offset={offset}"))
                .await;
            assert_eq!(s, 200, "{path}: {page}");
            let page = keys(&page, key);
            assert!(page.len() <= size, "{path}: {} > limit {size}", page.len());
            let done = page.len() < size;
            got.extend(page);
            offset += size;
            if done || size == 1 && offset >= 40 {
                break;
            }
        }
        let expect = if size == 1 {
            &want[..40.min(want.len())]
        } else {
            want
        };
        assert_eq!(got, expect, "{path}: pages of {size}");
    }
    let (_, past) = cloud
        .get(&format!("{path}{sep}limit=10&offset={}", want.len() + 5))
        .await;
    assert_eq!(past, json!([]), "{path}: past the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_keep_their_order_and_pages_tile_them() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let template = cloud.template("tiny").await;
    let (s, pool) = cloud
        .post(
            "/ip-pools",
            json!({"name": "reads", "cidr": "10.9.0.0/22", "range_start": "10.9.0.10",
                   "range_end": "10.9.3.200", "gateway": "10.9.0.1"}),
        )
        .await;
    assert_eq!(s, 201, "{pool}");
    let pool_id = pool["id"].as_str().unwrap().to_string();
    let (s, v) = cloud
        .post(
            &format!("/ip-pools/{pool_id}/ranges"),
            json!({"start": "10.9.3.220", "end": "10.9.3.240"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for (start, end, state, note) in [
        ("10.9.3.225", "10.9.3.228", "reserved", "vip"),
        ("10.9.0.11", "10.9.0.11", "disabled", "broken"),
    ] {
        let (s, v) = cloud
            .post(
                &format!("/ip-pools/{pool_id}/addresses/state"),
                json!({"start": start, "end": end, "state": state, "note": note}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let store = Store::open(&cloud.dir().join("corral.db")).await.unwrap();
    let seeded = seed(&store, &pool_id, template["id"].as_str().unwrap()).await;

    // Guests: creation time, then name; each filter keeps that order.
    let names = |f: &dyn Fn(&Rec) -> bool| -> Vec<String> {
        seeded
            .guests
            .iter()
            .filter(|g| f(g))
            .map(|g| g.1.clone())
            .collect()
    };
    check_pages(&cloud, "/guests", "name", 1000, &names(&|_| true)).await;
    check_pages(
        &cloud,
        "/guests?state=shutoff",
        "name",
        1000,
        &names(&|g| g.3 == "shutoff"),
    )
    .await;
    check_pages(
        &cloud,
        "/guests?node=n-b",
        "name",
        1000,
        &names(&|g| g.4 == "n-b"),
    )
    .await;
    check_pages(
        &cloud,
        "/guests?node=n-a&state=running",
        "name",
        1000,
        &names(&|g| g.4 == "n-a" && g.3 == "running"),
    )
    .await;
    let (_, page) = cloud.get("/guests?limit=1&offset=5").await;
    assert_eq!(page[0]["disks"].as_array().unwrap().len(), 2, "{page}");

    // Operations: creation time, then id.
    let ops = |f: &dyn Fn(&Rec) -> bool| -> Vec<String> {
        seeded
            .ops
            .iter()
            .filter(|o| f(o))
            .map(|o| o.1.clone())
            .collect()
    };
    check_pages(&cloud, "/operations", "id", 1000, &ops(&|_| true)).await;
    check_pages(
        &cloud,
        "/operations?state=failed",
        "id",
        1000,
        &ops(&|o| o.3 == "failed"),
    )
    .await;
    check_pages(
        &cloud,
        "/operations?kind=guest.start&state=succeeded",
        "id",
        1000,
        &ops(&|o| o.2 == "guest.start" && o.3 == "succeeded"),
    )
    .await;
    let guest = &seeded.guests[3].2;
    check_pages(
        &cloud,
        &format!("/operations?guest_id={guest}"),
        "id",
        1000,
        &ops(&|o| &o.4 == guest),
    )
    .await;
    let (_, active) = cloud.get("/operations?active=true").await;
    assert_eq!(active, json!([]), "only finished operations were seeded");

    // Addresses: range by range, ascending, each with its holder.
    let all: Vec<Ipv4Addr> = (u32::from(Ipv4Addr::new(10, 9, 0, 10))
        ..=u32::from(Ipv4Addr::new(10, 9, 3, 200)))
        .chain(u32::from(Ipv4Addr::new(10, 9, 3, 220))..=u32::from(Ipv4Addr::new(10, 9, 3, 240)))
        .map(Ipv4Addr::from)
        .collect();
    let state_of = |ip: &Ipv4Addr| {
        let o = ip.octets();
        if seeded.leases.contains_key(ip) {
            "allocated"
        } else if o[2] == 3 && (225..=228).contains(&o[3]) {
            "reserved"
        } else if *ip == Ipv4Addr::new(10, 9, 0, 11) {
            "disabled"
        } else {
            "free"
        }
    };
    let addrs = format!("/ip-pools/{pool_id}/addresses");
    for filter in [
        None,
        Some("allocated"),
        Some("free"),
        Some("reserved"),
        Some("disabled"),
    ] {
        let want: Vec<String> = all
            .iter()
            .filter(|ip| filter.is_none_or(|f| state_of(ip) == f))
            .map(|ip| ip.to_string())
            .collect();
        let path = match filter {
            None => addrs.clone(),
            Some(f) => format!("{addrs}?state={f}"),
        };
        check_pages(&cloud, &path, "ip", 4096, &want).await;
    }
    let (_, page) = cloud.get(&format!("{addrs}?limit=4096")).await;
    for a in page.as_array().unwrap() {
        let ip: Ipv4Addr = a["ip"].as_str().unwrap().parse().unwrap();
        assert_eq!(a["state"], state_of(&ip), "{a}");
        assert_eq!(
            a["guest_id"].as_str(),
            seeded.leases.get(&ip).map(|g| g.as_str()),
            "{a}"
        );
        let note = match state_of(&ip) {
            "reserved" => Some("vip"),
            "disabled" => Some("broken"),
            _ => None,
        };
        assert_eq!(a["note"].as_str(), note, "{a}");
    }
}
