//! Metric names and values, shared by the node (which samples them) and the controller
//! (which keeps their history and exposes them to Prometheus).
//!
//! A sample is a map from a name to a number. Names follow Prometheus' conventions, so
//! the exposition can use them as they are (with a `corral_guest_` or `corral_node_`
//! prefix):
//! * a counter ends in `_total` (`cpu_seconds_total`, `disk_read_bytes_total`); counters
//!   are exposed but not kept as history, because an average of a counter means nothing;
//! * for each counter the node also sends its rate over the last interval, named
//!   `<name without _total>_per_second` (`cpu_seconds_per_second` is the number of cores
//!   busy); rates and gauges (`memory_bytes`) are what the history keeps;
//! * a name may carry labels in Prometheus' syntax, `network_receive_bytes_total{interface="eth0"}`.
//!
//! The node computes the rates ([`Rates`]) because it has consecutive samples of the same
//! counters; the controller would lose them at each restart.

use std::collections::{BTreeMap, HashMap, HashSet};

/// One sample: name → value.
pub type Values = BTreeMap<String, f64>;

/// The name without its labels.
pub fn base(name: &str) -> &str {
    name.split_once('{').map_or(name, |(b, _)| b)
}

/// The labels part, braces included (`{interface="eth0"}`), or "".
pub fn labels(name: &str) -> &str {
    name.find('{').map_or("", |i| &name[i..])
}

/// Counters are exposed, never kept as history.
pub fn is_counter(name: &str) -> bool {
    base(name).ends_with("_total")
}

/// The rate series of counter `name`: `x_total{l}` → `x_per_second{l}`.
pub fn rate_name(name: &str) -> Option<String> {
    let b = base(name).strip_suffix("_total")?;
    Some(format!("{b}_per_second{}", labels(name)))
}

/// Turns counters into per-second rates against the previous sample of the same subject.
#[derive(Debug, Default)]
pub struct Rates {
    prev: HashMap<String, (i64, Values)>,
}

impl Rates {
    /// Adds the rate of each counter of `values` (sampled at `at_ms`) since the previous
    /// sample of `subject`. A counter that went down (the guest restarted) has no rate
    /// this time.
    pub fn add(&mut self, subject: &str, at_ms: i64, values: &mut Values) {
        if let Some((t0, v0)) = self.prev.get(subject) {
            let dt = (at_ms - t0) as f64 / 1000.0;
            if dt > 0.0 {
                let rates: Vec<(String, f64)> = values
                    .iter()
                    .filter(|(n, _)| is_counter(n))
                    .filter_map(|(n, v)| {
                        let before = v0.get(n)?;
                        (v >= before).then(|| Some((rate_name(n)?, (v - before) / dt)))?
                    })
                    .collect();
                values.extend(rates);
            }
        }
        let counters: Values = values
            .iter()
            .filter(|(n, _)| is_counter(n))
            .map(|(n, v)| (n.clone(), *v))
            .collect();
        self.prev.insert(subject.to_string(), (at_ms, counters));
    }

    /// Forgets subjects not in `seen` (guests that went away).
    pub fn keep(&mut self, seen: &HashSet<String>) {
        self.prev.retain(|s, _| seen.contains(s));
    }
}

/// The series the history keeps of a sample: everything but counters.
pub fn kept(values: &Values) -> impl Iterator<Item = (&String, &f64)> {
    values
        .iter()
        .filter(|(n, v)| !is_counter(n) && v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_rates_and_labels_stay() {
        let mut r = Rates::default();
        let mut a = Values::from([
            ("cpu_seconds_total".to_string(), 10.0),
            ("net_rx_bytes_total{interface=\"eth0\"}".to_string(), 1000.0),
            ("memory_bytes".to_string(), 5.0),
        ]);
        r.add("g", 0, &mut a);
        assert_eq!(a.len(), 3, "no rate on the first sample");
        let mut b = Values::from([
            ("cpu_seconds_total".to_string(), 25.0),
            ("net_rx_bytes_total{interface=\"eth0\"}".to_string(), 4000.0),
            ("memory_bytes".to_string(), 5.0),
        ]);
        r.add("g", 15_000, &mut b);
        assert_eq!(b["cpu_seconds_per_second"], 1.0);
        assert_eq!(b["net_rx_bytes_per_second{interface=\"eth0\"}"], 200.0);
        let kept: Vec<&String> = kept(&b).map(|(n, _)| n).collect();
        assert_eq!(kept.len(), 3);
        // A counter that went down (a restart) has no rate.
        let mut c = Values::from([("cpu_seconds_total".to_string(), 1.0)]);
        r.add("g", 30_000, &mut c);
        assert!(!c.contains_key("cpu_seconds_per_second"));
    }
}
