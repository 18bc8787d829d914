//! The node agent: executes jobs from its own queue against the local hypervisor, and
//! reports everything (results, heartbeats, domain states, inventory) through the event
//! stream. It holds no state of its own: after a crash it simply starts again, apalis hands
//! back the jobs its dead worker had in flight, and idempotent actions make re-runs safe.
//!
//! Loops, each reported as a worker in the heartbeat (S47):
//! * `queue`: the apalis worker (restarted with a fresh unique name whenever it exits,
//!   e.g. when Redis went away);
//! * `heartbeat`: facts every `heartbeat_secs`;
//! * `watcher`: reports a domain's state as soon as libvirt announces a lifecycle event
//!   (`events.rs`), and every `reconcile_secs` compares all states and sends the full
//!   inventory (the periodic reconcile, S73), which also catches anything an event missed;
//! * `metrics`: the host's and the guests' figures every `metrics_secs` (`metrics.rs`).

pub mod actions;
pub mod agent;
pub mod cold;
pub mod disks;
pub mod domstats;
pub mod events;
pub mod facts;
pub mod fetch;
pub mod footprint;
pub mod hypervisor;
pub mod images;
pub mod iotune;
pub mod jobctl;
pub mod metrics;
pub mod migrate;
pub mod oplog;
pub mod ports;
pub mod publish;
pub mod qcow2;
pub mod resize;
pub mod selffence;
pub mod snapshots;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use redis::aio::ConnectionManager;
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::model::{
    now_ms, DomainInfo, NodeAction, NodeEvent, NodeJob, StepOutcome, SubStep, WorkerStatus,
};
use crate::render::Renderer;
use crate::transport;
use actions::NodeSettings;
use hypervisor::{Hypervisor, Libvirt};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Render(#[from] crate::render::RenderError),
    #[error("node identity: {0}")]
    Identity(String),
    #[error("the script engine")]
    Scripts(#[source] crate::script::ScriptError),
    #[error("creating the disk-image directory {path}: {source}")]
    Storage {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why the queue worker stopped; the loop starts it again.
#[derive(Debug, thiserror::Error)]
enum QueueError {
    #[error("connecting to Redis")]
    Redis(#[source] transport::TransportError),
    #[error("the worker")]
    Worker(#[source] apalis::prelude::WorkerError),
}

/// Everything a job handler needs; shared by all loops.
pub struct NodeCtx {
    pub node_id: String,
    pub cfg: NodeConfig,
    pub settings: NodeSettings,
    pub hv: Arc<dyn Hypervisor>,
    pub renderer: Renderer,
    pub publisher: Publisher,
    pub workers: Mutex<HashMap<String, String>>,
    pub fault: Option<crate::fault::Fault>,
}

impl NodeCtx {
    fn set_worker(&self, name: &str, state: &str) {
        if let Ok(mut w) = self.workers.lock() {
            w.insert(name.to_string(), state.to_string());
        }
    }
}

/// Appends events to this node's stream, reconnecting as needed.
pub struct Publisher {
    url: String,
    node_id: String,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// When an event last reached Redis (ms): the node's contact, for self-fencing.
    last_ok_ms: std::sync::atomic::AtomicI64,
}

impl Publisher {
    pub fn new(url: &str, node_id: &str) -> Self {
        Publisher {
            url: url.to_string(),
            node_id: node_id.to_string(),
            conn: tokio::sync::Mutex::new(None),
            last_ok_ms: std::sync::atomic::AtomicI64::new(now_ms()),
        }
    }

    /// When an event last reached Redis (ms; the agent's start before the first).
    pub fn last_ok_ms(&self) -> i64 {
        self.last_ok_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn publish(&self, ev: &NodeEvent) -> Result<(), transport::TransportError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(transport::connect(&self.url).await?);
        }
        let Some(conn) = guard.as_mut() else {
            return Ok(());
        };
        let r = transport::publish(conn, &self.node_id, ev).await;
        if r.is_err() {
            *guard = None;
        } else {
            self.last_ok_ms
                .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Whether the job's attempt is still the one the controller waits for.
    pub async fn fence_holds(&self, job: &NodeJob) -> Result<bool, transport::TransportError> {
        Ok(self.fence_state(job).await? == transport::Fence::Holds)
    }

    /// What `job`'s fence says: run on, stop and clean up (interrupted), or stop.
    pub async fn fence_state(
        &self,
        job: &NodeJob,
    ) -> Result<transport::Fence, transport::TransportError> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            *guard = Some(transport::connect(&self.url).await?);
        }
        let Some(conn) = guard.as_mut() else {
            return Ok(transport::Fence::Gone);
        };
        let r = transport::fence_state(conn, &self.node_id, job).await;
        if r.is_err() {
            *guard = None;
        }
        r
    }

    /// Publishes, retrying for up to `patience`; a result must not be dropped lightly.
    pub async fn publish_patiently(
        &self,
        ev: &NodeEvent,
        patience: Duration,
    ) -> Result<(), transport::TransportError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.publish(ev).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::warn!("publishing to the event stream: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// The job handler: run the action, report the outcome. It returns an error only when the
/// outcome could not be reported, so apalis re-queues the job and it runs again (safely).
async fn handle(job: NodeJob, ctx: Data<Arc<NodeCtx>>) -> Result<(), BoxDynError> {
    use tracing::Instrument;
    // What is logged inside this span goes to the operation's log too (`oplog`).
    let span = tracing::info_span!(
        "step",
        op = %job.op_id,
        step = job.step as u64,
        attempt = u64::from(job.attempt),
        undo = job.undo
    );
    handle_step(job, (*ctx).clone()).instrument(span).await
}

async fn handle_step(job: NodeJob, ctx: Arc<NodeCtx>) -> Result<(), BoxDynError> {
    // Run only the attempt the controller waits for (see transport::fence_key).
    match ctx
        .publisher
        .fence_state(&job)
        .await
        .map_err(|e| Box::new(e) as BoxDynError)?
    {
        transport::Fence::Holds => {}
        transport::Fence::Interrupted => {
            // A cancel reached the step before its job ran. A pivot step waits for this
            // answer; a migration says where the guest is.
            let outcome = actions::outcome(migrate::interrupted_before_start(&ctx, &job).await);
            return report(&ctx, job, outcome).await;
        }
        transport::Fence::Gone => {
            tracing::info!(op = %job.op_id, step = job.step, attempt = job.attempt, "skipping a superseded job");
            // No result goes out for it: its lines are dropped, not kept for ever.
            drop(oplog::take(&oplog::Key {
                op: job.op_id.clone(),
                step: job.step as u64,
                attempt: u64::from(job.attempt),
                undo: job.undo,
            }));
            return Ok(());
        }
    }
    let outcome = match &job.action {
        NodeAction::Sequence { steps } => run_sequence(&ctx, &job, steps).await?,
        action => {
            let r = run_whole(&ctx, &job, action).await;
            if let Some(f) = &ctx.fault {
                f.check("node", action.name(), "after");
            }
            actions::outcome(r)
        }
    };
    report(&ctx, job, outcome).await
}

/// One action of `job` (not a sequence): the ones with their own progress and cancel
/// handling here, every other through `actions::run`.
async fn run_whole(
    ctx: &NodeCtx,
    job: &NodeJob,
    action: &NodeAction,
) -> Result<StepOutcome, actions::ActionError> {
    match action {
        NodeAction::ConvertImage {
            source,
            snapshot,
            dest,
        } => run_convert(ctx, job, source, snapshot.as_deref(), dest).await,
        NodeAction::CopyOut {
            guest_id,
            to,
            paths,
            vnc_port,
        } => {
            let c = cold::Copy {
                guest_id,
                to,
                paths,
                vnc_port: *vnc_port,
            };
            cold::run(ctx, job, c).await
        }
        NodeAction::Migrate {
            guest_id,
            to,
            paths,
            vnc_port,
            tuning,
        } => {
            let m = migrate::Migration {
                guest_id,
                to,
                paths,
                vnc_port: *vnc_port,
                tuning,
            };
            migrate::run(ctx, job, m).await
        }
        action => {
            actions::run(
                ctx.hv.as_ref(),
                &ctx.renderer,
                &ctx.settings,
                action,
                &mut actions::Plans::default(),
            )
            .await
        }
    }
}

/// Sends `job`'s outcome to the controller, patiently.
async fn report(ctx: &NodeCtx, job: NodeJob, outcome: StepOutcome) -> Result<(), BoxDynError> {
    if let StepOutcome::Failed { error, .. } = &outcome {
        tracing::warn!(op = %job.op_id, step = job.step, undo = job.undo, "job failed: {error}");
    }
    let log = oplog::take(&oplog::Key {
        op: job.op_id.clone(),
        step: job.step as u64,
        attempt: u64::from(job.attempt),
        undo: job.undo,
    });
    let finished = NodeEvent::StepFinished {
        node_id: ctx.node_id.clone(),
        op_id: job.op_id,
        step: job.step,
        attempt: job.attempt,
        undo: job.undo,
        outcome,
        log,
    };
    ctx.publisher
        .publish_patiently(&finished, Duration::from_secs(30))
        .await
        .map_err(|e| Box::new(e) as BoxDynError)
}

/// How often at most a sequence reports progress: sub-steps that end sooner are covered
/// by the next report (or the result), so fast sequences cost the controller nothing extra.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// How long a sequence runs before it checks its fence again between sub-steps.
const REFENCE_AFTER: Duration = Duration::from_secs(1);

/// [`NodeAction::ConvertImage`]: the conversion's percent goes to the controller as
/// step progress (at most every [`PROGRESS_EVERY`]), then the checksum is computed.
async fn run_convert(
    ctx: &NodeCtx,
    job: &NodeJob,
    source: &str,
    snapshot: Option<&str>,
    dest: &str,
) -> Result<StepOutcome, actions::ActionError> {
    let s = &ctx.settings;
    actions::inside(&s.storage_dir, source)?;
    // The controller's template directory is one of this node's (the same host, or a
    // shared directory): the image goes there. Otherwise into this node's cache, and
    // from there to the controller (`node::publish`).
    let publish = match &s.images {
        _ if crate::config::in_dirs(&s.image_dirs, dest) => None,
        Some(images) => Some((images.clone(), template_id_of(dest)?)),
        None => {
            return Err(actions::ActionError::Permanent(format!(
                "{dest} is outside the node's template directories (image_dirs), and the \
                 node has no controller_url to send the image to"
            )))
        }
    };
    let local = match &publish {
        Some((images, id)) => {
            crate::modes::private_dir(images.cache_path(id).parent().unwrap_or(Path::new("/")))
                .map_err(|e| actions::ActionError::retry("creating the template cache", e))?;
            images.cache_path(id).display().to_string()
        }
        None => dest.to_string(),
    };
    let dest = local.as_str();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let convert = images::convert(source, snapshot, dest, s.convert_rate_mib, move |p| {
        let _ = tx.send(p);
    });
    tokio::pin!(convert);
    let mut reported = tokio::time::Instant::now();
    let mut refence = tokio::time::interval(REFENCE_AFTER);
    let r = loop {
        tokio::select! {
            r = &mut convert => break r,
            _ = refence.tick() => {
                if let Some(stop) = interrupted(ctx, job, &[&staged(dest)]).await {
                    return Err(stop);
                }
            }
            Some(p) = rx.recv() => {
                if reported.elapsed() >= PROGRESS_EVERY {
                    reported = tokio::time::Instant::now();
                    progress(ctx, job, (p.min(99), 100), format!("converting the disk: {p}%"))
                        .await;
                }
            }
        }
    };
    r?;
    // Given up while the last bytes were written: the image is not kept.
    if let Some(stop) = interrupted(ctx, job, &[dest]).await {
        return Err(stop);
    }
    let (sha256, bytes) = images::checksum(dest).await?;
    if let Some((images, id)) = &publish {
        progress(
            ctx,
            job,
            (99, 100),
            "sending the image to the controller".into(),
        )
        .await;
        images.publish(id, Path::new(dest), &sha256).await?;
    }
    let report = crate::model::ConvertReport {
        sha256,
        size_bytes: bytes,
        path: dest.to_string(),
    };
    StepOutcome::reported(None, None, &report)
        .map_err(|e| actions::ActionError::failed("encoding the report", e))
}

/// The template id a conversion's destination is named by (`<id>.<format>`).
fn template_id_of(dest: &str) -> Result<String, actions::ActionError> {
    Path::new(dest)
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(String::from)
        .ok_or_else(|| {
            actions::ActionError::Permanent(format!("{dest} is not named by a template id"))
        })
}

/// Reports how far `job` is (`done` of `of`, and what it does now), best effort: the
/// step's result is what counts.
async fn progress(ctx: &NodeCtx, job: &NodeJob, (done, of): (u32, u32), stage: String) {
    let ev = NodeEvent::StepProgress {
        node_id: ctx.node_id.clone(),
        op_id: job.op_id.clone(),
        step: job.step,
        attempt: job.attempt,
        undo: job.undo,
        done,
        of,
        stage,
        migration: None,
    };
    if let Err(e) = ctx.publisher.publish(&ev).await {
        tracing::debug!(op = %job.op_id, "progress not reported: {e}");
    }
}

/// Whether a running job must stop: None while its fence names it (or Redis cannot say).
/// Interrupted by a cancel, `written` is removed first; superseded by another attempt,
/// everything is left to it.
async fn interrupted(
    ctx: &NodeCtx,
    job: &NodeJob,
    written: &[&str],
) -> Option<actions::ActionError> {
    match ctx.publisher.fence_state(job).await {
        Ok(transport::Fence::Holds) | Err(_) => None,
        Ok(transport::Fence::Interrupted) => {
            for f in written {
                let _ = tokio::fs::remove_file(f).await;
            }
            tracing::info!(op = %job.op_id, step = job.step, "interrupted by a cancel; stopped");
            Some(actions::ActionError::Permanent(
                "interrupted by a cancel".into(),
            ))
        }
        Ok(transport::Fence::Gone) => Some(actions::ActionError::Transient(
            "superseded by a newer attempt".into(),
        )),
    }
}

/// Before a system disk is made on a template image this node must fetch, the fetch runs
/// on its own, its bytes reported as the step's progress within sub-step `at` of the
/// sequence (at most every [`PROGRESS_EVERY`]); the disk is then made on the cached copy.
async fn prefetch(
    ctx: &NodeCtx,
    job: &NodeJob,
    action: &NodeAction,
    (at, of): (usize, usize),
) -> Result<(), actions::ActionError> {
    let NodeAction::CreateDisk {
        template_path,
        template: Some(t),
        ..
    } = action
    else {
        return Ok(());
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Option<u64>)>();
    let report = move |got, total| {
        let _ = tx.send((got, total));
    };
    let fetch = actions::backing_image(&ctx.settings, template_path, Some(t), &report);
    tokio::pin!(fetch);
    // The first bytes are reported at once: a fetch is news even when it is short.
    let mut reported: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = &mut fetch => return r.map(|_| ()),
            Some((got, total)) = rx.recv() => {
                if reported.is_some_and(|at| at.elapsed() < PROGRESS_EVERY) {
                    continue;
                }
                reported = Some(tokio::time::Instant::now());
                let percent = total.filter(|t| *t > 0).map(|t| got.min(t) * 100 / t);
                let stage = match percent {
                    Some(p) => format!("fetching the template image: {p}%"),
                    None => format!("fetching the template image: {} MiB", got >> 20),
                };
                let done = (at as u32) * 100 + percent.unwrap_or(0).min(99) as u32;
                progress(ctx, job, (done, (of as u32) * 100), stage).await;
            }
        }
    }
}

/// Runs a sequence's sub-steps in order and reports progress as sub-steps end (at most
/// every [`PROGRESS_EVERY`], best effort: the step's result is what counts). The first
/// failure ends the sequence, its error prefixed with the sub-step's stage. Once it has run
/// for [`REFENCE_AFTER`], the fence is checked again before each sub-step, so a superseded
/// copy of a long sequence stops early.
/// `outcome`, once the operation's log has it: a sub-step done, or failed naming itself
/// and the node's error (S31).
fn logged(sub: &SubStep, outcome: StepOutcome) -> StepOutcome {
    let name = sub.action.name();
    match &outcome {
        StepOutcome::Failed { error, .. } => {
            tracing::error!(sub_step = name, stage = %sub.stage, error = %error, "sub-step {name} failed")
        }
        StepOutcome::Ok { .. } => tracing::debug!(sub_step = name, "sub-step {name} done"),
    }
    outcome
}

async fn run_sequence(
    ctx: &NodeCtx,
    job: &NodeJob,
    steps: &[SubStep],
) -> Result<StepOutcome, BoxDynError> {
    let mut plans = actions::Plans::default();
    let mut merged = (None, None, None);
    let started = tokio::time::Instant::now();
    let mut reported = started;
    for (i, sub) in steps.iter().enumerate() {
        if i > 0
            && started.elapsed() >= REFENCE_AFTER
            && !ctx
                .publisher
                .fence_holds(job)
                .await
                .map_err(|e| Box::new(e) as BoxDynError)?
        {
            tracing::info!(op = %job.op_id, step = job.step, attempt = job.attempt, "a newer attempt took over; stopping");
            return Ok(StepOutcome::Failed {
                error: "superseded by a newer attempt".into(),
                permanent: false,
                refusal: None,
            });
        }
        let r = match prefetch(ctx, job, &sub.action, (i, steps.len())).await {
            Err(e) => Err(e),
            Ok(()) => {
                actions::run(
                    ctx.hv.as_ref(),
                    &ctx.renderer,
                    &ctx.settings,
                    &sub.action,
                    &mut plans,
                )
                .await
            }
        };
        if let Some(f) = &ctx.fault {
            f.check("node", sub.action.name(), "after");
        }
        match logged(sub, actions::outcome(r)) {
            StepOutcome::Failed {
                error,
                permanent,
                refusal,
            } => {
                return Ok(StepOutcome::Failed {
                    error: format!("{}: {error}", sub.stage),
                    permanent,
                    refusal,
                });
            }
            StepOutcome::Ok {
                guest_state,
                domain_xml,
                output,
            } => {
                merged = (
                    guest_state.or(merged.0),
                    domain_xml.or(merged.1),
                    output.or(merged.2),
                );
            }
        }
        if let Some(next) = steps
            .get(i + 1)
            .filter(|_| reported.elapsed() >= PROGRESS_EVERY)
        {
            reported = tokio::time::Instant::now();
            let done = (i as u32 + 1, steps.len() as u32);
            progress(ctx, job, done, next.stage.clone()).await;
        }
    }
    Ok(StepOutcome::Ok {
        guest_state: merged.0,
        domain_xml: merged.1,
        output: merged.2,
    })
}

/// This node's id: configured, else /etc/machine-id (S93). It names the node's Redis user
/// and keys, so it is checked the way enrollment checks it.
pub fn identity(cfg: &NodeConfig) -> Result<String, NodeError> {
    let node_id = match &cfg.node_id {
        Some(id) => id.clone(),
        None => facts::machine_id().map_err(NodeError::Identity)?,
    };
    if !transport::acl::valid_node_id(&node_id) {
        return Err(NodeError::Identity(format!(
            "node id {node_id:?} must be 1-64 letters, digits, '.', '_' or '-'"
        )));
    }
    Ok(node_id)
}

/// Runs the node agent until `shutdown` flips to true.
pub async fn run(cfg: NodeConfig, shutdown: watch::Receiver<bool>) -> Result<(), NodeError> {
    let node_id = identity(&cfg)?;
    // Guests' disks and seeds: 0700 and 0600, an older installation's modes narrowed.
    crate::modes::private_dir(&cfg.storage_dir).map_err(|source| NodeError::Storage {
        path: cfg.storage_dir.display().to_string(),
        source,
    })?;
    crate::modes::tighten_logged(&cfg.storage_dir);
    // libvirt's event loop must exist before the first connection is opened.
    events::init_event_loop();
    let domain_type = facts::domain_type(&cfg);
    tracing::info!(node = %node_id, %domain_type, uri = %cfg.hypervisor_uri, "node starting");
    // The controller reads this node's stream only once an administrator enrolled it
    // (`corral node enroll <id>`), which also gives the Redis credentials of `redis_url`.
    tracing::info!(node = %node_id, stream = %transport::events_stream(&node_id), "reporting");
    let publisher = Publisher::new(&cfg.redis_url, &node_id);
    let images = fetch::ImageSource::new(
        cfg.controller_url.as_deref(),
        &cfg.redis_url,
        &node_id,
        cfg.template_cache_dir(),
    )
    .map(Arc::new);
    if let Some(i) = &images {
        i.sweep();
    }
    let ctx = Arc::new(NodeCtx {
        node_id,
        settings: NodeSettings {
            domain_type,
            machine: cfg.machine.clone(),
            vnc_listen: cfg.vnc_listen.clone(),
            storage_dir: cfg.storage_dir.clone(),
            image_dirs: cfg.image_dirs.clone(),
            allowed_bridges: cfg.bridges_allowed(),
            images,
            convert_rate_mib: cfg.convert_rate_mib,
            scripts: Arc::new(
                crate::script::Scripts::new(crate::script::Limits {
                    deadline: Duration::from_millis(cfg.script_deadline_ms.max(1)),
                    ..Default::default()
                })
                .map_err(NodeError::Scripts)?,
            ),
        },
        hv: Arc::new(Libvirt::new(&cfg.hypervisor_uri)),
        renderer: Renderer::new(cfg.templates_dir.as_deref())?,
        publisher,
        workers: Mutex::new(HashMap::new()),
        fault: crate::fault::Fault::from_env(),
        cfg,
    });
    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let vnc = if ctx.cfg.reserve_vnc_ports {
        ports::reserve(ctx.cfg.vnc_port_min, ctx.cfg.vnc_port_max)
    } else {
        "not reserved: disabled in the configuration".to_string()
    };
    ctx.set_worker("vnc-ports", &vnc);
    let q = tokio::spawn(queue_loop(ctx.clone(), stop(shutdown.clone())));
    let h = tokio::spawn(heartbeat_loop(ctx.clone(), stop(shutdown.clone())));
    let w = tokio::spawn(watch_loop(ctx.clone(), stop(shutdown.clone())));
    let f = tokio::spawn(selffence::guard(ctx.clone(), stop(shutdown.clone())));
    tokio::spawn(metrics::metrics_loop(ctx.clone(), stop(shutdown.clone())));
    if let Some(images) = ctx.settings.images.clone() {
        let every = Duration::from_secs(ctx.cfg.template_sweep_secs);
        tokio::spawn(publish::sweep_loop(images, every, stop(shutdown.clone())));
    }
    let _ = tokio::join!(q, h, w, f);
    Ok(())
}

/// Yields once per wake-up published on the node's channel (see
/// [`transport::wake_channel`]); ends when the subscription does.
struct WakeStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    _task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl futures::Stream for WakeStream {
    type Item = ();
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<()>> {
        self.rx.poll_recv(cx)
    }
}

async fn wake_stream(url: &str, node_id: &str) -> Result<WakeStream, redis::RedisError> {
    use futures::StreamExt;
    let mut pubsub = redis::Client::open(url)?.get_async_pubsub().await?;
    pubsub.subscribe(transport::wake_channel(node_id)).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while messages.next().await.is_some() {
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(WakeStream {
        rx,
        _task: AbortOnDrop(task),
    })
}

async fn queue_loop(ctx: Arc<NodeCtx>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        ctx.set_worker("queue", "connecting");
        let session = async {
            let conn = transport::connect(&ctx.cfg.redis_url)
                .await
                .map_err(QueueError::Redis)?;
            // Woken by the controller's publish after each push; polled as a fallback.
            let wakes = wake_stream(&ctx.cfg.redis_url, &ctx.node_id)
                .await
                .map_err(|e| QueueError::Redis(e.into()))?;
            let strategy = Strategy::new()
                .stream(wakes)
                .interval(Duration::from_millis(500));
            let backend = RedisStorage::<NodeJob>::new(conn)
                .with_config(transport::queue_config(&ctx.node_id))
                .poll_with_strategy(strategy);
            // A unique name per run: apalis refuses a name still marked alive in Redis.
            let name = format!(
                "{}-{}-{}",
                ctx.node_id,
                std::process::id(),
                &crate::model::new_id()[..8]
            );
            let worker = WorkerBuilder::new(name)
                .backend(backend)
                .data(ctx.clone())
                .concurrency(ctx.cfg.concurrency.max(1))
                .build(handle);
            ctx.set_worker("queue", "running");
            worker.run().await.map_err(QueueError::Worker)
        };
        tokio::select! {
            _ = &mut shutdown => return,
            r = session => {
                if let Err(e) = r {
                    tracing::warn!("queue worker stopped: {}; restarting", crate::chain::chain(&e));
                }
                ctx.set_worker("queue", "restarting");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn heartbeat_loop(ctx: Arc<NodeCtx>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(ctx.cfg.heartbeat_secs.max(1)));
    ctx.set_worker("heartbeat", "running");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                let mut f = facts::collect(&ctx.cfg, &ctx.settings.domain_type, ctx.hv.as_ref()).await;
                if let Ok(w) = ctx.workers.lock() {
                    f.workers = w.iter().map(|(n, s)| WorkerStatus { name: n.clone(), state: s.clone() }).collect();
                    f.workers.sort_by(|a, b| a.name.cmp(&b.name));
                }
                let ev = NodeEvent::Heartbeat { node_id: ctx.node_id.clone(), facts: Box::new(f), at_ms: now_ms() };
                if let Err(e) = ctx.publisher.publish(&ev).await {
                    tracing::warn!("heartbeat: {e}");
                }
            }
        }
    }
}

/// libguestfs appliances are never ours and never interesting (S72).
fn ignored(name: &str) -> bool {
    name.starts_with("guestfs-")
}

/// The `watcher` loop: reports each domain libvirt announces a change of at once, and
/// reconciles every domain with a full inventory every `reconcile_secs`.
async fn watch_loop(ctx: Arc<NodeCtx>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(ctx.cfg.reconcile_secs.max(1)));
    let mut reported = Reported::default();
    let (tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<String>();
    events::spawn_listener(ctx.cfg.hypervisor_uri.clone(), tx);
    ctx.set_worker("watcher", "running");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            Some(uuid) = changed.recv() => reported.domain_changed(&ctx, uuid).await,
            _ = tick.tick() => reported.reconcile(&ctx).await,
        }
    }
}

/// What the watcher last reported of each domain, by uuid: a state or a definition is
/// sent again only when it differs, and recorded only once it was sent.
#[derive(Default)]
struct Reported {
    /// The state last reported.
    states: HashMap<String, String>,
    /// The definition last pushed (S11).
    xml: HashMap<String, String>,
}

impl Reported {
    /// One domain changed: report just it, right away, its definition first when that
    /// changed too.
    async fn domain_changed(&mut self, ctx: &NodeCtx, uuid: String) {
        // The observation's time is taken before the state is read: a result the
        // controller applied while this report was on its way must win over it.
        let seen_at = now_ms();
        let state = match ctx.hv.state(&uuid).await {
            Ok(Some(s)) => s.as_str().to_string(),
            Ok(None) => {
                self.states.remove(&uuid);
                return;
            }
            Err(e) => {
                tracing::warn!("reading state of {uuid}: {e}");
                return;
            }
        };
        // The event may come with a changed definition (S11): push it when it differs.
        if let Ok(xml) = ctx.hv.xml(&uuid).await {
            if self.xml.get(&uuid) != Some(&xml) {
                let ev = NodeEvent::DomainXml {
                    node_id: ctx.node_id.clone(),
                    guest_id: uuid.clone(),
                    xml: xml.clone(),
                };
                if ctx.publisher.publish(&ev).await.is_ok() {
                    self.xml.insert(uuid.clone(), xml);
                }
            }
        }
        if self.states.get(&uuid) != Some(&state) {
            let ev = NodeEvent::DomainState {
                node_id: ctx.node_id.clone(),
                guest_id: uuid.clone(),
                state: state.clone(),
                at_ms: seen_at,
            };
            if ctx.publisher.publish(&ev).await.is_ok() {
                self.states.insert(uuid, state);
            }
        }
    }

    /// The periodic reconcile (S73): every domain whose state differs from the last
    /// report is reported, then the full inventory, which catches anything an event
    /// missed. A hypervisor that cannot list its domains marks the worker and waits for
    /// the next tick.
    async fn reconcile(&mut self, ctx: &NodeCtx) {
        // As for one domain: the inventory is as of before the listing.
        let listed_at = now_ms();
        let doms = match ctx.hv.list().await {
            Ok(d) => d,
            Err(e) => {
                ctx.set_worker("watcher", "hypervisor unreachable");
                tracing::warn!("listing domains: {e}");
                return;
            }
        };
        ctx.set_worker("watcher", "running");
        let mut now_states = HashMap::new();
        for d in doms.iter().filter(|d| !ignored(&d.name)) {
            let st = d.state.as_str().to_string();
            if self.states.get(&d.uuid) != Some(&st) {
                let ev = NodeEvent::DomainState {
                    node_id: ctx.node_id.clone(),
                    guest_id: d.uuid.clone(),
                    state: st.clone(),
                    at_ms: listed_at,
                };
                if ctx.publisher.publish(&ev).await.is_err() {
                    continue; // not recorded as seen: reported again next tick
                }
            }
            now_states.insert(d.uuid.clone(), st);
        }
        self.states = now_states;
        let ev = NodeEvent::Inventory {
            node_id: ctx.node_id.clone(),
            domains: doms
                .iter()
                .filter(|d| !ignored(&d.name))
                .map(|d| DomainInfo {
                    guest_id: d.uuid.clone(),
                    name: d.name.clone(),
                    state: d.state.as_str().into(),
                })
                .collect(),
            at_ms: listed_at,
        };
        if let Err(e) = ctx.publisher.publish(&ev).await {
            tracing::warn!("inventory: {e}");
        }
    }
}

/// Where a file the node writes at `path` is staged until it is complete and renamed into
/// place: a crash never leaves half a file under the final name, so "exists" means
/// "complete". Removing a file also removes its staged copy, which a crash mid-write
/// leaves behind.
pub fn staged(path: &str) -> String {
    format!("{path}.tmp")
}
