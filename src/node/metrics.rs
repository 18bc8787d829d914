//! The `metrics` loop: every `metrics_secs` (15 by default) one sample of the host and of
//! every running domain, sent as one [`NodeEvent::Metrics`] on the node's own stream and
//! stamped with the node's clock (S86).
//!
//! * The host (S22): CPU from `/proc/stat`, memory from `/proc/meminfo`, the storage
//!   directory's filesystem, each whole disk from `/proc/diskstats`, each interface from
//!   `/proc/net/dev` (guests' tap devices left out: they are the guests' own figures).
//! * Guests (S77): one `virConnectGetAllDomainStats` call for all of them
//!   ([`super::domstats`]): CPU time, the balloon (its size, and the guest's own used
//!   memory when the balloon driver reports it), vCPUs, and disk and NIC I/O summed over
//!   the guest's devices.
//!
//! Counters go as they are, and with their rate since the previous sample
//! ([`crate::metrics::Rates`]); the names are in [`crate::metrics`]. A failed sample is
//! logged and skipped: the next one comes `metrics_secs` later.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::domstats::DomainStats;
use super::NodeCtx;
use crate::metrics::{Rates, Values};
use crate::model::{now_ms, GuestSample, NodeEvent};

/// The subject name the host's rates are kept under.
const HOST: &str = "";

pub async fn metrics_loop(ctx: Arc<NodeCtx>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    if ctx.cfg.metrics_secs == 0 {
        ctx.set_worker("metrics", "disabled in the configuration");
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(ctx.cfg.metrics_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rates = Rates::default();
    ctx.set_worker("metrics", "running");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                let ev = sample(&ctx, &mut rates).await;
                if let Err(e) = ctx.publisher.publish(&ev).await {
                    tracing::warn!("sending metrics: {e}");
                }
            }
        }
    }
}

/// One sample of everything, as the event that carries it.
async fn sample(ctx: &NodeCtx, rates: &mut Rates) -> NodeEvent {
    let at_ms = now_ms();
    let stats = match ctx.hv.domain_stats().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("reading domain statistics: {e}");
            Vec::new()
        }
    };
    let mut host = host_values(&ctx.cfg.storage_dir);
    rates.add(HOST, at_ms, &mut host);
    let mut seen: HashSet<String> = HashSet::from([HOST.to_string()]);
    let guests = stats
        .iter()
        .filter(|s| !s.uuid.is_empty())
        .map(|s| {
            let mut values = guest_values(s);
            rates.add(&s.uuid, at_ms, &mut values);
            seen.insert(s.uuid.clone());
            GuestSample {
                guest_id: s.uuid.clone(),
                values,
            }
        })
        .collect();
    rates.keep(&seen);
    NodeEvent::Metrics {
        node_id: ctx.node_id.clone(),
        at_ms,
        host,
        guests,
    }
}

/// A guest's figures from libvirt's statistics.
pub fn guest_values(s: &DomainStats) -> Values {
    let p = &s.params;
    let mut v = Values::new();
    let mut put = |name: &str, value: Option<f64>| {
        if let Some(x) = value {
            v.insert(name.to_string(), x);
        }
    };
    put("cpu_seconds_total", p.get("cpu.time").map(|ns| ns / 1e9));
    put("vcpus", p.get("vcpu.current").copied());
    put("memory_bytes", p.get("balloon.current").map(|k| k * 1024.0));
    put("memory_rss_bytes", p.get("balloon.rss").map(|k| k * 1024.0));
    // What the guest itself uses: reported by the balloon driver when its statistics
    // are enabled (the domain template sets a period).
    let used = match (p.get("balloon.available"), p.get("balloon.unused")) {
        (Some(a), Some(u)) if a >= u => Some((a - u) * 1024.0),
        _ => None,
    };
    put("memory_used_bytes", used);
    let sum = |group: &str, field: &str| -> Option<f64> {
        let n = *p.get(&format!("{group}.count"))? as usize;
        Some(
            (0..n)
                .filter_map(|i| p.get(&format!("{group}.{i}.{field}")))
                .sum(),
        )
    };
    put("disk_read_bytes_total", sum("block", "rd.bytes"));
    put("disk_written_bytes_total", sum("block", "wr.bytes"));
    put("disk_reads_total", sum("block", "rd.reqs"));
    put("disk_writes_total", sum("block", "wr.reqs"));
    put("network_receive_bytes_total", sum("net", "rx.bytes"));
    put("network_transmit_bytes_total", sum("net", "tx.bytes"));
    v
}

/// The host's figures.
fn host_values(storage_dir: &std::path::Path) -> Values {
    let mut v = Values::new();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    cpu(&read("/proc/stat"), &mut v);
    memory(&read("/proc/meminfo"), &mut v);
    let (size_mib, free_mib) = super::facts::fs_space(storage_dir);
    v.insert("filesystem_size_bytes".into(), size_mib as f64 * 1048576.0);
    v.insert("filesystem_free_bytes".into(), free_mib as f64 * 1048576.0);
    disks(&read("/proc/diskstats"), &mut v, |d| {
        std::path::Path::new("/sys/block").join(d).exists()
    });
    interfaces(&read("/proc/net/dev"), &mut v);
    v
}

