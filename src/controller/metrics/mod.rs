//! Metrics in the controller: history (S29, S87), current figures, and the Prometheus
//! exposition.
//!
//! Flow: a node sends one [`NodeEvent::Metrics`](crate::model::NodeEvent) every
//! `metrics_secs`; ingest keeps the samples of the guests recorded on that node (a node
//! cannot write another node's guests' history) and hands them to [`Metrics::record`],
//! which
//! 1. writes them to the metrics database (`db.rs`: raw samples, and each 5-minute rollup
//!    brought up to date in the same transaction), and
//! 2. keeps the newest sample of each node and guest in memory, for `corral guest top`,
//!    `corral node top` and `/metrics`.
//!
//! The history API (`api/metrics.rs`) checks a query's window (`query.rs`), reads raw
//! samples or rollups and folds them into one point per step. Retention
//! (`retention.metrics_raw_hours`, `retention.metrics_days`) is applied by the same hourly
//! loop as the audit trail's.
//!
//! The newest samples are not persisted: after a restart `top` is empty for at most one
//! sampling interval, and the history is intact.

pub mod codec;
pub mod db;
pub mod prom;
pub mod query;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::RwLock;

use crate::metrics::{kept, Values};
use crate::model::GuestSample;
use db::{Db, SampleRow};
use query::{AggKind, Source, Window};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("creating the metrics database {0}: {1}")]
    Open(String, #[source] std::io::Error),
    #[error("more series names than the metrics database numbers")]
    TooManyNames,
    #[error("a lock was poisoned")]
    Poisoned,
}

/// The two kinds of subject.
pub const NODE: &str = "node";
pub const GUEST: &str = "guest";

/// A subject's newest sample: its node, when (ms, the node's clock), its values.
#[derive(Debug, Clone)]
pub struct Current {
    pub node: String,
    pub at_ms: i64,
    pub values: Values,
}

pub struct Metrics {
    pub db: Db,
    nodes: RwLock<HashMap<String, Current>>,
    guests: RwLock<HashMap<String, Current>>,
}

/// One series of a history answer: (time ms, value) per step.
pub type History = BTreeMap<String, Vec<(i64, f64)>>;

impl Metrics {
    pub async fn open(path: &Path) -> Result<Metrics, MetricsError> {
        Ok(Metrics {
            db: Db::open(path).await?,
            nodes: RwLock::new(HashMap::new()),
            guests: RwLock::new(HashMap::new()),
        })
    }

    /// Records one node's sample (its guests already checked to be on it).
    pub async fn record(
        &self,
        node: &str,
        at_ms: i64,
        host: Values,
        guests: Vec<GuestSample>,
    ) -> Result<u64, MetricsError> {
        let mut rows = vec![row(NODE, node, at_ms, &host)];
        rows.extend(
            guests
                .iter()
                .map(|g| row(GUEST, &g.guest_id, at_ms, &g.values)),
        );
        let new = self.db.write(&rows).await?;
        drop(rows);
        let newer = |c: Option<&Current>| c.is_none_or(|c| c.at_ms <= at_ms);
        if let Ok(mut m) = self.nodes.write() {
            if newer(m.get(node)) {
                let c = Current {
                    node: node.to_string(),
                    at_ms,
                    values: host,
                };
                m.insert(node.to_string(), c);
            }
        }
        if let Ok(mut m) = self.guests.write() {
            for g in guests {
                if newer(m.get(&g.guest_id)) {
                    let c = Current {
                        node: node.to_string(),
                        at_ms,
                        values: g.values,
                    };
                    m.insert(g.guest_id, c);
                }
            }
        }
        Ok(new)
    }

    /// The newest sample of a guest.
    pub fn guest_now(&self, id: &str) -> Option<Current> {
        self.guests.read().ok()?.get(id).cloned()
    }

    /// The newest sample of a node.
    pub fn node_now(&self, id: &str) -> Option<Current> {
        self.nodes.read().ok()?.get(id).cloned()
    }

