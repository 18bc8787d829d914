//! Boot jobs on the real TCG guest: online runs (a hostname change through the agent) and
//! one job queued while the guest is off, run at its next start. The node reports, per run,
//! how long the agent took to answer and how long the jobs took once it did ("agent
//! connected → boot jobs done").

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Api, BenchError};

async fn run_output(api: &Api, accepted: &Value) -> Result<(Value, f64), BenchError> {
    let t = Instant::now();
    let op = accepted["operation_id"]
        .as_str()
        .ok_or_else(|| BenchError::Setup(format!("no run started: {accepted}")))?;
    let v = api.wait(op).await?;
    if v["state"] != "succeeded" {
        return Err(BenchError::Setup(format!("boot-job run failed: {v}")));
    }
    Ok((
        v["steps"][1]["output"].clone(),
        t.elapsed().as_secs_f64() * 1000.0,
    ))
}

async fn act(api: &Api, gid: &str, a: &str) -> Result<(u16, Value), BenchError> {
    api.call(
        reqwest::Method::POST,
        &format!("/guests/{gid}/actions/{a}"),
        None,
    )
    .await
}

pub async fn run(api: &Api, gid: &str, rounds: usize) -> Result<(), BenchError> {
    let mut runs = Vec::new();
    let mut totals = Vec::new();
    for i in 0..rounds.max(1) {
        let t = Instant::now();
        let (_, v) = api
            .call(
                reqwest::Method::PATCH,
                &format!("/guests/{gid}"),
                Some(json!({"hostname": format!("bench-{i}")})),
            )
            .await?;
        let (out, _) = run_output(api, &v).await?;
        runs.push(out["run_ms"].as_f64().unwrap_or(0.0));
        totals.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    runs.sort_by(|a, b| a.total_cmp(b));
    totals.sort_by(|a, b| a.total_cmp(b));
    println!(
        "boot job now (set-hostname, running):  p50 {:>7.1} ms in the guest   p50 {:.1} ms API -> run done ({} runs)",
        super::percentile(&runs, 0.5),
        super::percentile(&totals, 0.5),
        runs.len()
    );

    // Off, queue, start: the run begins at the boot and waits for the agent.
    let (_, v) = act(api, gid, "poweroff").await?;
    api.wait(v["operation_id"].as_str().unwrap_or_default())
        .await?;
    let (_, v) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/guests/{gid}"),
            Some(json!({"hostname": "bench-boot"})),
        )
        .await?;
    let job = v["boot_job_id"].as_str().unwrap_or_default().to_string();
    let t = Instant::now();
    let (_, v) = act(api, gid, "start").await?;
    api.wait(v["operation_id"].as_str().unwrap_or_default())
        .await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let (_, j) = api
            .call(reqwest::Method::GET, &format!("/boot-jobs/{job}"), None)
            .await?;
        if matches!(j["state"].as_str(), Some("done" | "failed")) || Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let boot_total = t.elapsed().as_secs_f64();
    // The job is done before its run ends (the seed is rebuilt last): wait for the run, so
    // the guest is free again for whatever comes next.
    let run = api
        .wait(job["operation_id"].as_str().unwrap_or_default())
        .await?;
    let out = &run["steps"][1]["output"];
    println!(
        "boot job at next start:                {:>10.3} s start -> job {}   agent answered after {} ms, agent connected -> boot jobs done {} ms",
        boot_total, job["state"].as_str().unwrap_or("?"), out["agent_wait_ms"], out["run_ms"]
    );
    Ok(())
}
