//! The controller: owns all state (SQL), decides (placement, allocation), and drives every
//! operation's saga; nodes only execute (S24).
//!
//! Flow of a request: the API validates it into a typed request, writes the guest and
//! operation rows and answers 202 with the operation's URL; the saga engine runs controller
//! steps itself and dispatches node steps to the node's queue; the ingest loop reads node
//! results from the event stream and hands them back to the engine; every change appends to
//! the event log, which `/api/v1/events` streams.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod checksums;
pub mod enroll;
pub mod fence;
pub mod hooks;
pub mod ingest;
pub mod metrics;
pub mod placement;
pub mod plugins;
pub mod saga;
pub mod sealed;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ControllerConfig;
use crate::fault::Fault;
use crate::jobs::Catalog;
use crate::transport;
use saga::engine::{self, Engine};
use saga::steps::StepEnv;
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Catalog(#[from] crate::jobs::CatalogError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("serving HTTP: {0}")]
    Http(#[from] std::io::Error),
    #[error("a shipped script does not compile: {0}")]
    Script(#[from] crate::script::ScriptError),
    #[error("enrolling the local node: {0}")]
    Enroll(#[from] enroll::EnrollError),
    #[error(transparent)]
    Seal(#[from] sealed::SealError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

/// A running controller's handles, for `corral up` and tests.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub store: Store,
    pub admin_token: String,
    /// The `redis_url` of `cfg.local_node`, with its fresh credentials.
    pub local_node_redis_url: Option<String>,
}

/// What the controller runs on, loaded and checked at start.
struct Parts {
    store: Store,
    sealer: Arc<sealed::Sealer>,
    admin_token: String,
    catalog: Arc<Catalog>,
    scripts: Arc<crate::script::Scripts>,
    plugins: Arc<plugins::Plugins>,
    metrics: Arc<metrics::Metrics>,
}

/// Opens the database (modes narrowed, secrets sealed, the admin bootstrapped) and loads
/// the kinds, the scripts and the plugins.
async fn parts(cfg: &ControllerConfig) -> Result<Parts, ControllerError> {
    // The database, the admin token and the Redis secret: 0700 and 0600, an older
    // installation's modes narrowed (and logged).
    crate::modes::tighten_logged(&cfg.data_dir);
    let store = Store::open(&cfg.database).await?;
    let metrics = Arc::new(metrics::Metrics::open(&metrics_database(cfg)).await?);
    let sealer = Arc::new(sealed::Sealer::of_dir(&cfg.data_dir)?);
    api::seal_stored_secrets(&store, &sealer).await?;
    let admin_token = auth::bootstrap(&store, cfg).await?;
    api::sweep_uploads(&cfg.image_dirs);
    let limits = crate::script::Limits {
        deadline: Duration::from_millis(cfg.script_deadline_ms.max(1)),
        ..Default::default()
    };
    let plugins = Arc::new(plugins::Plugins::load(
        &cfg.plugins_dir,
        &cfg.plugins,
        limits,
    ));
    for p in plugins.list() {
        match &p.error {
            Some(e) => tracing::warn!(plugin = %p.name, "plugin not loaded: {e}"),
            None => tracing::info!(plugin = %p.name, state = %p.state, "plugin found"),
        }
    }
    Ok(Parts {
        store,
        sealer,
        admin_token,
        catalog: Arc::new(Catalog::builtin()?),
        scripts: Arc::new(crate::script::Scripts::new(limits)?),
        plugins,
        metrics,
    })
}

/// The metrics database: beside the main one, named after it (`corral.db` →
/// `corral.metrics.db`).
pub fn metrics_database(cfg: &ControllerConfig) -> std::path::PathBuf {
    cfg.database.with_extension("metrics.db")
}

/// The saga engine. Redis may not be up yet (S84): the queue producer connects lazily
/// and keeps retrying; the API serves meanwhile.
fn engine(cfg: &ControllerConfig, p: &Parts) -> Arc<Engine> {
    Arc::new(Engine {
        store: p.store.clone(),
        catalog: p.catalog.clone(),
        queues: Arc::new(transport::Queues::new(&cfg.redis_url)),
        env: StepEnv {
            vnc_port_min: cfg.vnc_port_min,
            vnc_port_max: cfg.vnc_port_max,
            placement_grace_ms: (cfg.node_timeout_secs * 3 * 1000) as i64,
            thresholds: placement::Thresholds {
                max_memory_pct: cfg.placement_max_memory_pct,
                max_load_per_cpu: cfg.placement_max_load_per_cpu,
            },
            scripts: p.scripts.clone(),
            plugins: p.plugins.clone(),
            sealer: p.sealer.clone(),
            catalog: p.catalog.clone(),
            fencer: Arc::new(crate::controller::fence::Fencer::new(
                cfg.fence_dir.clone(),
                std::time::Duration::from_secs(cfg.fence_timeout_secs.max(1)),
            )),
        },
        ha_after_ms: (cfg.ha_after_secs * 1000) as i64,
        lease_ms: (cfg.step_lease_secs * 1000) as i64,
        max_tries: cfg.step_max_attempts,
        window: cfg.dispatch_window,
        janitor_ms: (cfg.janitor_secs.max(1) * 1000) as i64,
        fault: Fault::from_env(),
    })
}

/// Resolves once `rx` flips to true.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Starts the background loops: the engine, node enrollment, the event streams, node
/// liveness, plugins' event feed, and the purge, retention and checksum sweeps.
fn spawn_loops(
    cfg: &ControllerConfig,
    p: &Parts,
    engine: Arc<Engine>,
    wakes: tokio::sync::mpsc::UnboundedReceiver<String>,
    enroller: &Arc<enroll::Enroller>,
    shutdown: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let stop = || stopped(shutdown.clone());
    let ingest = ingest::Ingest {
        store: p.store.clone(),
        engine: engine.clone(),
        consumer: "controller".into(),
        refusals: Default::default(),
        image_dirs: cfg.image_dirs.clone(),
        metrics: p.metrics.clone(),
    };
    let timeout = Duration::from_secs(cfg.node_timeout_secs);
    vec![
        tokio::spawn(enroller.clone().run(stop())),
        tokio::spawn(engine.run(wakes, stop())),
        tokio::spawn(ingest.run(cfg.redis_url.clone(), enroller.nodes(), stop())),
        tokio::spawn(hooks::feed_events(
            p.store.clone(),
            p.plugins.clone(),
            stop(),
        )),
        tokio::spawn(ingest::liveness(p.store.clone(), timeout, stop())),
        tokio::spawn(auth::purge_expired(p.store.clone(), stop())),
        tokio::spawn(api::retention_loop(
            p.store.clone(),
            p.metrics.clone(),
            stop(),
        )),
        tokio::spawn(checksums::run(p.store.clone(), stop())),
    ]
}

/// Starts the controller on `listener` and runs until `shutdown` flips to true.
pub async fn run(
    cfg: ControllerConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), ControllerError> {
    let p = parts(&cfg).await?;
    let (waker, wakes) = engine::channel();
    let engine = engine(&cfg, &p);
    let enroller = enroll::Enroller::new(p.store.clone(), &cfg.redis_url).await?;
    let local_node_redis_url = match &cfg.local_node {
        Some(id) => Some(enroller.enroll_local(id).await?.redis_url),
        None => None,
    };
    let thresholds = engine.env.thresholds;
    let fencer = engine.env.fencer.clone();
    let tasks = spawn_loops(&cfg, &p, engine, wakes, &enroller, &shutdown);
    let addr = listener.local_addr()?;
    let state = api::AppState {
        store: p.store.clone(),
        catalog: p.catalog,
        waker,
        redis: Arc::new(api::RedisProbe::new(&cfg.redis_url)),
        scripts: p.scripts,
        plugins: p.plugins,
        pages: Arc::new(api::Pages::new(p.store.changes.clone())),
        throttle: Arc::new(auth::Throttle::default()),
        login_token_hours: cfg.login_token_hours,
        image_dirs: Arc::new(cfg.image_dirs.clone()),
        enroller,
        sealer: p.sealer,
        thresholds,
        fencer,
        metrics: p.metrics.clone(),
        consoles: Arc::default(),
    };
    if let Some(tx) = started {
        let _ = tx.send(Running {
            addr,
            store: p.store.clone(),
            admin_token: p.admin_token,
            local_node_redis_url,
        });
    }
    api::serve(state, listener, stopped(shutdown.clone())).await?;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
