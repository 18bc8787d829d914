//! Nodes obey only the controller: each node's own Redis user reaches only its own keys,
//! and the controller believes an event only from the node it concerns.
//!
//! Two enrolled nodes on the libvirt test driver and a real Redis. With node A's
//! credentials (what an intruder on node A holds) the test forges jobs and events against
//! node B and checks that Redis or the controller refuses every one, and that nothing
//! they would have changed changed.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use apalis::prelude::TaskSink;
use apalis_redis::RedisStorage;
use common::{require, Cloud};
use corral::model::{NodeAction, NodeEvent, NodeFacts, NodeJob, StepOutcome};
use corral::transport;
use serde_json::{json, Value};

fn parts() -> bool {
    require("redis-server") && require("virsh")
}

/// Whether a Redis reply is an ACL refusal.
fn refused<T: std::fmt::Debug>(r: Result<T, redis::RedisError>) -> bool {
    match r {
        Err(e) => e.code() == Some("NOPERM") || e.to_string().to_lowercase().contains("noperm"),
        Ok(v) => panic!("Redis allowed it: {v:?}"),
    }
}

async fn forge(conn: &mut redis::aio::ConnectionManager, stream_of: &str, ev: &NodeEvent) {
    transport::publish(conn, stream_of, ev).await.unwrap();
}

