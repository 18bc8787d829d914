//! Feeding the plugins' observing hooks (`after`, `after_step`, `event`) without letting
//! them slow anything down: each call runs on the blocking pool after the change it reports
//! has committed, so a slow or failing plugin can never hold the saga engine or a request.

use std::sync::Arc;
use std::time::Duration;

use super::plugins::Plugins;
use super::store::{OpRow, Store};

/// What a plugin sees of an operation (no payload: it can hold request details).
pub fn op_json(op: &OpRow) -> serde_json::Value {
    serde_json::json!({"id": op.id, "kind": op.kind, "guest_id": op.guest_id,
        "node_id": op.node_id, "state": op.state, "error": op.error,
        "requested_by": op.requested_by})
}

/// An operation ended: `after:<kind>` hooks.
pub fn after_op(plugins: &Arc<Plugins>, op: &OpRow) {
    if !plugins.active() {
        return;
    }
    let (p, kind, j) = (plugins.clone(), op.kind.clone(), op_json(op));
    tokio::task::spawn_blocking(move || p.after(&kind, &j));
}

/// A step of `op` ended (done, failed or undone): `after_step` hooks.
pub fn after_step(plugins: &Arc<Plugins>, op: &OpRow, step: usize) {
    if !plugins.active() {
        return;
    }
    let step = op
        .step_records()
        .ok()
        .and_then(|s| s.into_iter().nth(step))
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_default();
    let (p, kind, j) = (plugins.clone(), op.kind.clone(), op_json(op));
    tokio::task::spawn_blocking(move || p.after_step(&kind, &j, &step));
}

/// Streams every new event to the `event` hooks, from the controller's start on.
pub async fn feed_events(
    store: Store,
    plugins: Arc<Plugins>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if !plugins.active() {
        return;
    }
    tokio::pin!(shutdown);
    let mut seq = store.last_event_seq().await.unwrap_or(0);
    loop {
        let notified = store.events_appended.notified();
        match store.events_after(seq, 500).await {
            Ok(rows) if !rows.is_empty() => {
                seq = rows.last().map(|r| r.seq).unwrap_or(seq);
                let events: Vec<serde_json::Value> = rows
                    .into_iter()
                    .map(|r| {
                        serde_json::json!({"seq": r.seq, "kind": r.kind, "subject": r.subject,
                            "data": serde_json::from_str::<serde_json::Value>(&r.data).unwrap_or_default()})
                    })
                    .collect();
                let p = plugins.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    for e in &events {
                        p.on_event(e);
                    }
                })
                .await;
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reading events for plugins: {e}"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
