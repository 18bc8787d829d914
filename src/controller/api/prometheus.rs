//! `GET /metrics`: the Prometheus exposition (text format 0.0.4), outside `/api/v1` where
//! Prometheus looks for it.
//!
//! Access: a bearer token of an operator or administrator, either an API token or a
//! scrape-only one (`POST /tokens` with `scope: metrics`), which works here and nowhere
//! else. No token is 401, another user's token 403.
//!
//! What it holds (`deploy/prometheus/` has a scrape configuration and a Grafana
//! dashboard built on these names):
//! * `corral_operations{kind,state}`: operations by kind and state;
//! * `corral_step_duration_seconds{kind,step}`: histogram of steps' durations;
//! * `corral_http_request_duration_seconds{route,method,status}`: API latency;
//! * `corral_guests{state}`: guests by state;
//! * `corral_node_up{node}`, `corral_node_last_seen_timestamp_seconds{node}`,
//!   `corral_node_queue_depth{node}` (jobs waiting in its Redis queue),
//!   `corral_node_jobs_in_flight{node}` (steps it holds);
//! * `corral_guest_*{guest,name,node}` and `corral_node_*{node}`: each one's newest sample
//!   (`cpu_seconds_total`, `memory_bytes`, `network_receive_bytes_total`, ...; see the
//!   `metrics` module for the names).

use std::collections::BTreeMap;

use poem::http::StatusCode;
use poem::web::Data;
use poem::{IntoResponse, Request, Response};

use super::AppState;
use crate::controller::metrics::prom::{sampled, Exposition, TELEMETRY};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn refuse(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"status": status.as_u16(), "message": message});
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(body.to_string())
}

#[poem::handler]
pub async fn serve(req: &Request, state: Data<&AppState>) -> Response {
    let token = req
        .headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = token else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "send Authorization: Bearer <token> (an API token, or a scrape-only one: POST /api/v1/tokens with scope \"metrics\")",
        );
    };
    let Some(caller) = super::auth::scraper(&state.store, token.trim()).await else {
        return refuse(StatusCode::UNAUTHORIZED, "the token is not valid");
    };
    if super::access::operator(&caller, "scraping metrics").is_err() {
        return refuse(
            StatusCode::FORBIDDEN,
            "scraping metrics is for operators and administrators",
        );
    }
    match exposition(&state).await {
        Ok(text) => Response::builder().content_type(CONTENT_TYPE).body(text),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
    .into_response()
}

/// The whole exposition.
pub async fn exposition(state: &AppState) -> Result<String, crate::controller::store::StoreError> {
    let mut out = Exposition::default();
    TELEMETRY.render(&mut out);
    for (kind, st, n) in state.store.op_counts().await? {
        out.sample(
            "corral_operations",
            "gauge",
            "Operations by kind and state (ended ones until retention purges them).",
            &[("kind", &kind), ("state", &st)],
            "",
            n as f64,
        );
    }
    let guests = state.store.guest_labels(None).await?;
    let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, _, _, st) in &guests {
        *by_state.entry(st.as_str()).or_default() += 1;
    }
    for (st, n) in by_state {
        out.sample(
            "corral_guests",
            "gauge",
            "Guests by state.",
            &[("state", st)],
            "",
            n as f64,
        );
    }
    nodes(state, &mut out).await?;
    for (id, name, node, _) in &guests {
        if let Some(c) = state.metrics.guest_now(id) {
            let node = node.as_deref().unwrap_or(&c.node);
            let labels = [
                ("guest", id.as_str()),
                ("name", name.as_str()),
                ("node", node),
            ];
            sampled(&mut out, "corral_guest_", &labels, &c.values);
        }
    }
    Ok(out.finish())
}

/// Liveness, queues and each node's newest sample.
async fn nodes(
    state: &AppState,
    out: &mut Exposition,
) -> Result<(), crate::controller::store::StoreError> {
    let nodes = state.store.nodes().await?;
    let ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let depths: BTreeMap<String, u64> = state.redis.queue_depths(&ids).await.into_iter().collect();
    let inflight: BTreeMap<String, i64> =
        state.store.inflight_counts().await?.into_iter().collect();
    for n in &nodes {
        let l = [("node", n.id.as_str())];
        let up = if n.online { 1.0 } else { 0.0 };
        out.sample(
            "corral_node_up",
            "gauge",
            "1 while the node heartbeats, 0 once it is offline.",
            &l,
            "",
            up,
        );
        out.sample(
            "corral_node_last_seen_timestamp_seconds",
            "gauge",
            "The node's last heartbeat, by its clock.",
            &l,
            "",
            n.last_seen as f64 / 1000.0,
        );
        if let Some(d) = depths.get(&n.id) {
            out.sample(
                "corral_node_queue_depth",
                "gauge",
                "Jobs waiting in the node's queue.",
                &l,
                "",
                *d as f64,
            );
        }
        let held = inflight.get(&n.id).copied().unwrap_or(0);
        out.sample(
            "corral_node_jobs_in_flight",
            "gauge",
            "Operation steps the node holds now.",
            &l,
            "",
            held as f64,
        );
        if let Some(c) = state.metrics.node_now(&n.id) {
            sampled(out, "corral_node_", &l, &c.values);
        }
    }
    Ok(())
}
