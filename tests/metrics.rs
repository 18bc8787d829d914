//! Metrics, `/metrics` and operation logs on the libvirt test driver and a real Redis.
//!
//! The node samples every second here. The test driver reports no figures for its
//! domains (only their state), so the guests' own series are checked on a real TCG guest
//! (`metrics_guest.rs`); the host's series are real here.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{require, Cloud};
use serde_json::{json, Value};

async fn cloud() -> Cloud {
    Cloud::split_with(
        "test:///default",
        vec![("CORRAL_METRICS_SECS".into(), "1".into())],
    )
    .await
}

/// Polls `path` until `check` holds (20 s at most); its last answer.
async fn until(cloud: &Cloud, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (s, v) = cloud.get(path).await;
        if s == 200 && check(&v) {
            return v;
        }
        last = v;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{path} never got there: {last}\n{}", cloud.log_tail(30));
}

/// A series' values.
fn series(h: &Value, name: &str) -> Option<Vec<f64>> {
    let s = h["series"].as_array()?.iter().find(|s| s["name"] == name)?;
    Some(
        s["values"]
            .as_array()?
            .iter()
            .filter_map(Value::as_f64)
            .collect(),
    )
}

/// `GET /metrics` with `token` (None: without one).
async fn scrape(cloud: &Cloud, token: Option<&str>) -> (u16, String) {
    let url = cloud.url("").replace("/api/v1", "/metrics");
    let mut r = reqwest::Client::new().get(url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let resp = r.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Parses the exposition with `prometheus-parse`, after checking each sample line against
/// the format itself (the parser is lenient): a name, labels with quoted values, a number.
fn parse(text: &str) -> prometheus_parse::Scrape {
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (head, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "value: {line}"
        );
        let (name, labels) = head.split_once('{').unwrap_or((head, "}"));
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "name: {line}"
        );
        let labels = labels
            .strip_suffix('}')
            .unwrap_or_else(|| panic!("labels: {line}"));
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, v) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("label: {line}"));
            assert!(
                k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label name: {line}"
            );
            let mut end = None;
            let mut escaped = false;
            for (i, c) in v.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated label value: {line}"));
            rest = v[end + 1..].strip_prefix(',').unwrap_or(&v[end + 1..]);
        }
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_figures_and_the_exposition_answer_only_whom_they_may() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let cloud = cloud().await;
    cloud.template("tiny").await;
    let (gid, op) = cloud
        .create(json!({"name": "m1", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&op).await["state"], "succeeded");
    let node = cloud.node_id.clone();

    // The node's own series: real figures of this host, plausible.
    let h = until(&cloud, &format!("/nodes/{node}/metrics?from=5m"), |v| {
        series(v, "cpu_seconds_per_second").is_some_and(|p| !p.is_empty())
    })
    .await;
    assert_eq!(h["source"], "raw", "{h}");
    let total = series(&h, "memory_total_bytes").unwrap();
    let used = series(&h, "memory_used_bytes").unwrap();
    let last = |p: &Vec<f64>| *p.last().unwrap();
    assert!(
        last(&total) > 64.0 * 1048576.0 && last(&used) > 0.0 && last(&used) < last(&total),
        "{h}"
    );
    let cpus = last(&series(&h, "cpus").unwrap());
    let busy = last(&series(&h, "cpu_seconds_per_second").unwrap());
    assert!(
        cpus >= 1.0 && (0.0..=cpus * 1.05).contains(&busy),
        "{busy} of {cpus}: {h}"
    );
    assert!(series(&h, "filesystem_free_bytes").is_some(), "{h}");
    let max = cloud
        .get(&format!(
            "/nodes/{node}/metrics?from=5m&agg=max&series=cpus"
        ))
        .await
        .1;
    assert_eq!(max["series"].as_array().unwrap().len(), 1, "{max}");

    // Current figures: the node's, and the guest sampled (with no figures of its own on
    // the test driver).
    let nodes = until(&cloud, "/metrics/nodes", |v| {
        v[0]["values"]["memory_total_bytes"].is_number()
    })
    .await;
    assert_eq!(nodes[0]["id"], node.as_str());
    until(&cloud, "/metrics/guests", |v| {
        v[0]["name"] == "m1" && v[0]["at"].is_string()
    })
    .await;

    // Bad input: a 400 saying what to fix, for each.
    for q in [
        "from=1h&to=2h",
        "step=0s",
        "from=3650d",
        "from=1d&step=1s",
        "from=yesterday",
        "agg=median",
    ] {
        let (s, v) = cloud.get(&format!("/guests/{gid}/metrics?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.len() > 10),
            "{q}: {v}"
        );
    }

    // Another user: not their guest (404, like the guest itself), not their nodes.
    let eve = cloud.new_user("eve").await;
    let get = |path: String| {
        let cloud = &cloud;
        let eve = eve.clone();
        async move { cloud.call_as(&eve, reqwest::Method::GET, &path, None).await }
    };
    assert_eq!(get(format!("/guests/{gid}/metrics")).await.0, 404);
    assert_eq!(get(format!("/nodes/{node}/metrics")).await.0, 403);
    assert_eq!(get("/metrics/nodes".into()).await.0, 403);
    let (s, mine) = get("/metrics/guests".into()).await;
    assert_eq!((s, mine), (200, json!([])));

    // The exposition: no token 401, a user's 403, an administrator's and a scrape-only
    // token's 200; the scrape-only token opens nothing else.
    assert_eq!(scrape(&cloud, None).await.0, 401);
    assert_eq!(scrape(&cloud, Some("not-a-token")).await.0, 401);
    assert_eq!(scrape(&cloud, Some(&eve)).await.0, 403);
    let (s, t) = cloud
        .post("/tokens", json!({"name": "prom", "scope": "metrics"}))
        .await;
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["scope"], "metrics");
    let scraper = t["token"].as_str().unwrap().to_string();
    let (s, v) = cloud
        .call_as(&scraper, reqwest::Method::GET, "/guests", None)
        .await;
    assert_eq!(s, 401, "a scrape-only token reached the API: {v}");
    let (s, text) = scrape(&cloud, Some(&scraper)).await;
    assert_eq!(s, 200, "{text}");
    let (s, admin_text) = scrape(&cloud, Some(cloud.token())).await;
    assert_eq!(s, 200);
    for text in [&text, &admin_text] {
        let p = parse(text);
        let has = |name: &str, label: (&str, &str)| {
            p.samples
                .iter()
                .any(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
        };
        assert!(has("corral_operations", ("kind", "guest.create")), "{text}");
        assert!(has("corral_guests", ("state", "running")), "{text}");
        assert!(has("corral_node_up", ("node", &node)), "{text}");
        assert!(has("corral_node_queue_depth", ("node", &node)), "{text}");
        assert!(has("corral_node_jobs_in_flight", ("node", &node)), "{text}");
        assert!(
            has("corral_node_memory_total_bytes", ("node", &node)),
            "{text}"
        );
        assert!(
            has(
                "corral_step_duration_seconds_count",
                ("kind", "guest.create")
            ),
            "{text}"
        );
        assert!(
            has(
                "corral_http_request_duration_seconds_count",
                ("route", "guest_create")
            ),
            "{text}"
        );
    }
    cloud.delete_all_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_operations_log_names_the_sub_step_and_the_nodes_error() {
    if !(require("redis-server") && require("qemu-img")) {
        return;
    }
    let cloud = cloud().await;
    cloud.template("tiny").await;
    let (_, ok_op) = cloud
        .create(json!({"name": "fine", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    assert_eq!(cloud.wait_op(&ok_op).await["state"], "succeeded");
    let (s, log) = cloud.get(&format!("/operations/{ok_op}/log")).await;
    assert_eq!(s, 200, "{log}");
    let text = log.to_string();
    assert!(text.contains("step place done"), "{log}");
    assert!(text.contains("operation succeeded"), "{log}");
    let node_src = format!("node:{}", cloud.node_id);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|l| l["source"] == node_src.as_str()
                && l["message"].as_str().unwrap().starts_with("sub-step")),
        "the node's lines are missing: {log}"
    );

    // The template's image goes away behind corral's back: the node cannot make the
    // guest's disk from it.
    std::fs::remove_file(cloud.dir().join("tiny.qcow2")).unwrap();
    let (_, op) = cloud
        .create(json!({"name": "broken", "template": "tiny", "cpus": 1, "memory_mib": 64}))
        .await[0]
        .clone();
    let done = cloud.wait_op(&op).await;
    assert_eq!(done["state"], "failed", "{done}");
    let (_, log) = cloud.get(&format!("/operations/{op}/log")).await;
    let lines = log.as_array().unwrap();
    let node_err = lines
        .iter()
        .find(|l| l["source"] == node_src.as_str() && l["level"] == "error")
        .unwrap_or_else(|| panic!("no error line from the node: {log}"));
    let msg = node_err["message"].as_str().unwrap();
    assert!(
        msg.starts_with("sub-step ") && msg.ends_with(" failed"),
        "{node_err}"
    );
    let detail = node_err["detail"].as_str().unwrap();
    assert!(
        detail.contains("tiny.qcow2"),
        "the node's error is not in the detail: {node_err}"
    );
    assert!(
        node_err["step_name"].is_string() && node_err["attempt"].is_number(),
        "{node_err}"
    );
    assert!(
        lines.iter().any(|l| l["source"] == "controller"
            && l["level"] == "error"
            && l["message"].as_str().unwrap().contains("failed")),
        "{log}"
    );
    // Whoever may not see the operation may not read its log.
    let eve = cloud.new_user("eve").await;
    let (s, _) = cloud
        .call_as(
            &eve,
            reqwest::Method::GET,
            &format!("/operations/{op}/log"),
            None,
        )
        .await;
    assert_eq!(s, 404);
    let _ = cloud.delete("/templates/tiny").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_go_to_daily_files_when_asked_and_debug_only_when_asked() {
    if !require("redis-server") {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path().join("logs");
    let cloud = Cloud::split_with(
        "test:///default",
        vec![("CORRAL_LOG_DIR".into(), dir.display().to_string())],
    )
    .await;
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("corral.") && f.ends_with(".log")),
        "{files:?}"
    );
    let text: String = files
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
        .collect();
    assert!(text.contains(" INFO "), "{text}");
    assert!(
        !text.contains(" DEBUG "),
        "debug output nobody asked for: {text}"
    );
    // Nothing of it on stderr any more.
    let stderr = std::fs::read_to_string(cloud.dir().join("controller.log")).unwrap_or_default();
    assert!(!stderr.contains(" INFO "), "{stderr}");
}