async fn wait_refusals(cloud: &Cloud, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let r = cloud.events("node.refused").await;
        if r.len() >= n {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the controller recorded fewer than {n} refusals")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nodes_credentials_cannot_act_for_another_node() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    let a = cloud.node_id.clone();
    cloud.add_node("node-b", &[]).await;
    cloud.template("tiny").await;
    let client = redis::Client::open(cloud.node_urls[&a].as_str()).unwrap();
    let mut conn = transport::connect(&cloud.node_urls[&a]).await.unwrap();

    // 1. Redis refuses A's user everything of B's: queue, stream, fences, wake channel.
    let job = NodeJob {
        op_id: "forged".into(),
        step: 0,
        attempt: 1,
        undo: false,
        action: NodeAction::RemoveFile {
            path: "/etc/hostname".into(),
        },
    };
    let mut b_queue: RedisStorage<NodeJob> =
        RedisStorage::new(conn.clone()).with_config(transport::queue_config("node-b"));
    let pushed = b_queue.push(job.clone()).await;
    assert!(
        pushed
            .as_ref()
            .is_err_and(|e| e.to_string().to_lowercase().contains("noperm")),
        "a job pushed onto B's queue: {pushed:?}"
    );
    let cmds: Vec<(&str, redis::Cmd)> = vec![
        (
            "write B's queue",
            redis::cmd("HSET")
                .arg("corral:node:node-b:data")
                .arg("x")
                .arg("y")
                .clone(),
        ),
        (
            "append to B's stream",
            redis::cmd("XADD")
                .arg("corral:events:node-b")
                .arg("*")
                .arg("e")
                .arg("{}")
                .clone(),
        ),
        (
            "read B's fence",
            redis::cmd("GET").arg("corral:fence:node-b:op:0:do").clone(),
        ),
        (
            "write its own fence",
            redis::cmd("SET")
                .arg(format!("corral:fence:{a}:op:0:do"))
                .arg(1)
                .clone(),
        ),
        (
            "wake B",
            redis::cmd("PUBLISH")
                .arg("corral:wake:node-b")
                .arg(1)
                .clone(),
        ),
        ("list keys", redis::cmd("KEYS").arg("*").clone()),
        ("scan keys", redis::cmd("SCAN").arg(0).clone()),
        ("flush", redis::cmd("FLUSHALL").clone()),
        (
            "read the config",
            redis::cmd("CONFIG").arg("GET").arg("requirepass").clone(),
        ),
        ("list users", redis::cmd("ACL").arg("LIST").clone()),
        ("flush scripts", redis::cmd("SCRIPT").arg("FLUSH").clone()),
        // Beyond its keys, or administering its own stream: none of a node's work.
        ("count keys", redis::cmd("DBSIZE").clone()),
        (
            "list channels",
            redis::cmd("PUBSUB").arg("CHANNELS").clone(),
        ),
        ("memory stats", redis::cmd("MEMORY").arg("STATS").clone()),
        (
            "trim its own stream",
            redis::cmd("XTRIM")
                .arg(format!("corral:events:{a}"))
                .arg("MAXLEN")
                .arg(0)
                .clone(),
        ),
        (
            "destroy its stream's group",
            redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(format!("corral:events:{a}"))
                .arg("controller")
                .clone(),
        ),
        (
            "delete from its own stream",
            redis::cmd("XDEL")
                .arg(format!("corral:events:{a}"))
                .arg("0-1")
                .clone(),
        ),
    ];
    let mut table = Vec::new();
    for (what, cmd) in cmds {
        let r: Result<Value, _> = cmd
            .query_async::<redis::Value>(&mut conn)
            .await
            .map(|v| json!(format!("{v:?}")));
        assert!(refused(r), "{what}");
        table.push(what);
    }
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    assert!(
        refused(pubsub.subscribe("corral:wake:node-b").await),
        "subscribe to B's wake channel"
    );
    // Its own fence it may read (that is how it checks a job).
    let own: Option<String> = redis::cmd("GET")
        .arg(format!("corral:fence:{a}:op:0:do"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(own, None);

    // 2. A job forged onto A's own queue never runs: no fence names it, and A cannot
    //    write one.
    let victim = cloud.images().join("victim.qcow2");
    std::fs::create_dir_all(cloud.images()).unwrap();
    std::fs::write(&victim, b"data").unwrap();
    let mut own_queue: RedisStorage<NodeJob> =
        RedisStorage::new(conn.clone()).with_config(transport::queue_config(&a));
    own_queue
        .push(NodeJob {
            action: NodeAction::RemoveFile {
                path: victim.display().to_string(),
            },
            ..job
        })
        .await
        .unwrap();
    redis::cmd("PUBLISH")
        .arg(transport::wake_channel(&a))
        .arg(1)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap();

    // 3. Events forged on A's stream about B.
    let (_, b_before) = cloud.get("/nodes/node-b").await;
    forge(
        &mut conn,
        &a,
        &NodeEvent::Heartbeat {
            node_id: "node-b".into(),
            facts: Box::new(NodeFacts {
                hostname: "forged".into(),
                ..Default::default()
            }),
            at_ms: corral::model::now_ms(),
        },
    )
    .await;
    let (gid, op) = cloud
        .create(json!({"name": "on-b", "template": "tiny", "cpus": 1, "memory_mib": 64, "node": "node-b"}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let (_, guest) = cloud.get(&format!("/guests/{gid}")).await;
    assert_eq!(guest["state"], "running", "{guest}");
    forge(
        &mut conn,
        &a,
        &NodeEvent::DomainState {
            node_id: a.clone(),
            guest_id: gid.clone(),
            state: "shutoff".into(),
            at_ms: corral::model::now_ms() + 1000,
        },
    )
    .await;
    forge(
        &mut conn,
        &a,
        &NodeEvent::DomainXml {
            node_id: "node-b".into(),
            guest_id: gid.clone(),
            xml: "<domain>forged</domain>".into(),
        },
    )
    .await;
    // Figures for B's guest, on A's own stream: dropped (history and `top` are only
    // written for a node's own guests).
    forge(
        &mut conn,
        &a,
        &NodeEvent::Metrics {
            node_id: a.clone(),
            at_ms: corral::model::now_ms(),
            host: Default::default(),
            guests: vec![corral::model::GuestSample {
                guest_id: gid.clone(),
                values: [("memory_bytes".to_string(), 12_345_678.0)].into(),
            }],
        },
    )
    .await;

    // 4. A step result for B's operation, sent by A while B's build is in flight: B is
    //    frozen, so the real result cannot come first.
    cloud.extra_nodes[0].signal("STOP");
    let (gid2, op2) = cloud
        .create(json!({"name": "held", "template": "tiny", "cpus": 1, "memory_mib": 64, "node": "node-b"}))
        .await[0]
        .clone();
    let mut build = None;
    for _ in 0..100 {
        let (_, v) = cloud.get(&format!("/operations/{op2}")).await;
        if let Some((i, s)) = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .find(|(_, s)| s["name"] == "build" && s["state"] == "running")
        {
            build = Some((i, s["attempt"].as_u64().unwrap() as u32));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (step, attempt) = build.expect("the build step was dispatched to node-b");
    forge(
        &mut conn,
        &a,
        &NodeEvent::StepFinished {
            node_id: a.clone(),
            op_id: op2.clone(),
            step,
            attempt,
            undo: false,
            outcome: StepOutcome::Ok {
                guest_state: Some("running".into()),
                domain_xml: None,
                output: None,
            },
            log: vec![corral::model::LogLine {
                at_ms: 0,
                level: "info".into(),
                message: "forged by node-a".into(),
                detail: String::new(),
            }],
        },
    )
    .await;
    let refusals = wait_refusals(&cloud, 3).await;
    let reasons: Vec<&str> = refusals
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("claiming node node-b")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("operation {op2}"))),
        "{reasons:?}"
    );
    let (_, v) = cloud.get(&format!("/operations/{op2}")).await;
    assert_eq!(
        v["steps"][step]["state"], "running",
        "the forged result was applied: {v}"
    );

    // Nothing the forgeries named changed.
    let (_, b_after) = cloud.get("/nodes/node-b").await;
    assert_eq!(b_after["hostname"], b_before["hostname"]);
    let (_, guest) = cloud.get(&format!("/guests/{gid}")).await;
    assert_eq!(guest["state"], "running", "{guest}");
    assert!(!guest.to_string().contains("forged"), "{guest}");
    let (_, log) = cloud.get(&format!("/operations/{op2}/log")).await;
    assert!(!log.to_string().contains("forged"), "{log}");
    let (_, history) = cloud
        .get(&format!("/guests/{gid}/metrics?series=memory_bytes"))
        .await;
    let (_, now) = cloud.get("/metrics/guests").await;
    for v in [&history, &now] {
        assert!(
            !v.to_string().contains("12345678"),
            "A's figures for B's guest were kept: {v}"
        );
    }
    assert!(
        victim.exists(),
        "a job A queued for itself ran without a fence"
    );

    // B thaws and finishes its own work.
    cloud.extra_nodes[0].signal("CONT");
    assert_eq!(cloud.wait_op(&op2).await["state"], "succeeded");
    let (_, g2) = cloud.get(&format!("/guests/{gid2}")).await;
    assert_eq!(g2["state"], "running", "{g2}");
    println!(
        "refused by Redis: a queue push, {} commands and a subscription; refused by the controller: {} events ({reasons:?})",
        table.len(),
        refusals.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_rotated_credential_stops_working_and_enrollment_checks_its_input() {
    if !parts() {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let a = cloud.node_id.clone();
    let old = cloud.node_urls[&a].clone();

    for (body, want) in [
        (json!({"id": "bad*id"}), 400),
        (json!({"id": ""}), 400),
        (json!({"id": "x".repeat(65)}), 400),
        (json!({"id": a}), 409),
        (json!({}), 400),
    ] {
        let (s, v) = cloud.post("/nodes", body.clone()).await;
        assert_eq!(s, want, "{body}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    assert_eq!(
        cloud.post("/nodes/nobody/credential", json!({})).await.0,
        404
    );
    assert_eq!(cloud.delete("/nodes/nobody/credential").await.0, 404);

    // A connection logged in with the old secret (an intruder's, or the node's own).
    let mut open = redis::Client::open(old.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("PING").query_async(&mut open).await.unwrap();

    // Rotation: the old secret is refused at once, and its open connections are cut.
    let (s, v) = cloud
        .post(&format!("/nodes/{a}/credential"), json!({}))
        .await;
    assert_eq!(s, 201, "{v}");
    let new = v["redis_url"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let ping = |url: String| async move {
        let c = redis::Client::open(url.as_str()).unwrap();
        match c.get_multiplexed_async_connection().await {
            Ok(mut c) => redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok(),
            Err(_) => false,
        }
    };
    assert!(!ping(old.clone()).await, "the old secret still works");
    assert!(ping(new.clone()).await, "the new secret does not work");
    assert!(
        redis::cmd("PING")
            .query_async::<String>(&mut open)
            .await
            .is_err(),
        "a connection opened with the old secret still works"
    );

    // Revocation: the user goes within a sync round.
    assert_eq!(cloud.delete(&format!("/nodes/{a}/credential")).await.0, 204);
    let mut gone = false;
    for _ in 0..50 {
        if !ping(new.clone()).await {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the revoked secret still works");
    // The secret is never shown again.
    let (_, n) = cloud.get(&format!("/nodes/{a}")).await;
    assert!(!n
        .to_string()
        .contains(new.rsplit_once(':').unwrap().1.split('@').next().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_users_come_back_after_redis_restarts_without_them() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    cloud.template("tiny").await;
    // Redis forgets ACL users on restart; the controller installs them again.
    cloud.redis.restart();
    let (_, op) = cloud
        .create(json!({"name": "after", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
}

/// A node is trusted for its work, not its claims: a heartbeat that claims a thousand
/// times the CPUs and memory, a huge over-commit and `/` as its disk-image directory (to
/// attract guests and their secrets, and to make every template path "a guest's disk")
/// changes nothing placement or template registration sees; the claim is shown as held
/// until an administrator accepts it, and `/` is never accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_lie_its_way_to_capacity_or_directories() {
    if !parts() {
        return;
    }
    let mut cloud = Cloud::split("test:///default").await;
    let a = cloud.node_id.clone();
    let (_, honest) = cloud.get(&format!("/nodes/{a}")).await;
    let storage_dir = honest["storage_dir"].as_str().unwrap().to_string();
    assert!(!storage_dir.is_empty(), "{honest}");
    // The intruder holds the node's credential; the real agent is gone.
    cloud.node.as_mut().unwrap().kill9();
    let mut conn = transport::connect(&cloud.node_urls[&a]).await.unwrap();
    let facts: NodeFacts = serde_json::from_value(honest_facts(&honest)).unwrap();
    let lie = NodeFacts {
        cpus: facts.cpus * 1000,
        memory_mib: 1 << 40,
        free_memory_mib: 1 << 40,
        memory_overcommit: Some(1000.0),
        storage_dir: "/".into(),
        ..facts
    };
    forge(
        &mut conn,
        &a,
        &NodeEvent::Heartbeat {
            node_id: a.clone(),
            facts: Box::new(lie.clone()),
            at_ms: corral::model::now_ms(),
        },
    )
    .await;
    let mut node = Value::Null;
    for _ in 0..50 {
        node = cloud.get(&format!("/nodes/{a}")).await.1;
        if !node["held"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node["held"]["cpus"], json!(lie.cpus), "{node}");
    assert_eq!(node["held"]["storage_dir"], "/", "{node}");
    assert_eq!(node["cpus"], honest["cpus"], "{node}");
    assert_eq!(node["memory_mib"], honest["memory_mib"], "{node}");
    assert_eq!(node["storage_dir"], json!(storage_dir), "{node}");
    // Template registration still works for everyone.
    cloud.template("still-fine").await;
    // Placement: a guest the claimed memory would fit, the accepted memory does not.
    let (s, v) = cloud
        .post(
            "/guests",
            json!({"name": "big", "template": "still-fine", "cpus": 1,
                   "memory_mib": honest["memory_mib"].as_u64().unwrap() * 8}),
        )
        .await;
    if s == 202 {
        let op = v["operations"][0]["operation_id"].as_str().unwrap();
        let done = cloud.wait_op(op).await;
        assert_eq!(done["state"], "failed", "placed on a lie: {done}");
    } else {
        assert!(s == 409 || s == 422, "{s} {v}");
    }
    // An administrator accepts the claim: the figures, never `/`.
    let (s, v) = cloud
        .post(&format!("/nodes/{a}/capacity"), json!(null))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cpus"], json!(lie.cpus), "{v}");
    assert_eq!(v["storage_dir"], json!(storage_dir), "{v}");
    // Not an operator's act.
    let op_token = {
        let (s, u) = cloud
            .post(
                "/users",
                json!({"name": "olga", "password": "olga-password", "role": "operator"}),
            )
            .await;
        assert_eq!(s, 201, "{u}");
        let r: Value = reqwest::Client::new()
            .post(cloud.url("/auth/login"))
            .json(&json!({"username": "olga", "password": "olga-password"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["token"].as_str().unwrap().to_string()
    };
    let (s, _) = cloud
        .call_as(
            &op_token,
            reqwest::Method::POST,
            &format!("/nodes/{a}/capacity"),
            None,
        )
        .await;
    assert_eq!(s, 403);
}

/// The facts a node view shows, as a heartbeat carries them.
fn honest_facts(n: &Value) -> Value {
    json!({
        "hostname": n["hostname"], "address": n["address"], "domain_type": n["domain_type"],
        "cpus": n["cpus"], "memory_mib": n["memory_mib"], "free_memory_mib": n["free_memory_mib"],
        "load1": n["load1"], "storage_dir": n["storage_dir"], "bridge": n["vm_network_bridge"],
        "manage_bridge": n["vm_manage_network_bridge"], "hypervisor_uri": n["hypervisor_uri"],
        "version": n["version"], "workers": [], "bridges": n["bridges"],
        "storage_total_mib": n["storage_total_mib"], "storage_free_mib": n["storage_free_mib"],
        "cpu_overcommit": 64.0, "memory_overcommit": 4.0,
    })
}
