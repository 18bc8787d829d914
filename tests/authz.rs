//! The authorization matrix: every endpoint × every role × own / other's resource, against
//! a real corral (Redis + libvirt test driver).
//!
//! Callers: `admin`; `olga`, an operator; `ann`, a user who owns the resources under test
//! (a guest, its operation and boot job, a private template, a boot script, a token); and
//! `bob`, another user. Each row names an endpoint and what each caller must get:
//! `A` allowed (anything but 401, 403 and 404: a 409 or 422 after the check is still an
//! answer about the resource), `H` hidden (404, as if it did not exist), `F` forbidden
//! (403, the role may not), or an exact status. Destructive rows come last, ordered so
//! that each caller still finds what it acts on.
#![allow(clippy::unwrap_used)]

mod common;

use common::{require, Cloud};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug)]
enum Want {
    A,
    H,
    F,
    S(u16),
}
use Want::{A, F, H, S};

struct Caller {
    name: &'static str,
    token: String,
}

async fn call(
    cloud: &Cloud,
    token: &str,
    m: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(m, cloud.url(path))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    let stream = resp
        .headers()
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"));
    if stream {
        // The event stream never ends: its status is the answer.
        return (s, Value::Null);
    }
    let text = resp.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn ok(want: Want, got: u16) -> bool {
    match want {
        A => ![401, 403, 404].contains(&got) && got < 500,
        H => got == 404,
        F => got == 403,
        S(s) => got == s,
    }
}

async fn login(cloud: &Cloud, user: &str, pw: &str) -> String {
    let r = reqwest::Client::new()
        .post(cloud.url("/auth/login"))
        .json(&json!({"username": user, "password": pw}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "login {user}");
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_each_role_as_its_rights_say() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let cloud = Cloud::split("test:///default").await;
    let admin = cloud.token().to_string();
    for (name, role) in [("olga", "operator"), ("ann", "user"), ("bob", "user")] {
        let (s, v) = cloud
            .post(
                "/users",
                json!({"name": name, "password": format!("{name}-password"), "role": role}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let olga = login(&cloud, "olga", "olga-password").await;
    let ann = login(&cloud, "ann", "ann-password").await;
    let bob = login(&cloud, "bob", "bob-password").await;
    let as_ = |t: &str| t.to_string();

    // The world: an admin's pool and public template; ann's guest (with its operation and
    // a pending boot job), private template, boot script and token.
    cloud.pool("p", "192.0.2.10", "192.0.2.60").await;
    cloud.template("tiny").await;
    // A user's own template comes by upload: registering by path is an administrator's.
    let image = std::fs::read(cloud.dir().join("tiny.qcow2")).unwrap();
    let sum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&image));
    let r = reqwest::Client::new()
        .put(cloud.url(&format!(
            "/templates/ann-tmpl/image?os_type=linux&sha256={sum}"
        )))
        .bearer_auth(&ann)
        .header("content-type", "application/octet-stream")
        .body(image)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["public"], false, "a user's template is private: {v}");
    let (s, v) = call(&cloud, &ann, Method::POST, "/guests",
        Some(json!({"name": "ann-1", "template": "ann-tmpl", "cpus": 1, "memory_mib": 64, "pool": "p"}))).await;
    assert_eq!(s, 202, "{v}");
    let ann_op = v["operations"][0]["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let g = v["operations"][0]["guest_id"].as_str().unwrap().to_string();
    assert_eq!(cloud.wait_op(&ann_op).await["state"], "succeeded");
    let (s, v) = call(
        &cloud,
        &bob,
        Method::POST,
        "/guests",
        Some(
            json!({"name": "bob-1", "template": "tiny", "cpus": 1, "memory_mib": 64, "pool": "p"}),
        ),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let bob_op = v["operations"][0]["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    cloud.wait_op(&bob_op).await;
    let (s, v) = call(
        &cloud,
        &ann,
        Method::POST,
        "/disks",
        Some(json!({"name": "ann-disk", "size_gib": 1, "guest": g})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let ann_disk = v["disk_id"].as_str().unwrap().to_string();
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    let (s, v) = call(
        &cloud,
        &ann,
        Method::POST,
        "/boot-scripts",
        Some(json!({"name": "ann-motd", "source": "fn actions(guest, params) { [] }"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        &cloud,
        &ann,
        Method::POST,
        "/boot-jobs",
        Some(json!({"guests": [g], "script": "ann-motd"})),
    )
    .await;
    assert_eq!(s, 202, "{v}");
    let job = v["jobs"][0]["id"].as_str().unwrap().to_string();
    let (_, v) = call(
        &cloud,
        &ann,
        Method::POST,
        "/tokens",
        Some(json!({"name": "ann-ci"})),
    )
    .await;
    let ann_token_id = v["id"].as_str().unwrap().to_string();
    let (_, me) = call(&cloud, &ann, Method::GET, "/users/me", None).await;
    let ann_id = me["id"].as_str().unwrap().to_string();
    let node = cloud.node_id.clone();
    // An administrator's OS-init profile (a copy of the shipped one).
    let (_, shipped) = cloud.get("/os-init-profiles/cloud-init").await;
    let (s, v) = cloud
        .post(
            "/os-init-profiles",
            json!({"name": "shared", "source": shipped["source"]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let callers = [
        Caller {
            name: "admin",
            token: as_(&admin),
        },
        Caller {
            name: "olga",
            token: as_(&olga),
        },
        Caller {
            name: "ann",
            token: as_(&ann),
        },
        Caller {
            name: "bob",
            token: as_(&bob),
        },
    ];
    let m = |s: &str| Method::from_bytes(s.as_bytes()).unwrap();
    // (method, path, body, [admin, olga, ann, bob])
    let rows: Vec<(Method, String, Option<Value>, [Want; 4])> = vec![
        (m("GET"), "/about".into(), None, [A, A, A, A]),
        (m("GET"), "/health".into(), None, [A, A, A, A]),
        (m("GET"), "/users/me".into(), None, [A, A, A, A]),
        (m("GET"), "/users".into(), None, [A, F, F, F]),
        (m("GET"), "/audit".into(), None, [A, F, F, F]),
        (m("GET"), "/settings".into(), None, [A, F, F, F]),
        (
            m("PATCH"),
            "/settings".into(),
            Some(json!({})),
            [A, F, F, F],
        ),
        (m("POST"), "/settings/purge".into(), None, [A, F, F, F]),
        (m("GET"), format!("/users/{ann_id}"), None, [A, F, F, F]),
        (
            m("POST"),
            "/users".into(),
            Some(json!({"name": "x", "password": "short", "role": "user"})),
            [S(400), F, F, F],
        ),
        (
            m("PATCH"),
            format!("/users/{ann_id}"),
            Some(json!({})),
            [A, F, F, F],
        ),
        (m("DELETE"), "/users/nobody".into(), None, [H, F, F, F]),
        (m("GET"), "/tokens".into(), None, [A, A, A, A]),
        (
            m("POST"),
            "/tokens".into(),
            Some(json!({"name": "t"})),
            [A, A, A, A],
        ),
        (m("GET"), "/guests".into(), None, [A, A, A, A]),
        (
            m("GET"),
            format!("/guests/{g}/snapshots"),
            None,
            [A, A, A, H],
        ),
        (
            m("POST"),
            format!("/guests/{g}/snapshots"),
            Some(json!({"name": "bad name"})),
            [S(400), S(400), S(400), H],
        ),
        (
            m("POST"),
            format!("/guests/{g}/snapshots/nothing/revert"),
            None,
            [H, H, H, H],
        ),
        (
            m("DELETE"),
            format!("/guests/{g}/snapshots/nothing"),
            None,
            [H, H, H, H],
        ),
        (
            m("PUT"),
            format!("/guests/{g}/size"),
            Some(json!({})),
            [S(400), S(400), S(400), H],
        ),
        (
            m("POST"),
            format!("/guests/{g}/template"),
            Some(json!({"name": "bad name"})),
            [S(400), S(400), S(400), H],
        ),
        (
            m("PUT"),
            "/templates/new-img/image?os_type=linux&sha256=abc".into(),
            None,
            // Without `Content-Type: application/octet-stream`.
            [S(415), S(415), S(415), S(415)],
        ),
        (
            m("GET"),
            "/templates/ann-tmpl/image".into(),
            None,
            [A, A, A, H],
        ),
        (m("GET"), "/disks".into(), None, [A, A, A, A]),
        (m("GET"), format!("/disks/{ann_disk}"), None, [A, A, A, H]),
        (
            m("POST"),
            format!("/disks/{ann_disk}/resize"),
            Some(json!({"size_gib": 1})),
            [S(400), S(400), S(400), H],
        ),
        (
            m("PUT"),
            format!("/disks/{ann_disk}/limits"),
            Some(json!({})),
            [S(400), S(400), S(400), H],
        ),
        (
            m("POST"),
            format!("/disks/{ann_disk}/detach"),
            None,
            [S(409), S(409), S(409), H],
        ),
        (
            m("POST"),
            format!("/disks/{ann_disk}/attach"),
            Some(json!({"guest": "no-such-guest"})),
            [H, H, H, H],
        ),
        (
            m("DELETE"),
            "/disks/no-such-disk".into(),
            None,
            [H, H, H, H],
        ),
        (
            m("POST"),
            "/disks".into(),
            Some(json!({"name": "bad name", "size_gib": 1})),
            [S(400), S(400), S(400), S(400)],
        ),
        (m("GET"), format!("/guests/{g}"), None, [A, A, A, H]),
        (m("GET"), "/guests/ann-1".into(), None, [A, A, A, H]),
        (
            m("PATCH"),
            format!("/guests/{g}"),
            Some(json!({})),
            [A, A, A, H],
        ),
        (
            m("POST"),
            format!("/guests/{g}/actions/start"),
            None,
            [A, A, A, H],
        ),
        // The test driver cannot change a live device: the ticket's operation fails (409).
        (
            m("POST"),
            format!("/guests/{g}/console"),
            Some(json!({})),
            [S(409), S(409), S(409), H],
        ),
        (
            m("PUT"),
            format!("/guests/{g}/bandwidth"),
            Some(json!({})),
            [A, A, A, H],
        ),
        (
            m("GET"),
            format!("/guests/{g}/boot-jobs"),
            None,
            [A, A, A, H],
        ),
        (
            m("GET"),
            format!("/guests/{g}/domain-xml"),
            None,
            [A, A, A, H],
        ),
        (
            m("PUT"),
            format!("/guests/{g}/ip"),
            Some(json!({"ip": "192.0.2.1"})),
            [A, A, F, F],
        ),
        (
            m("POST"),
            format!("/guests/{g}/ssh-keys"),
            Some(json!({"keys": []})),
            [A, A, A, H],
        ),
        (
            m("POST"),
            format!("/guests/{g}/password"),
            Some(json!({"password": "1234567890", "user": "nobody!"})),
            [A, A, A, H],
        ),
        (
            m("POST"),
            format!("/guests/{g}/change-ip"),
            Some(json!({"ip": "10.255.255.1"})),
            [A, A, A, H],
        ),
        (
            m("POST"),
            "/guests".into(),
            Some(json!({"template": "ann-tmpl", "cpus": 0, "memory_mib": 64})),
            [A, A, A, A],
        ),
        (
            m("POST"),
            "/guests".into(),
            Some(json!({"template": "ann-tmpl", "cpus": 1, "memory_mib": 1})),
            [S(422), S(422), S(422), S(422)],
        ),
        (
            m("POST"),
            "/guests".into(),
            Some(json!({"template": "tiny", "cpus": 1, "memory_mib": 64, "node": "no-such-node"})),
            [A, A, F, F],
        ),
        (m("GET"), "/operations".into(), None, [A, A, A, A]),
        (
            m("GET"),
            format!("/operations/{ann_op}"),
            None,
            [A, A, A, H],
        ),
        (
            m("GET"),
            format!("/operations/{ann_op}/wait?timeout=0"),
            None,
            [A, A, A, H],
        ),
        (
            m("POST"),
            format!("/operations/{ann_op}/cancel"),
            None,
            [A, A, A, H],
        ),
        (m("GET"), "/boot-jobs/pending".into(), None, [A, A, A, A]),
        (m("GET"), format!("/boot-jobs/{job}"), None, [A, A, A, H]),
        (
            m("POST"),
            "/boot-jobs".into(),
            Some(json!({"guests": [g], "script": "ann-motd"})),
            [A, A, A, H],
        ),
        (m("GET"), "/boot-scripts".into(), None, [A, A, A, A]),
        (
            m("GET"),
            "/boot-scripts/ann-motd".into(),
            None,
            [A, A, A, H],
        ),
        (
            m("PUT"),
            "/boot-scripts/ann-motd".into(),
            Some(json!({"source": "fn actions(guest, params) { [] }"})),
            [A, F, A, H],
        ),
        (m("GET"), "/os-init-profiles".into(), None, [A, A, A, A]),
        (
            m("GET"),
            "/os-init-profiles/cloud-init".into(),
            None,
            [A, A, A, A],
        ),
        (
            m("POST"),
            "/os-init-profiles".into(),
            Some(json!({"name": "p2", "source": "x"})),
            [A, F, F, F],
        ),
        (
            m("PUT"),
            "/os-init-profiles/shared".into(),
            Some(json!({"source": "x"})),
            [A, F, F, F],
        ),
        (
            m("DELETE"),
            "/os-init-profiles/shared".into(),
            None,
            [A, F, F, F],
        ),
        (m("GET"), "/events?after=0".into(), None, [A, A, A, A]),
        (m("GET"), "/ip-pools".into(), None, [A, A, A, A]),
        (m("GET"), "/ip-pools/p".into(), None, [A, A, A, A]),
        (m("GET"), "/ip-pools/p/addresses".into(), None, [A, A, A, A]),
        (
            m("POST"),
            "/ip-pools".into(),
            Some(json!({"name": "q", "cidr": "x", "range_start": "a", "range_end": "b"})),
            [S(400), F, F, F],
        ),
        (
            m("POST"),
            "/ip-pools/p/ranges".into(),
            Some(json!({"start": "x", "end": "y"})),
            [S(400), F, F, F],
        ),
        (
            m("POST"),
            "/ip-pools/p/addresses/state".into(),
            Some(json!({"start": "x", "state": "reserved"})),
            [S(400), F, F, F],
        ),
        (m("DELETE"), "/ip-pools/p".into(), None, [S(409), F, F, F]),
        (m("GET"), "/nodes".into(), None, [A, A, F, F]),
        (m("GET"), format!("/nodes/{node}"), None, [A, A, F, F]),
        (
            m("PATCH"),
            format!("/nodes/{node}"),
            Some(json!({})),
            [A, F, F, F],
        ),
        (
            m("DELETE"),
            "/nodes/no-such-node?guests=keep".into(),
            None,
            [H, F, F, F],
        ),
        (
            m("POST"),
            "/nodes".into(),
            Some(json!({"id": "not*valid"})),
            [S(400), F, F, F],
        ),
        (
            m("POST"),
            "/nodes/no-such-node/credential".into(),
            None,
            [H, F, F, F],
        ),
        (
            m("DELETE"),
            "/nodes/no-such-node/credential".into(),
            None,
            [H, F, F, F],
        ),
        (m("GET"), "/plugins".into(), None, [A, A, F, F]),
        (m("GET"), "/templates".into(), None, [A, A, A, A]),
        (m("GET"), "/templates/ann-tmpl".into(), None, [A, A, A, H]),
        (m("GET"), "/templates/tiny".into(), None, [A, A, A, A]),
        (
            m("PATCH"),
            "/templates/ann-tmpl".into(),
            Some(json!({"os_init_profile": "cloud-init"})),
            [A, A, A, H],
        ),
        (
            m("PATCH"),
            "/templates/tiny".into(),
            Some(json!({"os_init_profile": "cloud-init"})),
            [A, A, F, F],
        ),
        (
            m("POST"),
            "/templates".into(),
            Some(json!({"name": "pub", "path": "relative", "os_type": "linux", "public": true})),
            [S(400), F, F, F],
        ),
        // In use by ann-1: refused after the check.
        (
            m("DELETE"),
            "/templates/ann-tmpl".into(),
            None,
            [S(409), S(409), S(409), H],
        ),
        (
            m("DELETE"),
            format!("/tokens/{ann_token_id}"),
            None,
            [H, H, S(204), H],
        ),
        (m("DELETE"), format!("/boot-jobs/{job}"), None, [A, A, A, H]),
        (
            m("DELETE"),
            "/boot-scripts/ann-motd".into(),
            None,
            [A, F, A, H],
        ),
        (m("DELETE"), format!("/guests/{g}"), None, [A, A, S(202), H]),
    ];
    let mut failures = Vec::new();
    let mut checks = 0;
    for (method, path, body, wants) in &rows {
        // bob first, then ann, olga, admin: the least privileged act before anything is gone.
        for i in (0..4).rev() {
            let (got, v) = call(
                &cloud,
                &callers[i].token,
                method.clone(),
                path,
                body.clone(),
            )
            .await;
            checks += 1;
            if !ok(wants[i], got) {
                failures.push(format!(
                    "{method} {path} as {}: want {:?}, got {got} {v}",
                    callers[i].name, wants[i]
                ));
            }
        }
    }
    println!(
        "authorization matrix: {} endpoints-with-resource × 4 callers = {checks} checks",
        rows.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checks} wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Lists show only what a caller may see.
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let (_, l) = call(&cloud, &bob, Method::GET, "/templates", None).await;
    assert!(!names(&l).contains(&"ann-tmpl".to_string()), "{l}");
    let (_, l) = call(&cloud, &bob, Method::GET, "/operations?limit=1000", None).await;
    assert!(
        l.as_array()
            .unwrap()
            .iter()
            .all(|o| o["id"] != ann_op.as_str()),
        "{l}"
    );
    assert!(
        l.as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == bob_op.as_str()),
        "{l}"
    );
    let (_, l) = call(&cloud, &olga, Method::GET, "/operations?limit=1000", None).await;
    assert!(
        l.as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == ann_op.as_str()),
        "{l}"
    );
    let mut r = reqwest::Client::new()
        .get(cloud.url("/events?after=0"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    let seen = common::read_sse(&mut r, &mut buf, 10_000, std::time::Duration::from_secs(2)).await;
    assert!(!seen.is_empty(), "bob sees no events at all");
    for (_, e) in &seen {
        assert_ne!(
            e["data"]["guest_id"],
            json!(g),
            "bob saw an event of ann's guest: {e}"
        );
        assert_ne!(e["kind"], "node.state", "bob saw a node event: {e}");
    }
}
