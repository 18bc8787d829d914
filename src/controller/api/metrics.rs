//! Metric history and current figures (S22, S77, S87).
//!
//! * `GET /guests/{id}/metrics` and `GET /nodes/{id}/metrics`: a range (`from`, `to`),
//!   one point per `step`, each the average or the maximum (`agg`) of what the step
//!   covers. The window is checked before anything is read (`metrics/query.rs`): an
//!   inverted range, a step under a second, a range longer than the history kept or
//!   more than 11,000 points answer 400 and say what to fix. A guest the caller may
//!   not see is 404, as everywhere else; nodes are for operators and administrators.
//! * `GET /metrics/guests` and `GET /metrics/nodes`: each one's newest sample, for
//!   `corral guest top` and `corral node top`.

use std::collections::BTreeMap;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi};

use super::access;
use super::error::{ApiResult, Error};
use super::{AppState, Auth};
use crate::controller::metrics::query::{self, AggKind, Kept, Source};
use crate::controller::metrics::{Current, History, GUEST, NODE};
use crate::model::{now_ms, rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Default)]
#[oai(rename_all = "lowercase")]
pub enum Agg {
    /// The average of the samples in each step.
    #[default]
    Avg,
    /// The largest sample in each step.
    Max,
}

#[derive(Debug, Object)]
pub struct MetricSeries {
    /// The series, e.g. `cpu_seconds_per_second` (cores busy) or `memory_bytes`.
    pub name: String,
    /// The start of each step that has samples, ms since the epoch. Two columns rather
    /// than (time, value) objects: a 15-day answer has tens of thousands of points.
    pub at_ms: Vec<i64>,
    /// The value of each of those steps: `values[i]` is at `at_ms[i]`.
    pub values: Vec<f64>,
}