/// Busy CPU seconds over all CPUs (everything but idle and iowait) and the CPU count.
fn cpu(stat: &str, v: &mut Values) {
    let cpus = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let Some(total) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return;
    };
    let f: Vec<f64> = total
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: clock ticks (USER_HZ, 100).
    let busy: f64 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, x)| x)
        .sum();
    v.insert("cpu_seconds_total".into(), busy / 100.0);
    v.insert("cpus".into(), cpus as f64);
}

fn memory(meminfo: &str, v: &mut Values) {
    let kib = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse::<f64>().ok())
            .map(|k| k * 1024.0)
    };
    if let (Some(total), Some(avail)) = (kib("MemTotal:"), kib("MemAvailable:")) {
        v.insert("memory_total_bytes".into(), total);
        v.insert("memory_available_bytes".into(), avail);
        v.insert("memory_used_bytes".into(), total - avail);
    }
}

/// Whole disks (`is_disk`), bytes read and written (sectors are 512 bytes here).
fn disks(diskstats: &str, v: &mut Values, is_disk: impl Fn(&str) -> bool) {
    for line in diskstats.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = f.get(2) else { continue };
        if name.starts_with("loop") || name.starts_with("ram") || !is_disk(name) {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
        if let (Some(rd), Some(wr)) = (n(5), n(9)) {
            v.insert(
                format!("disk_read_bytes_total{{device=\"{name}\"}}"),
                rd * 512.0,
            );
            v.insert(
                format!("disk_written_bytes_total{{device=\"{name}\"}}"),
                wr * 512.0,
            );
        }
    }
}

/// Each interface but loopback and guests' taps: bytes received and sent.
fn interfaces(netdev: &str, v: &mut Values) {
    for line in netdev.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" || name.starts_with("vnet") || name.starts_with("tap") {
            continue;
        }
        let f: Vec<f64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let (Some(rx), Some(tx)) = (f.first(), f.get(8)) {
            v.insert(
                format!("network_receive_bytes_total{{interface=\"{name}\"}}"),
                *rx,
            );
            v.insert(
                format!("network_transmit_bytes_total{{interface=\"{name}\"}}"),
                *tx,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_files_parse() {
        let mut v = Values::new();
        cpu(
            "cpu  100 0 50 1000 20 0 10 0 0 0\ncpu0 50 0 25 500 10 0 5 0 0 0\ncpu1 50 0 25 500 10 0 5 0 0 0\nintr 1\n",
            &mut v,
        );
        assert_eq!(v["cpu_seconds_total"], 1.6);
        assert_eq!(v["cpus"], 2.0);
        memory(
            "MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:  400 kB\n",
            &mut v,
        );
        assert_eq!(v["memory_used_bytes"], 600.0 * 1024.0);
        disks(
            "   8       0 sda 10 0 200 5 20 0 400 9 0 0 0\n   8       1 sda1 1 0 2 0 0 0 0 0 0 0 0\n   7 0 loop0 1 0 8 0 0 0 0 0 0 0 0\n",
            &mut v,
            |d| d == "sda",
        );
        assert_eq!(v["disk_read_bytes_total{device=\"sda\"}"], 200.0 * 512.0);
        assert!(!v.contains_key("disk_read_bytes_total{device=\"sda1\"}"));
        interfaces(
            "Inter-|   Receive\n face |bytes\n  eth0: 1000 5 0 0 0 0 0 0 2000 6 0 0 0 0 0 0\n    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n vnet3: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n",
            &mut v,
        );
        assert_eq!(
            v["network_transmit_bytes_total{interface=\"eth0\"}"],
            2000.0
        );
        assert!(!v.keys().any(|k| k.contains("vnet") || k.contains("\"lo\"")));
    }

    #[test]
    fn guest_figures_sum_devices() {
        let s = DomainStats {
            uuid: "u".into(),
            params: [
                ("cpu.time", 3e9),
                ("balloon.current", 1024.0),
                ("balloon.available", 900.0),
                ("balloon.unused", 300.0),
                ("block.count", 2.0),
                ("block.0.rd.bytes", 10.0),
                ("block.1.rd.bytes", 5.0),
                ("net.count", 1.0),
                ("net.0.tx.bytes", 7.0),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        };
        let v = guest_values(&s);
        assert_eq!(v["cpu_seconds_total"], 3.0);
        assert_eq!(v["memory_bytes"], 1024.0 * 1024.0);
        assert_eq!(v["memory_used_bytes"], 600.0 * 1024.0);
        assert_eq!(v["disk_read_bytes_total"], 15.0);
        assert_eq!(v["network_transmit_bytes_total"], 7.0);
    }
}
