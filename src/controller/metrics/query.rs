//! A history query's window (`from`, `to`, `step`, `agg`), checked at the edge, and the
//! folding of stored samples or rollups into one point per step.
//!
//! * `from` and `to` are RFC 3339 times or durations back from now (`1h`); by default the
//!   last hour.
//! * `step` is a duration of at least a second; by default about 300 points. At most
//!   [`MAX_POINTS`] points (Prometheus' own limit).
//! * The range may not be longer than the history kept (`retention.metrics_days`).
//! * Steps under 5 minutes over the raw samples still kept are answered from them; every
//!   other query from the 5-minute rollups, the step then rounded up to whole buckets.

use std::collections::BTreeMap;

use super::codec::Agg;

/// The rollups' bucket: 5 minutes.
pub const BUCKET_MS: i64 = 300_000;
/// The most points one series may have in an answer.
pub const MAX_POINTS: i64 = 11_000;
const DEFAULT_RANGE_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    Avg,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Raw,
    Rollup,
}

/// A checked query window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub from: i64,
    pub to: i64,
    pub step_ms: i64,
    pub source: Source,
}

/// What the history keeps, for choosing the source and bounding the range.
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub raw_ms: i64,
    pub rollup_ms: i64,
}

/// Why a window is refused; each says what to fix (the API answers it as a 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("{what} {value:?} is neither an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration back from now (1h)")]
    Time { what: &'static str, value: String },
    #[error("from must be before to")]
    Inverted,
    #[error("the range is {days} days; the history keeps {kept} days (retention.metrics_days): ask for less")]
    TooLong { days: i64, kept: i64 },
    #[error("step {value:?} is not a duration ({why}); e.g. 15s or 5m")]
    Step { value: String, why: String },
    #[error("step {0:?}: it must be at least 1s")]
    StepTooShort(String),
    #[error("{0} points per series: at most {MAX_POINTS}; ask for a longer step")]
    TooManyPoints(i64),
}

/// A time: RFC 3339, or a duration back from `now` (`90m`, `2d`).
fn time(what: &'static str, s: &str, now: i64) -> Result<i64, WindowError> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now - d.as_millis() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .map_err(|_| WindowError::Time {
            what,
            value: s.to_string(),
        })
}

/// `x` rounded up to a multiple of `m` (both positive).
fn round_up(x: i64, m: i64) -> i64 {
    (x + m - 1) / m * m
}

/// Checks a query: the window, or what to fix.
pub fn window(
    from: Option<&str>,
    to: Option<&str>,
    step: Option<&str>,
    now: i64,
    kept: Kept,
) -> Result<Window, WindowError> {
    let to = to.map(|t| time("to", t, now)).transpose()?.unwrap_or(now);
    let from = match from {
        Some(f) => time("from", f, now)?,
        None => to - DEFAULT_RANGE_MS,
    };
    if from >= to {
        return Err(WindowError::Inverted);
    }
    let range = to - from;
    if range > kept.rollup_ms {
        return Err(WindowError::TooLong {
            days: range / 86_400_000,
            kept: kept.rollup_ms / 86_400_000,
        });
    }
    let step_ms = match step {
        Some(s) => {
            let d = humantime::parse_duration(s).map_err(|e| WindowError::Step {
                value: s.to_string(),
                why: e.to_string(),
            })?;
            let ms = d.as_millis() as i64;
            if ms < 1000 {
                return Err(WindowError::StepTooShort(s.to_string()));
            }
            ms
        }
        None => round_up((range / 300).max(15_000), 1000),
    };
    let raw = step_ms < BUCKET_MS && from >= now - kept.raw_ms;
    // Rollups start at bucket edges: so does a window answered from them.
    let (source, step_ms, from) = if raw {
        (Source::Raw, step_ms, from)
    } else {
        let from = from.div_euclid(BUCKET_MS) * BUCKET_MS;
        (Source::Rollup, round_up(step_ms, BUCKET_MS), from)
    };
    if range / step_ms > MAX_POINTS {
        return Err(WindowError::TooManyPoints(range / step_ms));
    }
    Ok(Window {
        from,
        to,
        step_ms,
        source,
    })
}

/// Folds `(time, series, aggregate)` into one aggregate per series and step, the steps
/// counted from `from` (each point is at its step's start).
pub fn fold(
    items: impl IntoIterator<Item = (i64, u16, Agg)>,
    from: i64,
    step_ms: i64,
) -> BTreeMap<u16, BTreeMap<i64, Agg>> {
    let mut out: BTreeMap<u16, BTreeMap<i64, Agg>> = BTreeMap::new();
    for (t, id, a) in items {
        let slot = from + (t - from).div_euclid(step_ms) * step_ms;
        out.entry(id)
            .or_default()
            .entry(slot)
            .and_modify(|x| x.merge(&a))
            .or_insert(a);
    }
    out
}

/// The value of a folded point.
pub fn value(a: &Agg, kind: AggKind) -> f64 {
    match kind {
        AggKind::Avg => a.avg(),
        AggKind::Max => f64::from(a.max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEPT: Kept = Kept {
        raw_ms: 86_400_000,
        rollup_ms: 15 * 86_400_000,
    };
    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn windows_are_checked() {
        let w = window(None, None, None, NOW, KEPT).unwrap();
        assert_eq!(
            (w.to - w.from, w.step_ms, w.source),
            (3_600_000, 15_000, Source::Raw)
        );
        let w = window(Some("2d"), None, Some("1m"), NOW, KEPT).unwrap();
        assert_eq!((w.step_ms, w.source), (BUCKET_MS, Source::Rollup));
        let w = window(Some("1h"), None, Some("7m"), NOW, KEPT).unwrap();
        assert_eq!((w.step_ms, w.source), (2 * BUCKET_MS, Source::Rollup));
        for (f, t, s) in [
            (Some("1h"), Some("2h"), None),
            (Some("3650d"), None, None),
            (None, None, Some("0s")),
            (Some("1d"), None, Some("1s")),
            (Some("yesterday"), None, None),
        ] {
            assert!(window(f, t, s, NOW, KEPT).is_err(), "{f:?} {t:?} {s:?}");
        }
    }

    #[test]
    fn folding_keeps_avg_and_max() {
        let items = [(0, 1u16, 1.0f32), (1000, 1, 3.0), (60_000, 1, 5.0)]
            .map(|(t, i, v)| (t, i, Agg::of(v)));
        let f = fold(items, 0, 60_000);
        let s = &f[&1];
        assert_eq!(value(&s[&0], AggKind::Avg), 2.0);
        assert_eq!(value(&s[&0], AggKind::Max), 3.0);
        assert_eq!(value(&s[&60_000], AggKind::Avg), 5.0);
    }
}
