//! A real TCG guest's metrics: its CPU series rises under a busy loop started through its
//! agent, its memory follows a live resize, the node's own series are there, and every
//! query of the shipped Grafana dashboard names a metric `/metrics` exports.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::guest::{parts, sh, wait_agent, Sweep};
use common::host::Bridge;
use common::Cloud;
use serde_json::{json, Value};

const URI: &str = "qemu:///system";
/// The node samples this often here (15 s in production).
const EVERY: u64 = 2;

/// A series' points of `gid` over the last `from` (raw, one per sample).
async fn points(cloud: &Cloud, gid: &str, series: &str, from: &str) -> Vec<(i64, f64)> {
    let path = format!("/guests/{gid}/metrics?from={from}&step={EVERY}s&series={series}");
    let (s, v) = cloud.get(&path).await;
    assert_eq!(s, 200, "{v}");
    v["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == series)
        .map(|x| {
            let at = x["at_ms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_i64().unwrap());
            let vals = x["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap());
            at.zip(vals).collect()
        })
        .unwrap_or_default()
}

/// Waits (up to `secs`) until the newest point of a series passes `check`.
async fn newest_until(
    cloud: &Cloud,
    gid: &str,
    series: &str,
    secs: u64,
    check: impl Fn(f64) -> bool,
) -> f64 {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < Duration::from_secs(secs) {
        last = points(cloud, gid, series, "2m").await.last().map(|p| p.1);
        if last.is_some_and(&check) {
            return last.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!(
        "{series} of {gid} never passed the check; last {last:?}\n{}",
        cloud.log_tail(20)
    );
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// The metric names an exposition has samples of.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// Every `corral_…` name in the dashboard's queries.
fn dashboard_names() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/grafana-dashboard.json"
    );
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("corral_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                out.push((name, expr.to_string()));
            }
        }
    }
    assert!(out.len() > 20, "the dashboard has too few queries: {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guests_cpu_and_memory_series_follow_what_it_does() {
    if !parts() {
        return;
    }
    let bridge = Bridge::new("198.51.100.209/28");
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let cloud = Cloud::split_with(
        URI,
        vec![
            env("CORRAL_DOMAIN_TYPE", "qemu"),
            env("CORRAL_VM_NETWORK_BRIDGE", &bridge.name),
            env("CORRAL_VNC_PORT_MIN", "6300"),
            env("CORRAL_VNC_PORT_MAX", "6309"),
            env("CORRAL_METRICS_SECS", &EVERY.to_string()),
        ],
    )
    .await;
    common::guest::fixture_template_and_pool(&cloud, 208, "metnet").await;
    let name = format!("mt{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let _sweep = Sweep(name.clone());
    let (gid, op) = cloud
        .create(
            json!({"name": name, "template": "gi", "pool": "metnet", "cpus": 1,
                       "memory_mib": 128, "max_memory_mib": 256}),
        )
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    wait_agent(URI, &name);

    // Idle: a few samples once booted.
    tokio::time::sleep(Duration::from_secs(4 * EVERY)).await;
    let idle: Vec<f64> = points(&cloud, &gid, "cpu_seconds_per_second", "8s")
        .await
        .iter()
        .map(|p| p.1)
        .collect();
    assert!(
        !idle.is_empty(),
        "no CPU samples of a running guest\n{}",
        cloud.log_tail(20)
    );
    // Busy: a shell loop for 20 s, started through the agent.
    sh(
        URI,
        &name,
        "(timeout 20 sh -c 'while :; do :; done' >/dev/null 2>&1 &); echo started",
    );
    tokio::time::sleep(Duration::from_secs(14)).await;
    let busy: Vec<f64> = points(&cloud, &gid, "cpu_seconds_per_second", "10s")
        .await
        .iter()
        .map(|p| p.1)
        .collect();
    let (idle_avg, busy_avg) = (mean(&idle), mean(&busy));
    eprintln!(
        "guest CPU (cores busy): idle {idle_avg:.3} {idle:?}, busy loop {busy_avg:.3} {busy:?}"
    );
    assert!(
        busy_avg > idle_avg + 0.2 && busy_avg <= 1.1,
        "one vCPU in a busy loop: idle {idle:?}, busy {busy:?}"
    );
    let counter = cloud.get("/metrics/guests").await.1;
    let g = counter
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == gid.as_str())
        .unwrap();
    assert!(
        g["values"]["cpu_seconds_total"].as_f64().unwrap() > 1.0,
        "{g}"
    );

    // Memory: the balloon's size follows a live resize; the guest's own use is reported.
    let before = newest_until(&cloud, &gid, "memory_bytes", 30, |v| v > 0.0).await;
    assert_eq!(before, 128.0 * 1048576.0);
    let used = newest_until(&cloud, &gid, "memory_used_bytes", 60, |v| v > 0.0).await;
    assert!(used < before, "used {used} of {before}");
    let (s, v) = cloud
        .call(
            reqwest::Method::PUT,
            &format!("/guests/{gid}/size"),
            Some(json!({"memory_mib": 240})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(
        cloud.wait_op(v["operation_id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    let after = newest_until(&cloud, &gid, "memory_bytes", 60, |v| v > 200.0 * 1048576.0).await;
    eprintln!(
        "guest memory: {} MiB -> {} MiB (used {} MiB)",
        before / 1048576.0,
        after / 1048576.0,
        used / 1048576.0
    );

    // The node's own series, and the same through the rollups.
    let (_, h) = cloud
        .get(&format!("/nodes/{}/metrics?from=2m", cloud.node_id))
        .await;
    for s in [
        "cpu_seconds_per_second",
        "memory_used_bytes",
        "filesystem_free_bytes",
    ] {
        assert!(h.to_string().contains(s), "{s}: {h}");
    }
    let (_, r) = cloud
        .get(&format!("/guests/{gid}/metrics?from=1h&step=5m&agg=max"))
        .await;
    assert_eq!(r["source"], "rollup", "{r}");
    assert!(r.to_string().contains("cpu_seconds_per_second"), "{r}");

    // Every query of the shipped dashboard names a metric this exposition has.
    let url = cloud.url("").replace("/api/v1", "/metrics");
    let text = reqwest::Client::new()
        .get(url)
        .bearer_auth(cloud.token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let have = exported(&text);
    for (name, expr) in dashboard_names() {
        assert!(
            have.contains(&name),
            "the dashboard asks for {name} ({expr}), not exported:\n{have:?}"
        );
    }
    let (s, v) = cloud.delete(&format!("/guests/{gid}")).await;
    assert_eq!(s, 202, "{v}");
    let op = v["operation_id"].as_str().unwrap();
    assert_eq!(cloud.wait_op(op).await["state"], "succeeded");
    assert!(
        !common::guest::virsh(URI, &["list", "--all", "--name"])
            .1
            .contains(&name),
        "the deleted guest is still defined"
    );
}
