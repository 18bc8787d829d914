//! The Prometheus text exposition (format 0.0.4) and the controller's own figures.
//!
//! [`Exposition`] groups samples by family, so each family has one `# HELP`, one
//! `# TYPE` and then its samples, as the format requires. [`TELEMETRY`] holds what only
//! the running controller knows: API latency by route and status, and step durations by
//! kind and step (histograms since the controller started, as Prometheus expects of a
//! process's histograms). Everything else (operations, guests, nodes, queues) is read
//! when scraped (`api/prometheus.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::{LazyLock, Mutex};

/// API latency buckets, seconds.
const API_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Step duration buckets, seconds.
const STEP_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

/// The controller's own histograms.
#[derive(Default)]
pub struct Telemetry {
    api: Mutex<HashMap<(String, String, u16), Histogram>>,
    steps: Mutex<HashMap<(String, String), Histogram>>,
}

/// The process's telemetry: one controller per process.
pub static TELEMETRY: LazyLock<Telemetry> = LazyLock::new(Telemetry::default);

impl Telemetry {
    /// An API request answered: its route (the OpenAPI operation), method and status.
    pub fn api(&self, route: &str, method: &str, status: u16, secs: f64) {
        if let Ok(mut m) = self.api.lock() {
            m.entry((route.to_string(), method.to_string(), status))
                .or_insert_with(|| Histogram::new(API_BUCKETS))
                .observe(secs);
        }
    }

    /// A step ended (done, failed or undone) after `secs` from its first start.
    pub fn step(&self, kind: &str, step: &str, secs: f64) {
        if let Ok(mut m) = self.steps.lock() {
            m.entry((kind.to_string(), step.to_string()))
                .or_insert_with(|| Histogram::new(STEP_BUCKETS))
                .observe(secs);
        }
    }

    pub fn render(&self, out: &mut Exposition) {
        if let Ok(m) = self.api.lock() {
            for ((route, method, status), h) in m.iter() {
                let status = status.to_string();
                out.histogram(
                    "corral_http_request_duration_seconds",
                    "API requests by route (OpenAPI operation), method and status.",
                    &[("route", route), ("method", method), ("status", &status)],
                    h,
                );
            }
        }
        if let Ok(m) = self.steps.lock() {
            for ((kind, step), h) in m.iter() {
                out.histogram(
                    "corral_step_duration_seconds",
                    "Operation steps from their first start to their end, by kind and step.",
                    &[("kind", kind), ("step", step)],
                    h,
                );
            }
        }
    }
}

struct Family {
    ty: &'static str,
    help: String,
    lines: Vec<String>,
}

/// An exposition being written.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

/// A label value, escaped as the format says.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `{a="x",b="y"}` from pairs and an already written label list (`{c="z"}` or "").
fn label_set(labels: &[(&str, &str)], extra: &str) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    let extra = extra.trim_start_matches('{').trim_end_matches('}');
    if !extra.is_empty() {
        parts.push(extra.to_string());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn family(&mut self, name: &str, ty: &'static str, help: &str) -> &mut Family {
        self.families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                ty,
                help: help.to_string(),
                lines: Vec::new(),
            })
    }

    /// One sample of a gauge or counter; `extra` is a label list already in the
    /// format's syntax (a series name's own labels).
    pub fn sample(
        &mut self,
        name: &str,
        ty: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        extra: &str,
        value: f64,
    ) {
        let line = format!("{name}{} {}", label_set(labels, extra), number(value));
        self.family(name, ty, help).lines.push(line);
    }

    fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut lines = Vec::with_capacity(h.bounds.len() + 3);
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            let le = number(*b);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            lines.push(format!("{name}_bucket{} {c}", label_set(&l, "")));
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        lines.push(format!("{name}_bucket{} {}", label_set(&l, ""), h.count));
        lines.push(format!(
            "{name}_sum{} {}",
            label_set(labels, ""),
            number(h.sum)
        ));
        lines.push(format!("{name}_count{} {}", label_set(labels, ""), h.count));
        self.family(name, "histogram", help).lines.extend(lines);
    }

    /// The text, families in name order.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for (name, f) in self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.ty);
            for l in f.lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }
}

/// A node's or guest's newest sample as exposition samples: `prefix` + the series'
/// name, its own labels after `labels`. Counters are typed counter, the rest gauge.
pub fn sampled(
    out: &mut Exposition,
    prefix: &str,
    labels: &[(&str, &str)],
    values: &crate::metrics::Values,
) {
    for (series, v) in values {
        let base = crate::metrics::base(series);
        let ty = if crate::metrics::is_counter(series) {
            "counter"
        } else {
            "gauge"
        };
        let name = format!("{prefix}{base}");
        out.sample(
            &name,
            ty,
            "As the node sampled it (see the metrics module's naming).",
            labels,
            crate::metrics::labels(series),
            *v,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_labels_escaped() {
        let mut e = Exposition::default();
        e.sample(
            "corral_x",
            "gauge",
            "x",
            &[("a", "q\"1")],
            "{i=\"eth0\"}",
            1.5,
        );
        e.sample("corral_x", "gauge", "x", &[("a", "2")], "", 2.0);
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(1.5);
        e.histogram("corral_h", "h", &[("k", "v")], &h);
        let text = e.finish();
        assert_eq!(text.matches("# TYPE corral_x gauge").count(), 1);
        assert!(text.contains("corral_x{a=\"q\\\"1\",i=\"eth0\"} 1.5\n"));
        assert!(text.contains("corral_h_bucket{k=\"v\",le=\"1\"} 0\n"));
        assert!(text.contains("corral_h_bucket{k=\"v\",le=\"+Inf\"} 1\n"));
        assert!(text.contains("corral_h_count{k=\"v\"} 1\n"));
    }
}
