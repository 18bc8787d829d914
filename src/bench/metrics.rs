//! `corral bench --metrics`: the cost of metric history at 100 nodes × 100 guests
//! sampled every 15 s (the fleet), each figure next to its budget.
//!
//! The controller runs in this process (as `--reads` runs it), on its own Redis. The
//! simulated nodes are enrolled through the API and their guests written straight into
//! the store, on their nodes (ingest keeps only a node's own guests' samples). Each
//! round, every node's sample (its host and 100 guests, each with the figures a real
//! node sends) is appended to its own stream, as a node does; the events are serialized
//! before the timed window, so the process's CPU over the window is the controller's.
//!
//! Figures:
//! 1. controller CPU while ingesting, % of one core (budget 10 %);
//! 2. the write rate: samples stored per second (each a raw row and a rollup update);
//! 3. storage per guest per day, measured on one guest with 15 days of history written
//!    through the same store (a day of raw samples, 15 days of rollups), then × 10,000;
//! 4. a 15-day avg and max query of that guest through the API, p50/p99 (budget p99
//!    50 ms);
//! 5. `/metrics` with 10,000 guests sampled, p50/p99.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use super::reads::Server;
use super::{cpu_secs, percentile, setup, BenchError};
use corral::controller::metrics::db::SampleRow;
use corral::controller::metrics::Metrics;
use corral::controller::store as st;
use corral::metrics::Values;
use corral::model::{new_id, now_ms, GuestSample, NodeEvent};

pub struct MetricsOpts {
    pub nodes: usize,
    pub guests_per_node: usize,
    /// Sampling rounds, 15 s apart.
    pub rounds: usize,
}

const EVERY: Duration = Duration::from_secs(15);
const DAY_MS: i64 = 86_400_000;

