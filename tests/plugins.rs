//! Plugins in a running controller (Redis + libvirt test driver): the shipped examples
//! steer placement and refuse names; a broken plugin is listed with its error and never
//! runs; a plugin that hangs or throws fails only what it must, naming itself, and the
//! controller keeps serving.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{require, Cloud};
use serde_json::{json, Value};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn plugin(dir: &Path, name: &str, hooks: &str, source: &str) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("plugin.toml"),
        format!("name = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"test\"\nscript = \"plugin.rhai\"\nhooks = [{hooks}]\n"),
    )
    .unwrap();
    std::fs::write(d.join("plugin.rhai"), source).unwrap();
}

async fn plugin_state(cloud: &Cloud, name: &str) -> Value {
    let (s, v) = cloud.get("/plugins").await;
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == json!(name))
        .cloned()
        .unwrap_or_else(|| panic!("plugin {name} not listed: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_steer_refuse_and_fail_safely() {
    if !(require("redis-server") && require("qemu-img") && require("genisoimage")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    copy_dir(
        &shipped.join("naming-policy"),
        &dir.path().join("naming-policy"),
    );
    copy_dir(
        &shipped.join("spread-by-free-memory"),
        &dir.path().join("spread-by-free-memory"),
    );
    plugin(
        dir.path(),
        "broken",
        "\"before:guest.create\"",
        "fn before(kind, request, config) {",
    );
    plugin(
        dir.path(),
        "hang",
        "\"before:guest.start\"",
        "fn before(kind, request, config) { loop {} }",
    );
    plugin(dir.path(), "noisy", "\"after:*\", \"event\"",
        "fn after(kind, op, config) { throw `after ${kind} refused`; }\nfn on_event(e, config) { () }");
    plugin(
        dir.path(),
        "idle",
        "\"event\"",
        "fn on_event(e, config) { () }",
    );
    let enabled = "naming-policy,spread-by-free-memory,broken,hang,noisy,missing";
    let cloud = Cloud::up_with(vec![
        (
            "CORRAL_PLUGINS_DIR".into(),
            dir.path().display().to_string(),
        ),
        ("CORRAL_PLUGINS".into(), enabled.into()),
        ("CORRAL_SCRIPT_DEADLINE_MS".into(), "200".into()),
    ])
    .await;
    cloud.template("tiny").await;

    // The listing: states and load errors, each naming what to fix.
    for (name, state) in [
        ("naming-policy", "enabled"),
        ("spread-by-free-memory", "enabled"),
        ("broken", "error"),
        ("hang", "enabled"),
        ("noisy", "enabled"),
        ("idle", "disabled"),
        ("missing", "error"),
    ] {
        let p = plugin_state(&cloud, name).await;
        assert_eq!(p["state"], json!(state), "{p}");
    }
    let broken = plugin_state(&cloud, "broken").await;
    assert!(
        broken["error"].as_str().unwrap().contains("line"),
        "{broken}"
    );

    // naming-policy refuses a name without a team prefix, naming itself; nothing is created.
    let (s, v) = cloud
        .post(
            "/guests",
            json!({"name": "scratch", "template": "tiny", "cpus": 1, "memory_mib": 64}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("plugin naming-policy"),
        "{v}"
    );
    let (_, guests) = cloud.get("/guests").await;
    assert_eq!(guests.as_array().unwrap().len(), 0);

    // spread-by-free-memory vetoes a guest that would leave the node too little memory.
    let (s, v) = cloud
        .post(
            "/guests",
            json!({"name": "web-huge", "template": "tiny", "cpus": 1, "memory_mib": 1_000_000}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let op = cloud
        .wait_op(v["operations"][0]["operation_id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], json!("failed"), "{op}");
    let err = op["error"].as_str().unwrap();
    assert!(err.contains("no node can take this guest"), "{err}");
    let (_, d) = cloud.delete("/guests/web-huge").await;
    cloud.wait_op(d["operation_id"].as_str().unwrap()).await;

    // A guest both accept.
    let ids = cloud
        .create(json!({"name": "web-1", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await;
    let op = cloud.wait_op(&ids[0].1).await;
    assert_eq!(op["state"], json!("succeeded"), "{op}");
    let (_, g) = cloud.get("/guests/web-1").await;
    assert_eq!(g["hostname"], json!("web-1"));

    // A hanging before-hook fails only the request it guards, within its deadline.
    let (_, v) = cloud
        .post("/guests/web-1/actions/poweroff", json!(null))
        .await;
    cloud.wait_op(v["operation_id"].as_str().unwrap()).await;
    let t = std::time::Instant::now();
    let (s, v) = cloud.post("/guests/web-1/actions/start", json!(null)).await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("plugin hang"),
        "{v}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    let hang = plugin_state(&cloud, "hang").await;
    assert_eq!(hang["failures"], json!(1), "{hang}");

    // A throwing after-hook is counted against its plugin; operations are not affected.
    let noisy = plugin_state(&cloud, "noisy").await;
    assert!(noisy["failures"].as_u64().unwrap() >= 1, "{noisy}");
    assert!(
        noisy["last_error"].as_str().unwrap().contains("refused"),
        "{noisy}"
    );
    let (s, _) = cloud.get("/health").await;
    assert_eq!(s, 200);

    cloud.delete_all_and_check().await;
}
