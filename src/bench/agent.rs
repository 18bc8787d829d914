//! Boot jobs on the real TCG guest: online runs (a hostname change through the agent) and
//! one job queued while the guest is off, run at its next start. The node reports, per run,
//! how long the agent took to answer and how long the jobs took once it did ("agent
//! connected → boot jobs done").

use std::time::{Duration, Instant};

use corral_client::apis::{guests_api, scripts_api};
use corral_client::models::{GuestAction, GuestChange, UpdateGuest};
use serde_json::Value;

use super::{Api, BenchError};

async fn run_output(api: &Api, change: &GuestChange) -> Result<(Value, f64), BenchError> {
    let t = Instant::now();
    let op = change
        .operation_id
        .as_deref()
        .ok_or_else(|| BenchError::Setup(format!("no run started: {change:?}")))?;
    let v = api.wait(op).await?;
    if v["state"] != "succeeded" {
        return Err(BenchError::Setup(format!("boot-job run failed: {v}")));
    }
    Ok((
        v["steps"][1]["output"].clone(),
        t.elapsed().as_secs_f64() * 1000.0,
    ))
}

/// Runs a power action to its end.
async fn act(api: &Api, gid: &str, a: GuestAction) -> Result<(), BenchError> {
    let accepted = guests_api::guest_action(api.c(), gid, a, None).await?;
    api.wait(&accepted.operation_id).await?;
    Ok(())
}

async fn set_hostname(api: &Api, gid: &str, hostname: String) -> Result<GuestChange, BenchError> {
    let mut u = UpdateGuest::new();
    u.hostname = Some(hostname);
    Ok(guests_api::guest_update(api.c(), gid, u).await?)
}

pub async fn run(api: &Api, gid: &str, rounds: usize) -> Result<(), BenchError> {
    let mut runs = Vec::new();
    let mut totals = Vec::new();
    for i in 0..rounds.max(1) {
        let t = Instant::now();
        let v = set_hostname(api, gid, format!("bench-{i}")).await?;
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
    act(api, gid, GuestAction::Poweroff).await?;
    let v = set_hostname(api, gid, "bench-boot".into()).await?;
    let job = v.boot_job_id.unwrap_or_default();
    let t = Instant::now();
    act(api, gid, GuestAction::Start).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let job = loop {
        let j = scripts_api::boot_job_get(api.c(), &job).await?;
        if matches!(j.state.as_str(), "done" | "failed") || Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let boot_total = t.elapsed().as_secs_f64();
    // The job is done before its run ends (the seed is rebuilt last): wait for the run, so
    // the guest is free again for whatever comes next.
    let run = api
        .wait(job.operation_id.as_deref().unwrap_or_default())
        .await?;
    let out = &run["steps"][1]["output"];
    println!(
        "boot job at next start:                {:>10.3} s start -> job {}   agent answered after {} ms, agent connected -> boot jobs done {} ms",
        boot_total, job.state, out["agent_wait_ms"], out["run_ms"]
    );
    Ok(())
}
