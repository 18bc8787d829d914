//! Integration tests of the spine against real parts: a real Redis, the real `corral`
//! binary, and libvirt's built-in test driver (`test:///default`, no daemon needed).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{read_sse, require, sdk_error, Cloud};
use corral_client::apis::{guests_api, nodes_api, operations_api, resources_api};
use corral_client::models::{Guest, GuestAction, GuestState, Node, Operation};
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server") && require("qemu-img") && require("genisoimage")
}

/// Guest `gid`'s record.
async fn guest(cloud: &Cloud, gid: &str) -> Guest {
    guests_api::guest_get(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("guest {gid}: {}", sdk_error(e)))
}

/// Every guest (the API's default page).
async fn guests(cloud: &Cloud) -> Vec<Guest> {
    guests_api::guest_list(&cloud.sdk().config, None, None, None, None, None)
        .await
        .unwrap_or_else(|e| panic!("guests: {}", sdk_error(e)))
}

/// Deletes guest `gid`; returns the operation's id.
async fn delete_guest(cloud: &Cloud, gid: &str) -> String {
    guests_api::guest_delete(&cloud.sdk().config, gid)
        .await
        .unwrap_or_else(|e| panic!("delete guest {gid}: {}", sdk_error(e)))
        .operation_id
}

/// Node `id`'s record.
async fn node(cloud: &Cloud, id: &str) -> Node {
    nodes_api::node_get(&cloud.sdk().config, id)
        .await
        .unwrap_or_else(|e| panic!("node {id}: {}", sdk_error(e)))
}

