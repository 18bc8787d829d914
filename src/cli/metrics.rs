//! `corral guest top`, `corral node top` (each one's newest sample, one request) and
//! `corral guest metrics` / `corral node metrics` (a range drawn as a terminal chart).
//!
//! The chart is plain text: one column per point (the range is asked for with as many
//! steps as the terminal is wide), eight rows of block characters scaled from zero to the
//! range's largest value, the axis labelled with that value and the range's ends.

use std::collections::BTreeMap;

use clap::Args;
use corral_client::apis::metrics_api;
use corral_client::models::{CurrentFigures, MetricHistory};

use super::output::{age, emit, Table};
use super::{CliError, Client};

/// Rows of the chart.
const HEIGHT: usize = 8;
const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

#[derive(Debug, Args)]
pub struct RangeArgs {
    /// The guest or node (name or id).
    pub subject: String,
    /// The series to draw (`corral guest top -o json` lists them).
    #[arg(long, default_value = "cpu_seconds_per_second")]
    pub series: String,
    /// Start: RFC 3339, or a duration back from now.
    #[arg(long, default_value = "1h")]
    pub from: String,
    /// End: RFC 3339, or a duration back from now (default: now).
    #[arg(long)]
    pub to: Option<String>,
    /// One point per step (default: as many as the terminal is wide).
    #[arg(long)]
    pub step: Option<String>,
    /// `avg` or `max` of each step.
    #[arg(long, default_value = "avg")]
    pub agg: String,
}

/// A value for people: bytes as KiB/MiB/GiB, rates with /s, the rest with 3 digits.
fn human(series: &str, v: f64) -> String {
    let bytes = series.contains("bytes");
    let rate = series.contains("per_second");
    let s = if bytes {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut x = v;
        let mut u = 0;
        while x.abs() >= 1024.0 && u < units.len() - 1 {
            x /= 1024.0;
            u += 1;
        }
        format!("{x:.1} {}", units[u])
    } else {
        format!("{v:.3}")
    };
    if rate && bytes {
        format!("{s}/s")
    } else {
        s
    }
}

fn get(c: &CurrentFigures, series: &str) -> Option<f64> {
    c.values.get(series).copied()
}

/// The top table's figure columns: (header, series).
const GUEST_COLUMNS: &[(&str, &str)] = &[
    ("cpu (cores)", "cpu_seconds_per_second"),
    ("memory", "memory_bytes"),
    ("used", "memory_used_bytes"),
    ("disk read", "disk_read_bytes_per_second"),
    ("disk write", "disk_written_bytes_per_second"),
    ("net rx", "network_receive_bytes_per_second"),
    ("net tx", "network_transmit_bytes_per_second"),
];

const NODE_COLUMNS: &[(&str, &str)] = &[
    ("cpu (cores)", "cpu_seconds_per_second"),
    ("cpus", "cpus"),
    ("memory used", "memory_used_bytes"),
    ("memory", "memory_total_bytes"),
    ("storage free", "filesystem_free_bytes"),
];