    /// Every guest's newest sample, for the exposition.
    pub fn guests_now(&self) -> Vec<(String, Current)> {
        self.guests
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Every node's newest sample.
    pub fn nodes_now(&self) -> Vec<(String, Current)> {
        self.nodes
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// Forgets the newest sample of guests that are gone.
    pub fn forget_guest(&self, id: &str) {
        if let Ok(mut m) = self.guests.write() {
            m.remove(id);
        }
    }

    /// A subject's history over `w`, one point per step, `series` narrowing it (empty:
    /// all).
    pub async fn history(
        &self,
        kind: &str,
        key: &str,
        w: &Window,
        agg: AggKind,
        series: &[String],
    ) -> Result<History, MetricsError> {
        let Some(subject) = self.db.subject(kind, key).await? else {
            return Ok(History::new());
        };
        let items = match w.source {
            Source::Raw => self.db.raw(subject, w.from, w.to).await?,
            Source::Rollup => self.db.rollups(subject, w.from, w.to).await?,
        };
        let mut out = History::new();
        for (id, points) in query::fold(items, w.from, w.step_ms) {
            let Some(name) = self.db.name(id) else {
                continue;
            };
            if !series.is_empty() && !series.contains(&name) {
                continue;
            }
            let points = points
                .iter()
                .map(|(t, a)| (*t, query::value(a, agg)))
                .collect();
            out.insert(name, points);
        }
        Ok(out)
    }

    /// Purges by retention at `now`: raw samples older than `raw_ms`, rollups older than
    /// `rollup_ms`. Answers (samples, rollups) removed.
    pub async fn purge(
        &self,
        now: i64,
        raw_ms: i64,
        rollup_ms: i64,
    ) -> Result<(u64, u64), MetricsError> {
        self.db.purge(now - raw_ms, now - rollup_ms).await
    }
}

fn row<'a>(kind: &'a str, key: &'a str, ts: i64, values: &'a Values) -> SampleRow<'a> {
    SampleRow {
        kind,
        key,
        ts,
        values: kept(values).map(|(n, v)| (n.as_str(), *v)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: i64, v: f64) -> (i64, Values) {
        (
            t,
            Values::from([
                ("cpu_seconds_per_second".to_string(), v),
                ("cpu_seconds_total".to_string(), 99.0),
            ]),
        )
    }

    /// Rollups over any window equal the raw samples' average and maximum, with
    /// whole-number samples (exact in f32 and in f64 sums), across bucket edges; replays
    /// change nothing.
    #[tokio::test]
    async fn rollups_match_the_raw_samples_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::open(&dir.path().join("metrics.db")).await.unwrap();
        let t0 = 1_800_000_000_000 - 1_800_000_000_000 % query::BUCKET_MS;
        let mut all = Vec::new();
        for i in 0..100i64 {
            let (t, v) = sample(t0 + i * 15_000, ((i * 37) % 23) as f64);
            all.push((t, v["cpu_seconds_per_second"]));
            m.record(
                "n1",
                t,
                v.clone(),
                vec![GuestSample {
                    guest_id: "g".into(),
                    values: v,
                }],
            )
            .await
            .unwrap();
        }
        // A replayed event is ignored whole.
        let (t, v) = sample(t0, 1000.0);
        m.record("n1", t, v.clone(), vec![]).await.unwrap();
        for (from, to) in [
            (t0, t0 + 300_000),
            (t0, t0 + 1_500_000),
            (t0 + 300_000, t0 + 900_000),
        ] {
            let raw: Vec<f64> = all
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|x| x.1)
                .collect();
            let avg = raw.iter().sum::<f64>() / raw.len() as f64;
            let max = raw.iter().cloned().fold(f64::MIN, f64::max);
            let w = Window {
                from,
                to,
                step_ms: to - from,
                source: Source::Rollup,
            };
            for (agg, want) in [(AggKind::Avg, avg), (AggKind::Max, max)] {
                let h = m.history(GUEST, "g", &w, agg, &[]).await.unwrap();
                assert_eq!(
                    h["cpu_seconds_per_second"],
                    vec![(from, want)],
                    "{agg:?} over {from}..{to}"
                );
                assert!(
                    !h.contains_key("cpu_seconds_total"),
                    "counters are not history"
                );
            }
            let w = Window {
                source: Source::Raw,
                ..w
            };
            let h = m.history(NODE, "n1", &w, AggKind::Avg, &[]).await.unwrap();
            assert_eq!(h["cpu_seconds_per_second"], vec![(from, avg)]);
        }
    }

    /// Retention with an injected clock: raw samples go after their hours, rollups
    /// after their days, each by its own cutoff.
    #[tokio::test]
    async fn purge_follows_retention() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::open(&dir.path().join("metrics.db")).await.unwrap();
        let day = 86_400_000;
        let now = 1_800_000_000_000i64;
        for age_days in [0, 2, 20] {
            let (t, v) = sample(now - age_days * day, 1.0);
            m.record("n1", t, v, vec![]).await.unwrap();
        }
        assert_eq!(m.db.counts().await.unwrap(), (3, 3));
        let (raw, rollups) = m.purge(now, day, 15 * day).await.unwrap();
        assert_eq!((raw, rollups), (2, 1));
        assert_eq!(m.db.counts().await.unwrap(), (1, 2));
        // Later, by the same rules: the two-day-old rollup stays until day 15.
        assert_eq!(
            m.purge(now + 10 * day, day, 15 * day).await.unwrap(),
            (1, 0)
        );
        assert_eq!(
            m.purge(now + 14 * day, day, 15 * day).await.unwrap(),
            (0, 1)
        );
    }
}