/// Operations, all or only the active ones.
async fn operations(cloud: &Cloud, active: Option<bool>) -> Vec<Operation> {
    operations_api::operation_list(&cloud.sdk().config, None, None, None, active, None, None)
        .await
        .unwrap_or_else(|e| panic!("operations: {}", sdk_error(e)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_delete_many_guests_leaves_nothing_behind() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.60").await;
    let accepted = cloud
        .create(json!({"name": "web", "template": "tiny", "cpus": 1, "memory_mib": 128, "count": 24, "password": "pw"}))
        .await;
    assert_eq!(accepted.len(), 24);
    for (_, op) in &accepted {
        let v = cloud.wait_op(op).await;
        assert_eq!(v["state"], "succeeded", "{v}");
        assert_eq!(v["progress"]["percent"], 100);
    }
    // Raw: `vnc_password` (which must be absent) is not in the SDK's Guest model.
    let (_, guests) = cloud.get("/guests?limit=1000").await;
    let guests = guests.as_array().unwrap().clone();
    assert_eq!(guests.len(), 24);
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    let mut macs = HashSet::new();
    for g in &guests {
        assert_eq!(g["state"], "running", "{g}");
        assert!(
            ips.insert(g["ip"].as_str().unwrap().to_string()),
            "duplicate IP"
        );
        assert!(
            ports.insert(g["vnc_port"].as_u64().unwrap()),
            "duplicate VNC port"
        );
        assert!(
            macs.insert(g["mac"].as_str().unwrap().to_string()),
            "duplicate MAC"
        );
        let sys = g["disks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["kind"] == "system")
            .unwrap();
        let path = sys["path"].as_str().unwrap();
        assert!(
            std::path::Path::new(path).exists(),
            "system disk {path} missing"
        );
        assert!(
            g.get("vnc_password").is_none(),
            "secrets never leave the API"
        );
    }
    assert_eq!(cloud.image_files().len(), 48, "a disk and a seed per guest");

    // power actions go through operations too
    let g0 = guests[0]["id"].as_str().unwrap();
    for (action, state) in [
        (GuestAction::Suspend, GuestState::Paused),
        (GuestAction::Resume, GuestState::Running),
        (GuestAction::Poweroff, GuestState::Shutoff),
        (GuestAction::Start, GuestState::Running),
    ] {
        let v = guests_api::guest_action(&cloud.sdk().config, g0, action, None)
            .await
            .unwrap_or_else(|e| panic!("{action} {g0}: {}", sdk_error(e)));
        let op = cloud.wait_op(&v.operation_id).await;
        assert_eq!(op["state"], "succeeded", "{op}");
        assert_eq!(guest(&cloud, g0).await.state, state, "after {action}");
    }

    cloud.delete_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_racing_for_a_small_pool_never_share_an_address() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    cloud.pool("small", "192.0.2.10", "192.0.2.14").await; // 5 addresses
    let reqs = (0..9).map(|i| {
        cloud.post(
            "/guests",
            json!({"name": format!("race-{i}"), "template": "tiny", "cpus": 1, "memory_mib": 128}),
        )
    });
    let answers = futures::future::join_all(reqs).await;
    let mut ops = Vec::new();
    let mut refused = 0;
    for (s, v) in answers {
        match s {
            202 => ops.push(
                v["operations"][0]["operation_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            409 => {
                assert!(
                    v["message"].as_str().unwrap().contains("free address"),
                    "{v}"
                );
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let mut succeeded = 0;
    for op in &ops {
        let v = cloud.wait_op(op).await;
        match v["state"].as_str().unwrap() {
            "succeeded" => succeeded += 1,
            "failed" => assert!(
                v["error"].as_str().unwrap().contains("no free address"),
                "{v}"
            ),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(
        succeeded, 5,
        "exactly the pool's size wins ({refused} refused up front)"
    );
    let guests = guests(&cloud).await;
    let running: Vec<&Guest> = guests
        .iter()
        .filter(|g| g.state == GuestState::Running)
        .collect();
    let ips: HashSet<&str> = running.iter().map(|g| g.ip.as_deref().unwrap()).collect();
    assert_eq!(ips.len(), 5, "no duplicates");
    // losers hold nothing: their guests are in state error without address or files
    for g in guests.iter().filter(|g| g.state == GuestState::Error) {
        assert!(
            g.ip.is_none() && g.vnc_port.is_none() && g.mac.is_none(),
            "{g:?}"
        );
        assert!(g.disks.is_empty());
    }
    let pools = resources_api::pool_list(&cloud.sdk().config)
        .await
        .unwrap_or_else(|e| panic!("pools: {}", sdk_error(e)));
    assert_eq!(pools[0].used, 5);
    assert_eq!(cloud.image_files().len(), 10);
    // a guest whose creation failed can be deleted (S30); then everything is gone
    let mut dels = Vec::new();
    for g in &guests {
        dels.push(delete_guest(&cloud, &g.id).await);
    }
    for d in dels {
        assert_eq!(cloud.wait_op(&d).await["state"], "succeeded");
    }
    cloud.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_guest_answers_409_naming_the_operation_and_cancel_unwinds() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.20").await;
    // Freeze the node: the create stays at its first node step, holding the guest.
    cloud.node.as_ref().unwrap().signal("STOP");
    let (gid, op) = cloud
        .create(json!({"name": "busy", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    let (s, v) = cloud
        .post(&format!("/guests/{gid}/actions/reboot"), json!(null))
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["code"], "conflict");
    assert_eq!(v["details"]["operation_id"], json!(op));
    assert!(v["message"].as_str().unwrap().contains(&op));
    let (s, _) = cloud.delete(&format!("/guests/{gid}")).await;
    assert_eq!(s, 409);

    // Cancel: honoured at the next step boundary, then every completed step is undone.
    operations_api::operation_cancel(&cloud.sdk().config, &op)
        .await
        .unwrap_or_else(|e| panic!("cancel {op}: {}", sdk_error(e)));
    cloud.node.as_ref().unwrap().signal("CONT");
    let v = cloud.wait_op(&op).await;
    assert_eq!(v["state"], "cancelled", "{v}");
    let undone: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert!(
        undone.iter().all(|s| *s == "undone" || *s == "pending"),
        "{undone:?}"
    );
    cloud.assert_no_leaks().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_message_and_creates_nothing() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    cloud.pool("lan", "192.0.2.10", "192.0.2.11").await;
    let cases = [
        (
            json!({"template": "nope", "cpus": 1, "memory_mib": 128}),
            422,
            "unknown template",
        ),
        (
            json!({"template": "tiny", "cpus": 1, "memory_mib": 16}),
            422,
            "below the minimum",
        ),
        (
            json!({"template": "tiny", "cpus": 0, "memory_mib": 128}),
            400,
            "cpus",
        ),
        (
            json!({"template": "tiny", "cpus": 1, "memory_mib": 128, "extra": 1}),
            400,
            "unknown field",
        ),
        (
            json!({"template": "tiny", "cpus": 1, "memory_mib": 128, "count": 3}),
            409,
            "free address",
        ),
        (
            json!({"template": "tiny", "cpus": 1, "memory_mib": 128, "name": "Bad_Name"}),
            400,
            "invalid",
        ),
        (
            json!({"template": "tiny", "cpus": 1, "memory_mib": 128, "ip": "10.9.9.9"}),
            422,
            "not inside",
        ),
        (
            json!({"template": "tiny", "cpus": 1, "memory_mib": 128, "node": "ghost"}),
            422,
            "unknown node",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, v) = cloud.post("/guests", body.clone()).await;
        assert_eq!(s, status, "{body} -> {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "{body}: {msg:?} should mention {needle:?}"
        );
        assert!(v["code"].is_string());
    }
    // malformed JSON and no token: same error body
    let http = reqwest::Client::new();
    let r = http
        .post(cloud.url("/guests"))
        .bearer_auth(cloud.token())
        .header("content-type", "application/json")
        .body("{\"template\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "bad_request");
    let r = http.get(cloud.url("/guests")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "unauthorized");
    // nothing was created
    let g = guests(&cloud).await;
    assert!(g.is_empty(), "{g:?}");
    let ops = operations(&cloud, None).await;
    assert!(ops.is_empty(), "{ops:?}");
    // a template in use cannot be deleted (S53)
    cloud.pool("more", "192.0.2.100", "192.0.2.101").await;
    let (gid, op) = cloud
        .create(json!({"template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    cloud.wait_op(&op).await;
    let (s, v) = cloud.delete("/templates/tiny").await;
    assert_eq!(s, 409, "{v}");
    cloud.wait_op(&delete_guest(&cloud, &gid).await).await;
    resources_api::template_delete(&cloud.sdk().config, "tiny")
        .await
        .unwrap_or_else(|e| panic!("delete template tiny: {}", sdk_error(e)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_stream_resumes_from_last_event_id_without_gaps() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    let http = reqwest::Client::new();
    let mut resp = http
        .get(cloud.url("/events?after=0"))
        .bearer_auth(cloud.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut buf = String::new();
    let first = read_sse(&mut resp, &mut buf, 1, Duration::from_secs(10)).await;
    assert!(!first.is_empty(), "the node's online event is in the log");
    let last_seen = first.last().unwrap().0;
    drop(resp); // disconnect

    let (_, op) = cloud
        .create(json!({"name": "ev", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    cloud.wait_op(&op).await;

    let mut resp = http
        .get(cloud.url("/events"))
        .bearer_auth(cloud.token())
        .header("Last-Event-ID", last_seen.to_string())
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        got.extend(read_sse(&mut resp, &mut buf, 1000, Duration::from_secs(1)).await);
        let done = got.iter().any(|(_, e)| {
            e["kind"] == "operation"
                && e["data"]["operation_id"] == json!(op)
                && e["data"]["state"] == "succeeded"
        });
        if done {
            break;
        }
    }
    assert!(!got.is_empty());
    assert_eq!(
        got[0].0,
        last_seen + 1,
        "replay starts right after Last-Event-ID"
    );
    for w in got.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "no gaps in the sequence");
    }
    let op_events: Vec<&Value> = got
        .iter()
        .map(|(_, e)| e)
        .filter(|e| e["data"]["operation_id"] == json!(op))
        .collect();
    assert!(
        op_events.iter().any(|e| e["data"]["state"] == "succeeded"),
        "missed the end of the operation"
    );
    assert!(
        op_events
            .iter()
            .any(|e| e["data"]["percent"].as_i64().unwrap_or(0) > 0
                && e["data"]["percent"].as_i64().unwrap_or(0) < 100),
        "progress in between"
    );
    assert!(got
        .iter()
        .any(|(_, e)| e["kind"] == "guest.state" && e["data"]["state"] == "running"));
    let r = http
        .get(cloud.url("/events"))
        .bearer_auth(cloud.token())
        .header("Last-Event-ID", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_goes_offline_and_its_guests_read_unknown_until_it_returns() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    let (gid, op) = cloud
        .create(json!({"name": "lonely", "template": "tiny", "cpus": 1, "memory_mib": 128}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    cloud.node.as_ref().unwrap().signal("STOP");
    let mut offline = None;
    for _ in 0..200 {
        let n = node(&cloud, &cloud.node_id).await;
        if !n.online {
            offline = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let offline = offline.expect("node never went offline");
    assert!(
        offline.offline_since.is_some() && offline.offline_seconds.is_some(),
        "{offline:?}"
    );
    assert_eq!(guest(&cloud, &gid).await.state, GuestState::Unknown);
    cloud.node.as_ref().unwrap().signal("CONT");
    let mut back = GuestState::Unknown;
    for _ in 0..200 {
        back = guest(&cloud, &gid).await.state;
        if back == GuestState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        back,
        GuestState::Running,
        "the reconcile restores the real state"
    );
    // The inventory and the next heartbeat travel separately: wait for the heartbeat too.
    let mut n = node(&cloud, &cloud.node_id).await;
    for _ in 0..100 {
        if n.online {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = node(&cloud, &cloud.node_id).await;
    }
    assert!(n.online, "{n:?}");
    assert!(n.offline_since.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_stays_in_sql_and_only_the_window_reaches_the_node() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split_with(
        "test:///default",
        vec![("CORRAL_DISPATCH_WINDOW".into(), "2".into())],
    )
    .await;
    cloud.template("tiny").await;
    let ops = cloud
        .create(json!({"name": "w", "template": "tiny", "cpus": 1, "memory_mib": 64, "count": 12}))
        .await;
    let mut max_out = 0;
    loop {
        let active = operations(&cloud, Some(true)).await;
        if active.is_empty() {
            break;
        }
        let out = active
            .iter()
            .filter(|op| {
                op.steps
                    .iter()
                    .any(|s| s.runs_on == "node" && (s.state == "running" || s.state == "undoing"))
            })
            .count();
        max_out = max_out.max(out);
        assert!(out <= 2, "{out} node steps in flight with a window of 2");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(max_out >= 1);
    for (_, op) in ops {
        assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_domains_are_listed_and_never_touched() {
    if !parts() {
        return;
    }
    // libvirt's test driver starts with one domain of its own, named "test".
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    let (_, op) = cloud
        .create(json!({"name": "mine", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    cloud.wait_op(&op).await;
    let mut n = node(&cloud, &cloud.node_id).await;
    for _ in 0..100 {
        if !n.foreign_domains.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = node(&cloud, &cloud.node_id).await;
    }
    let names: Vec<&str> = n.foreign_domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["test"], "{n:?}");
    assert_eq!(n.foreign_domains[0].state, "running", "untouched");
    assert_eq!((n.vnc_port_min, n.vnc_port_max), (Some(5900), Some(6899)));
    let workers: Vec<&str> = n.workers.iter().map(|w| w.name.as_str()).collect();
    for w in ["heartbeat", "queue", "watcher", "vnc-ports"] {
        assert!(workers.contains(&w), "{workers:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limits_are_rendered_and_validated() {
    if !parts() {
        return;
    }
    let cloud = Cloud::up().await;
    cloud.template("tiny").await;
    let bw = json!({"inbound": {"average_kbps": 1000, "peak_kbps": 2000, "burst_kb": 256}, "outbound": {"average_kbps": 500}});
    let (s, v) = cloud
        .post("/guests", json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "bandwidth": {"inbound": {"average_kbps": 0}}}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("inbound.average_kbps"),
        "{v}"
    );
    let (gid, op) = cloud
        .create(json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "bandwidth": bw}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let g = guest(&cloud, &gid).await;
    let inbound = g.bandwidth.and_then(|b| b.inbound).unwrap();
    assert_eq!(inbound.average_kbps, 1000);
    let x = guests_api::guest_domain_xml(&cloud.sdk().config, &gid)
        .await
        .unwrap_or_else(|e| panic!("domain XML of {gid}: {}", sdk_error(e)));
    let xml = x.xml.unwrap();
    assert!(
        xml.contains("<inbound average='1000' peak='2000' burst='256'/>"),
        "{xml}"
    );
    assert!(xml.contains("<outbound average='500'/>"), "{xml}");
}