/// What a real node sends of a guest (counters and their rates).
fn guest_values(i: usize, round: usize) -> Values {
    let t = round as f64 * 15.0;
    let x = (i % 97) as f64;
    [
        ("cpu_seconds_total", 100.0 + t * 0.2 + x),
        ("cpu_seconds_per_second", 0.2 + x / 1000.0),
        ("vcpus", 2.0),
        ("memory_bytes", 2147483648.0),
        ("memory_rss_bytes", 1.1e9 + x * 1e6),
        ("memory_used_bytes", 9.0e8 + x * 1e6),
        ("disk_read_bytes_total", 1e9 + t * 4096.0),
        ("disk_written_bytes_total", 2e9 + t * 8192.0),
        ("disk_reads_total", 1e5 + t),
        ("disk_writes_total", 2e5 + t),
        ("network_receive_bytes_total", 5e8 + t * 1000.0),
        ("network_transmit_bytes_total", 6e8 + t * 900.0),
        ("disk_read_bytes_per_second", 4096.0 + x),
        ("disk_written_bytes_per_second", 8192.0 + x),
        ("disk_reads_per_second", 1.0),
        ("disk_writes_per_second", 2.0),
        ("network_receive_bytes_per_second", 1000.0 + x),
        ("network_transmit_bytes_per_second", 900.0 + x),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn host_values() -> Values {
    [
        ("cpu_seconds_total", 1e6),
        ("cpu_seconds_per_second", 12.5),
        ("cpus", 32.0),
        ("memory_total_bytes", 2.7e11),
        ("memory_used_bytes", 2.1e11),
        ("memory_available_bytes", 6e10),
        ("filesystem_size_bytes", 4e12),
        ("filesystem_free_bytes", 1e12),
        ("network_receive_bytes_total{interface=\"eno1\"}", 1e12),
        ("network_receive_bytes_per_second{interface=\"eno1\"}", 1e7),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn node_name(n: usize) -> String {
    format!("sim-{n:03}")
}

pub async fn run(o: &MetricsOpts, tmp: &Path) -> Result<(), BenchError> {
    let dir = tmp.join("metrics");
    std::fs::create_dir_all(&dir)?;
    let (redis_url, _redis) = super::private_redis(super::free_port()?, &dir).await?;
    let server = Server::start(&dir, &redis_url).await?;
    let result = run_on(&server, o, &dir, &redis_url).await;
    server.shutdown().await;
    result
}

async fn run_on(
    server: &Server,
    o: &MetricsOpts,
    dir: &Path,
    redis_url: &str,
) -> Result<(), BenchError> {
    let t0 = Instant::now();
    let guests = fleet(server, o).await?;
    eprintln!(
        "metrics: {} nodes enrolled and their guests written in {:.1} s",
        o.nodes,
        t0.elapsed().as_secs_f64()
    );
    let db = dir.join("corral.metrics.db");
    let (query_guest, per_day) = history_of_one(server, dir, &db).await?;
    eprintln!(
        "metrics: 15 days of one guest written and weighed at {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let http = reqwest::Client::new();
    let (samples, secs, cpu) = ingest(server, o, &guests, &db, redis_url).await?;
    let total = o.nodes * o.guests_per_node;
    println!(
        "metrics: {} nodes × {} guests every {} s, {} rounds",
        o.nodes,
        o.guests_per_node,
        EVERY.as_secs(),
        o.rounds
    );
    println!(
        "  controller CPU while ingesting:  {cpu:>8.2} % of one core   (budget 10 %: {:.2}×)",
        cpu / 10.0
    );
    println!(
        "  write rate:                      {:>8.0} samples/s stored (the fleet makes {:.0}/s): each a raw row inserted and a rollup row updated",
        samples as f64 / secs,
        total as f64 / EVERY.as_secs_f64(),
    );
    println!(
        "  storage per guest:               {:>8.0} KiB a day of raw samples + {:.0} KiB a day of rollups; \
         kept (1 day raw + 15 days rollups): {:.2} MiB a guest, {:.1} GiB for {total} guests",
        per_day.0 / 1024.0,
        per_day.1 / 1024.0,
        (per_day.0 + 15.0 * per_day.1) / 1048576.0,
        (per_day.0 + 15.0 * per_day.1) * total as f64 / 1073741824.0
    );
    for agg in ["avg", "max"] {
        let path = format!("/api/v1/guests/{query_guest}/metrics?from=15d&step=5m&agg={agg}");
        let (p50, p99, points) = timed(server, &http, &path, 100).await?;
        println!(
            "  15-day {agg} query of one guest:   p50 {p50:>6.1} ms, p99 {p99:>6.1} ms ({points} points; budget p99 50 ms: {:.2}×)",
            p99 / 50.0
        );
    }
    let (p50, p99, _) = timed(server, &http, "/metrics", 20).await?;
    println!("  /metrics with {total} guests sampled: p50 {p50:>6.1} ms, p99 {p99:>6.1} ms");
    Ok(())
}

/// Enrolls the simulated nodes and writes their guests; (node, guest ids) each.
async fn fleet(server: &Server, o: &MetricsOpts) -> Result<Vec<(String, Vec<String>)>, BenchError> {
    let http = reqwest::Client::new();
    let (template, image, pool) = super::reads::register(server).await?;
    for n in 0..o.nodes {
        let node = node_name(n);
        let (s, v) = server
            .call(
                &http,
                reqwest::Method::POST,
                "/api/v1/nodes",
                Some(json!({"id": node})),
            )
            .await?;
        if s != 201 && s != 200 {
            return Err(BenchError::Setup(format!("enrolling {node}: {s} {v}")));
        }
    }
    // The store's one writer is held from here: no API call until the commit.
    let mut out = Vec::new();
    let mut tx = server.store.begin().await.map_err(setup("seeding"))?;
    for n in 0..o.nodes {
        let node = node_name(n);
        let mut ids = Vec::new();
        for g in 0..o.guests_per_node {
            let id = new_id();
            let row = super::reads::guest_row(
                &id,
                &format!("m{n:03}-{g:03}"),
                &pool,
                &template,
                &image,
                now_ms(),
            );
            st::insert_guest(&mut tx, &row)
                .await
                .map_err(setup("seeding guests"))?;
            st::set_guest_node(&mut tx, &id, Some(&node))
                .await
                .map_err(setup("seeding guests"))?;
            ids.push(id);
        }
        out.push((node, ids));
    }
    server.store.commit(tx).await.map_err(setup("seeding"))?;
    Ok(out)
}

/// One guest (of the first node) with 15 days of samples every 15 s, written through the
/// store's own path, then the raw ones older than a day purged as retention does. Its id
/// and its storage per day, weighed in databases of their own: (raw bytes, rollup bytes).
async fn history_of_one(
    server: &Server,
    dir: &Path,
    db: &Path,
) -> Result<(String, (f64, f64)), BenchError> {
    let id = {
        let rows = server
            .store
            .guest_labels(None)
            .await
            .map_err(setup("reading guests"))?;
        rows.first()
            .map(|r| r.0.clone())
            .ok_or_else(|| BenchError::Setup("no guest".into()))?
    };
    let now = now_ms();
    let m = Metrics::open(db)
        .await
        .map_err(setup("the metrics database"))?;
    write_days(&m, &id, now).await?;
    m.purge(now, DAY_MS, 15 * DAY_MS)
        .await
        .map_err(setup("purging"))?;
    // As kept: a day of raw samples and 15 days of rollups.
    let kept = Metrics::open(&dir.join("kept.metrics.db"))
        .await
        .map_err(setup("the metrics database"))?;
    write_days(&kept, &id, now).await?;
    kept.purge(now, DAY_MS, 15 * DAY_MS)
        .await
        .map_err(setup("purging"))?;
    let total = kept.db.vacuum().await.map_err(setup("vacuum"))?;
    // The rollups alone: every raw sample purged.
    let rollups = Metrics::open(&dir.join("rollups.metrics.db"))
        .await
        .map_err(setup("the metrics database"))?;
    write_days(&rollups, &id, now).await?;
    rollups
        .purge(now + 1000, 0, 15 * DAY_MS + 1000)
        .await
        .map_err(setup("purging"))?;
    let rollup_bytes = rollups.db.vacuum().await.map_err(setup("vacuum"))?;
    Ok((id, ((total - rollup_bytes).max(0.0), rollup_bytes / 15.0)))
}

/// 15 days of one guest's samples every 15 s, ending at `now`.
async fn write_days(m: &Metrics, id: &str, now: i64) -> Result<(), BenchError> {
    let n = (15 * DAY_MS / 15_000) as usize;
    let mut i = 0;
    while i < n {
        let batch: Vec<(i64, Values)> = (i..(i + 2000).min(n))
            .map(|k| (now - 15 * DAY_MS + k as i64 * 15_000, guest_values(k, k)))
            .collect();
        let rows: Vec<SampleRow> = batch
            .iter()
            .map(|(ts, v)| SampleRow {
                kind: corral::controller::metrics::GUEST,
                key: id,
                ts: *ts,
                values: corral::metrics::kept(v)
                    .map(|(k, x)| (k.as_str(), *x))
                    .collect(),
            })
            .collect();
        m.db.write(&rows).await.map_err(setup("writing history"))?;
        i += 2000;
    }
    Ok(())
}

/// Publishes `rounds` samples of every node, 15 s apart; (stored samples and bytes
/// written, seconds, controller CPU %).
async fn ingest(
    server: &Server,
    o: &MetricsOpts,
    guests: &[(String, Vec<String>)],
    db: &Path,
    redis_url: &str,
) -> Result<(u64, f64, f64), BenchError> {
    let mut conn = corral::transport::connect(redis_url)
        .await
        .map_err(setup("Redis"))?;
    let m = Metrics::open(db)
        .await
        .map_err(setup("the metrics database"))?;
    let (raw0, _) = m.db.counts().await.map_err(setup("counting"))?;
    let pid = std::process::id();
    let expected = raw0 + (o.rounds * (guests.len() * (o.guests_per_node + 1))) as i64;
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    for round in 0..o.rounds {
        let at = now_ms();
        let events: Vec<(String, NodeEvent)> = guests
            .iter()
            .map(|(node, ids)| {
                let gs = ids
                    .iter()
                    .enumerate()
                    .map(|(i, g)| GuestSample {
                        guest_id: g.clone(),
                        values: guest_values(i, round),
                    })
                    .collect();
                let ev = NodeEvent::Metrics {
                    node_id: node.clone(),
                    at_ms: at,
                    host: host_values(),
                    guests: gs,
                };
                (node.clone(), ev)
            })
            .collect();
        for (node, ev) in &events {
            corral::transport::publish(&mut conn, node, ev)
                .await
                .map_err(setup("publishing"))?;
        }
        if round + 1 < o.rounds {
            tokio::time::sleep_until((t0 + EVERY * (round as u32 + 1)).into()).await;
        }
    }
    // Until the last round is stored (or a minute passes).
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.db.counts().await.map_err(setup("counting"))?.0 < expected && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = (EVERY * o.rounds as u32)
        .as_secs_f64()
        .max(t0.elapsed().as_secs_f64());
    let cpu = (cpu_secs(pid) - cpu0) / secs * 100.0;
    let (raw1, _) = m.db.counts().await.map_err(setup("counting"))?;
    let _ = server;
    Ok(((raw1 - raw0) as u64, secs, cpu))
}

/// `n` GETs of `path`: p50 and p99 in ms, and the number of points of the last answer.
async fn timed(
    server: &Server,
    http: &reqwest::Client,
    path: &str,
    n: usize,
) -> Result<(f64, f64, usize), BenchError> {
    let mut ms = Vec::with_capacity(n);
    let mut points = 0;
    for _ in 0..n {
        let t = Instant::now();
        let resp = http
            .get(format!("http://{}{path}", server.addr))
            .bearer_auth(&server.token)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if !status.is_success() {
            return Err(BenchError::Setup(format!("{path}: {status} {body}")));
        }
        points = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["series"].as_array().map(|s| {
                    s.iter()
                        .map(|x| x["values"].as_array().map_or(0, Vec::len))
                        .sum()
                })
            })
            .unwrap_or(0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((percentile(&ms, 0.5), percentile(&ms, 0.99), points))
}