#[derive(Debug, Object)]
pub struct MetricHistory {
    /// The guest's or node's id.
    pub id: String,
    pub from: String,
    pub to: String,
    /// The first step's start, ms since the epoch.
    pub from_ms: i64,
    /// The step the points are at (rounded up to whole 5-minute buckets when the
    /// answer comes from the rollups).
    pub step_seconds: i64,
    pub agg: Agg,
    /// `raw` (the samples) or `rollup` (5-minute averages and maxima).
    pub source: String,
    pub series: Vec<MetricSeries>,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct CurrentFigures {
    pub id: String,
    /// The guest's name, or the node's hostname.
    pub name: String,
    /// The guest's node.
    pub node_id: Option<String>,
    /// The guest's state.
    pub state: Option<String>,
    /// When the newest sample was taken (the node's clock); absent: none since the
    /// controller started.
    pub at: Option<String>,
    /// The newest sample: series name → value. Counters end in `_total`; rates in
    /// `_per_second`.
    pub values: BTreeMap<String, f64>,
}

/// Comma-separated series names, or all.
fn series_list(s: Option<String>) -> Vec<String> {
    s.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

/// A subject's history as the API answers it.
async fn history(
    state: &AppState,
    kind: &str,
    id: &str,
    range: (Option<String>, Option<String>, Option<String>),
    agg: Agg,
    series: Option<String>,
) -> Result<MetricHistory, Error> {
    let retention: super::audit::Retention = state.store.setting("retention").await?;
    let (raw_ms, rollup_ms) = retention.metrics_kept();
    let (from, to, step) = range;
    let w = query::window(
        from.as_deref(),
        to.as_deref(),
        step.as_deref(),
        now_ms(),
        Kept { raw_ms, rollup_ms },
    )
    .map_err(|e| Error::BadRequest(e.to_string()))?;
    let kind_agg = match agg {
        Agg::Avg => AggKind::Avg,
        Agg::Max => AggKind::Max,
    };
    let h: History = state
        .metrics
        .history(kind, id, &w, kind_agg, &series_list(series))
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    Ok(MetricHistory {
        id: id.to_string(),
        from: rfc3339(w.from),
        to: rfc3339(w.to),
        from_ms: w.from,
        step_seconds: w.step_ms / 1000,
        agg,
        source: match w.source {
            Source::Raw => "raw",
            Source::Rollup => "rollup",
        }
        .into(),
        series: h
            .into_iter()
            .map(|(name, points)| {
                let (at_ms, values) = points.into_iter().unzip();
                MetricSeries {
                    name,
                    at_ms,
                    values,
                }
            })
            .collect(),
    })
}

fn figures(
    id: String,
    name: String,
    node: Option<String>,
    st: Option<String>,
    c: Option<Current>,
) -> CurrentFigures {
    CurrentFigures {
        id,
        name,
        node_id: node,
        state: st,
        at: c.as_ref().map(|c| rfc3339(c.at_ms)),
        values: c
            .map(|c| c.values.into_iter().collect())
            .unwrap_or_default(),
    }
}

pub struct MetricsApi;

#[OpenApi(tag = "super::system::Tag::Metrics")]
impl MetricsApi {
    /// A guest's metric history: CPU (`cpu_seconds_per_second`, cores busy), memory
    /// (`memory_bytes`, the balloon; `memory_used_bytes`, as the guest reports it), disk
    /// and network rates. Raw samples (every 15 s) are kept for a day, 5-minute averages
    /// and maxima for 15 days (`retention`).
    #[oai(
        path = "/guests/:id/metrics",
        method = "get",
        operation_id = "guest_metrics"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn guest(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        /// Start: RFC 3339, or a duration back from now (`6h`). Default: an hour before `to`.
        from: Query<Option<String>>,
        /// End: RFC 3339, or a duration back from now. Default: now.
        to: Query<Option<String>>,
        /// One point per step (`15s`, `5m`, `1h`); at least 1s. Default: about 300 points.
        step: Query<Option<String>>,
        #[oai(default)] agg: Query<Agg>,
        /// Only these series (comma-separated names).
        series: Query<Option<String>>,
    ) -> ApiResult<Json<MetricHistory>> {
        let g = access::guest(&state, &auth.0, &id).await?;
        let range = (from.0, to.0, step.0);
        Ok(Json(
            history(&state, GUEST, &g.id, range, agg.0, series.0).await?,
        ))
    }

    /// A node's metric history: CPU, memory, the storage filesystem, and each disk's
    /// and interface's rates (operators and administrators).
    #[oai(
        path = "/nodes/:id/metrics",
        method = "get",
        operation_id = "node_metrics"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn node(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        id: Path<String>,
        /// Start: RFC 3339, or a duration back from now (`6h`). Default: an hour before `to`.
        from: Query<Option<String>>,
        /// End: RFC 3339, or a duration back from now. Default: now.
        to: Query<Option<String>>,
        /// One point per step (`15s`, `5m`, `1h`); at least 1s. Default: about 300 points.
        step: Query<Option<String>>,
        #[oai(default)] agg: Query<Agg>,
        /// Only these series (comma-separated names).
        series: Query<Option<String>>,
    ) -> ApiResult<Json<MetricHistory>> {
        access::operator(&auth.0, "reading a node's metrics")?;
        if state.store.node(&id).await?.is_none() {
            return Err(Error::not_found("node", id.0).into());
        }
        let range = (from.0, to.0, step.0);
        Ok(Json(
            history(&state, NODE, &id, range, agg.0, series.0).await?,
        ))
    }

    /// Each guest's newest sample (yours, unless you see all guests).
    #[oai(
        path = "/metrics/guests",
        method = "get",
        operation_id = "metrics_guests_now"
    )]
    async fn guests_now(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        /// Only guests on this node.
        node: Query<Option<String>>,
    ) -> ApiResult<Json<Vec<CurrentFigures>>> {
        let rows = state.store.guest_labels(auth.0.owner_scope()).await?;
        Ok(Json(
            rows.into_iter()
                .filter(|(_, _, n, _)| node.0.is_none() || *n == node.0)
                .map(|(id, name, n, st)| {
                    let c = state.metrics.guest_now(&id);
                    figures(id, name, n, Some(st), c)
                })
                .collect(),
        ))
    }

    /// Each node's newest sample (operators and administrators).
    #[oai(
        path = "/metrics/nodes",
        method = "get",
        operation_id = "metrics_nodes_now"
    )]
    async fn nodes_now(
        &self,
        auth: Auth,
        state: Data<&AppState>,
    ) -> ApiResult<Json<Vec<CurrentFigures>>> {
        access::operator(&auth.0, "reading nodes' metrics")?;
        let nodes = state.store.nodes().await?;
        Ok(Json(
            nodes
                .into_iter()
                .map(|n| {
                    let c = state.metrics.node_now(&n.id);
                    figures(n.id, n.hostname, None, None, c)
                })
                .collect(),
        ))
    }
}
