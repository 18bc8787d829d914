//! Self-fencing (S74): a node cut off from both Redis and the controller stops its HA
//! guests before the controller may restart them elsewhere.
//!
//! The controller restarts a node's HA guests only after that node's fence command
//! confirmed it is off, and only `node_timeout_secs + ha_after_secs` after its last
//! heartbeat. A fence that "succeeds" against a node that is in fact alive (a partition,
//! a lying power switch) would still leave two copies running; this guard closes that
//! gap from the node's side. Once a second it looks at when an event last reached Redis;
//! when that is older than `self_fence_secs`, it asks the controller's `/health` (when
//! the node knows the controller's URL); when neither answered for `self_fence_secs`
//! (counted from the later of the last event that reached Redis and the last answer of
//! the controller),
//! every running domain that carries corral's HA mark is destroyed (plain destroy, as a
//! power cut would). Non-HA guests are never restarted elsewhere, so they keep running.
//!
//! Contact coming back does not start anything again: the controller decides, and it may
//! already have started those guests elsewhere.

use std::sync::Arc;
use std::time::Duration;

use super::hypervisor::{DomState, Hypervisor};
use super::NodeCtx;
use crate::model::now_ms;

/// Runs until shutdown; does nothing when self-fencing is off (`self_fence_secs` = 0).
pub async fn guard(ctx: Arc<NodeCtx>, shutdown: impl std::future::Future<Output = ()>) {
    let lease_ms = (ctx.cfg.self_fence_secs * 1000) as i64;
    if lease_ms == 0 {
        ctx.set_worker("self-fence", "off");
        return;
    }
    ctx.set_worker("self-fence", "armed");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let health = ctx
        .cfg
        .controller_url
        .as_deref()
        .map(|u| format!("{}/api/v1/health", u.trim_end_matches('/')));
    // The last answer from the controller's /health, asked only while Redis is silent.
    let mut controller_ok_ms = 0;
    let mut fenced = false;
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let redis_ok_ms = ctx.publisher.last_ok_ms();
        if now - redis_ok_ms < lease_ms {
            if fenced {
                tracing::info!("contact is back; the stopped HA guests stay stopped");
                ctx.set_worker("self-fence", "armed");
                fenced = false;
            }
            continue;
        }
        if let Some(url) = &health {
            if http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                controller_ok_ms = now;
            }
        }
        // Contact is the later of the two: the node fences itself `self_fence_secs`
        // after it last heard from either.
        if now - redis_ok_ms.max(controller_ok_ms) < lease_ms {
            continue;
        }
        let stopped = stop_ha_guests(ctx.hv.as_ref()).await;
        if !fenced || stopped > 0 {
            tracing::warn!(
                stopped,
                "no contact with Redis or the controller for {} s: self-fenced, HA guests stopped",
                ctx.cfg.self_fence_secs
            );
            ctx.set_worker(
                "self-fence",
                &format!("fenced at {}", crate::model::rfc3339(now)),
            );
        }
        fenced = true;
    }
}

/// Destroys every running domain with the HA mark; how many.
pub async fn stop_ha_guests(hv: &dyn Hypervisor) -> usize {
    let Ok(domains) = hv.list().await else {
        return 0;
    };
    let mut stopped = 0;
    for d in domains {
        if !matches!(d.state, DomState::Running | DomState::Paused) {
            continue;
        }
        if hv.ha_mark(&d.uuid).await.unwrap_or(false) && hv.destroy(&d.uuid).await.is_ok() {
            stopped += 1;
        }
    }
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::hypervisor::Fake;

    #[tokio::test]
    async fn only_running_guests_with_the_ha_mark_are_stopped() {
        let hv = Fake::default();
        for (id, state) in [
            ("ha-running", DomState::Running),
            ("plain-running", DomState::Running),
            ("ha-off", DomState::Shutoff),
        ] {
            let xml = format!("<domain><name>{id}</name><uuid>{id}</uuid></domain>");
            hv.domains
                .lock()
                .unwrap()
                .insert(id.to_string(), (xml, state));
        }
        hv.set_ha_mark("ha-running", true).await.unwrap();
        hv.set_ha_mark("ha-off", true).await.unwrap();
        assert_eq!(stop_ha_guests(&hv).await, 1);
        let state = |id: &str| hv.domains.lock().unwrap()[id].1;
        assert_eq!(state("ha-running"), DomState::Shutoff);
        assert_eq!(state("plain-running"), DomState::Running);
        assert_eq!(state("ha-off"), DomState::Shutoff);
    }
}