fn top_table(
    first: &[&'static str],
    cols: &[(&'static str, &str)],
    rows: &[CurrentFigures],
    lead: impl Fn(&CurrentFigures) -> Vec<String>,
) -> Table {
    let mut headers = first.to_vec();
    headers.extend(cols.iter().map(|(h, _)| *h));
    headers.push("sampled");
    let mut t = Table::new(&headers);
    for r in rows {
        let mut row = lead(r);
        for (_, s) in cols {
            row.push(get(r, s).map_or_else(|| "-".into(), |v| human(s, v)));
        }
        row.push(r.at.as_deref().map_or_else(|| "-".into(), age));
        t.row(row);
    }
    t
}

/// The chart of one series, `width` columns.
pub fn chart(series: &str, points: &[(i64, f64)], width: usize) -> String {
    if points.is_empty() {
        return format!("{series}: no samples in this range\n");
    }
    let max = points.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let scale = if max > 0.0 { max } else { 1.0 };
    let cols: Vec<f64> = points.iter().rev().take(width).rev().map(|p| p.1).collect();
    let mut out = format!("{series} (max {})\n", human(series, max));
    for row in (0..HEIGHT).rev() {
        let line: String = cols
            .iter()
            .map(|v| {
                let eighths = ((v.max(0.0) / scale) * (HEIGHT * 8) as f64).round() as usize;
                let here = eighths.saturating_sub(row * 8).min(8);
                BLOCKS[here]
            })
            .collect();
        out.push_str(&format!("│{line}\n"));
    }
    out.push_str(&format!("└{}\n", "─".repeat(cols.len())));
    let first = points.first().map_or(0, |p| p.0);
    let last = points.last().map_or(0, |p| p.0);
    out.push_str(&format!(
        " {} … {}\n",
        corral::model::rfc3339(first),
        corral::model::rfc3339(last)
    ));
    out
}

fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(80)
        .clamp(20, 400)
        - 2
}

impl Client {
    /// `guest top`: every guest's newest sample.
    pub async fn guest_top(&self, node: Option<String>) -> Result<bool, CliError> {
        let rows = metrics_api::metrics_guests_now(self.config(), node.as_deref()).await?;
        emit(self.out, &rows, || {
            top_table(&["name", "state", "node"], GUEST_COLUMNS, &rows, |r| {
                vec![
                    r.name.clone(),
                    r.state.clone().unwrap_or_default(),
                    r.node_id.clone().unwrap_or_default(),
                ]
            })
        });
        Ok(true)
    }

    /// `node top`: every node's newest sample.
    pub async fn node_top(&self) -> Result<bool, CliError> {
        let rows = metrics_api::metrics_nodes_now(self.config()).await?;
        emit(self.out, &rows, || {
            top_table(&["node", "hostname"], NODE_COLUMNS, &rows, |r| {
                vec![r.id.clone(), r.name.clone()]
            })
        });
        Ok(true)
    }

    /// `guest metrics` / `node metrics`: a range, charted.
    pub async fn metrics_chart(&self, node: bool, a: RangeArgs) -> Result<bool, CliError> {
        let width = terminal_width();
        let step = match &a.step {
            Some(s) => Some(s.clone()),
            None => Some(default_step(&a.from, a.to.as_deref(), width)),
        };
        let c = self.config();
        let (from, to, agg, series) = (
            Some(a.from.as_str()),
            a.to.as_deref(),
            Some(a.agg.as_str()),
            Some(a.series.as_str()),
        );
        let h: MetricHistory = if node {
            metrics_api::node_metrics(c, &a.subject, from, to, step.as_deref(), agg, series).await?
        } else {
            metrics_api::guest_metrics(c, &a.subject, from, to, step.as_deref(), agg, series)
                .await?
        };
        if self.out != super::Output::Table {
            super::output::emit_record(self.out, &h);
            return Ok(true);
        }
        let by_name: BTreeMap<&str, Vec<(i64, f64)>> = h
            .series
            .iter()
            .map(|s| {
                let pts = s
                    .at_ms
                    .iter()
                    .copied()
                    .zip(s.values.iter().copied())
                    .collect();
                (s.name.as_str(), pts)
            })
            .collect();
        let points = by_name.get(a.series.as_str()).cloned().unwrap_or_default();
        print!("{}", chart(&a.series, &points, width));
        println!(
            " {} of each {} s step, from the {} data",
            a.agg, h.step_seconds, h.source
        );
        Ok(true)
    }
}

/// A step giving about one point per column, for durations like `6h`; otherwise the
/// server's default.
fn default_step(from: &str, to: Option<&str>, width: usize) -> String {
    let secs = |s: &str| humantime::parse_duration(s).ok().map(|d| d.as_secs());
    match (secs(from), to.map(secs)) {
        (Some(f), None) => format!("{}s", (f / width as u64).max(15)),
        (Some(f), Some(Some(t))) if f > t => format!("{}s", ((f - t) / width as u64).max(15)),
        _ => "15s".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_scales_to_its_largest_value() {
        let pts: Vec<(i64, f64)> = (0..4).map(|i| (i * 1000, i as f64)).collect();
        let c = chart("cpu_seconds_per_second", &pts, 10);
        let rows: Vec<&str> = c.lines().collect();
        assert!(rows[0].contains("max 3.000"), "{c}");
        // Eight rows of eighths: the top one is full only at the largest value, a
        // middle one holds the top of 2 (43 of 64 eighths), the bottom one every
        // value above zero.
        assert_eq!(rows[1], "│   █");
        assert_eq!(rows[3], "│  ▃█");
        assert_eq!(rows[8], "│ ███");
        assert_eq!(human("memory_bytes", 2.0 * 1048576.0), "2.0 MiB");
        assert_eq!(human("disk_read_bytes_per_second", 512.0), "512.0 B/s");
        assert_eq!(default_step("6h", None, 100), "216s");
    }
}
