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
pub mod hooks;
pub mod ingest;
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
}

/// A running controller's handles, for `corral up` and tests.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub store: Store,
    pub admin_token: String,
    /// The `redis_url` of `cfg.local_node`, with its fresh credentials.
    pub local_node_redis_url: Option<String>,
}

/// Starts the controller on `listener` and runs until `shutdown` flips to true.
pub async fn run(
    cfg: ControllerConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    started: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), ControllerError> {
    // The database, the admin token and the Redis secret: 0700 and 0600, an older
    // installation's modes narrowed (and logged).
    crate::modes::tighten_logged(&cfg.data_dir);
    let store = Store::open(&cfg.database).await?;
    let sealer = Arc::new(sealed::Sealer::of_dir(&cfg.data_dir)?);
    api::seal_stored_secrets(&store, &sealer).await?;
    let admin_token = auth::bootstrap(&store, &cfg).await?;
    api::sweep_uploads(&cfg.image_dirs);
    let catalog = Arc::new(Catalog::builtin()?);
    let limits = crate::script::Limits {
        deadline: Duration::from_millis(cfg.script_deadline_ms.max(1)),
        ..Default::default()
    };
    let scripts = Arc::new(crate::script::Scripts::new(limits)?);
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

    // Redis may not be up yet (S84): the queue producer and the ingest loop connect
    // lazily and keep retrying; the API serves meanwhile.
    let queues = Arc::new(transport::Queues::new(&cfg.redis_url));
    let (waker, wakes) = engine::channel();
    let engine = Arc::new(Engine {
        store: store.clone(),
        catalog: catalog.clone(),
        queues,
        env: StepEnv {
            vnc_port_min: cfg.vnc_port_min,
            vnc_port_max: cfg.vnc_port_max,
            placement_grace_ms: (cfg.node_timeout_secs * 3 * 1000) as i64,
            thresholds: placement::Thresholds {
                max_memory_pct: cfg.placement_max_memory_pct,
                max_load_per_cpu: cfg.placement_max_load_per_cpu,
            },
            scripts: scripts.clone(),
            plugins: plugins.clone(),
            sealer: sealer.clone(),
        },
        lease_ms: (cfg.step_lease_secs * 1000) as i64,
        max_tries: cfg.step_max_attempts,
        window: cfg.dispatch_window,
        janitor_ms: (cfg.janitor_secs.max(1) * 1000) as i64,
        fault: Fault::from_env(),
    });

    let stop = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let enroller = enroll::Enroller::new(store.clone(), &cfg.redis_url).await?;
    let local_node_redis_url = match &cfg.local_node {
        Some(id) => Some(enroller.enroll_local(id).await?.redis_url),
        None => None,
    };
    let enroll_task = tokio::spawn(enroller.clone().run(stop(shutdown.clone())));
    let engine_task = tokio::spawn(engine.clone().run(wakes, stop(shutdown.clone())));
    let ingest = ingest::Ingest {
        store: store.clone(),
        engine: engine.clone(),
        consumer: "controller".into(),
        refusals: Default::default(),
        image_dirs: cfg.image_dirs.clone(),
    };
    let ingest_task = tokio::spawn(ingest.run(
        cfg.redis_url.clone(),
        enroller.nodes(),
        stop(shutdown.clone()),
    ));
    let plugin_events = tokio::spawn(hooks::feed_events(
        store.clone(),
        plugins.clone(),
        stop(shutdown.clone()),
    ));
    let live_task = tokio::spawn(ingest::liveness(
        store.clone(),
        Duration::from_secs(cfg.node_timeout_secs),
        stop(shutdown.clone()),
    ));
    let purge_task = tokio::spawn(auth::purge_expired(store.clone(), stop(shutdown.clone())));
    let retention_task = tokio::spawn(api::retention_loop(store.clone(), stop(shutdown.clone())));
    let checksum_task = tokio::spawn(checksums::run(store.clone(), stop(shutdown.clone())));

    let addr = listener.local_addr()?;
    let state = api::AppState {
        store: store.clone(),
        catalog,
        waker,
        redis: Arc::new(api::RedisProbe::new(&cfg.redis_url)),
        scripts,
        plugins: plugins.clone(),
        pages: Arc::new(api::Pages::new(store.changes.clone())),
        throttle: Arc::new(auth::Throttle::default()),
        login_token_hours: cfg.login_token_hours,
        image_dirs: Arc::new(cfg.image_dirs.clone()),
        enroller,
        sealer,
    };
    if let Some(tx) = started {
        let _ = tx.send(Running {
            addr,
            store: store.clone(),
            admin_token,
            local_node_redis_url,
        });
    }
    api::serve(state, listener, stop(shutdown.clone())).await?;
    let _ = tokio::join!(
        engine_task,
        ingest_task,
        live_task,
        plugin_events,
        purge_task,
        retention_task,
        checksum_task,
        enroll_task
    );
    Ok(())
}
