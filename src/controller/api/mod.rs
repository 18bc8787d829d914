//! The HTTP API: poem-openapi under `/api/v1`, Swagger UI at `/docs`, the spec at
//! `/openapi.json` (committed as `openapi/corral.json`), liveness at `/healthz`.
//!
//! Every handler parses its input into typed values at the edge and either reads the store
//! or writes rows and wakes the saga engine; nothing here talks to a node. All endpoints but
//! login and health need a bearer token.

mod access;
mod audit;
mod auth;
mod bootjobs;
mod console;
mod disks;
pub mod error;
mod events;
mod guest_config;
mod guest_create;
mod guests;
mod ha;
mod images;
pub use images::sweep as sweep_uploads;
mod drain;
mod metrics;
mod migrate;
mod node_images;
mod nodes;
mod operations;
mod oplog;
mod pages;
mod plugins;
mod pools;
pub mod prometheus;
mod recovery;
mod resize;
mod resources;
mod scripts;
mod snapshots;
mod spec;
mod strict;
mod system;
mod to_template;
mod users;
mod web;

use std::sync::Arc;

use poem::http::header::CONTENT_LENGTH;
use poem::listener::TcpAcceptor;
use poem::middleware::Tracing;
use poem::{EndpointExt, IntoResponse, Route};
use poem_openapi::OpenApiService;

use super::saga::engine::Waker;
use super::store::Store;
use crate::jobs::Catalog;
use error::Error;

pub use audit::purge_loop as retention_loop;
pub use auth::Auth;
pub use pages::Pages;
pub use recovery::seal_stored_secrets;
pub use system::RedisProbe;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub catalog: Arc<Catalog>,
    pub waker: Waker,
    /// Redis as the health probes see it: one connection, kept.
    pub redis: Arc<RedisProbe>,
    pub scripts: Arc<crate::script::Scripts>,
    pub plugins: Arc<crate::controller::plugins::Plugins>,
    /// Rendered list pages, kept until their tables change.
    pub pages: Arc<pages::Pages>,
    /// Failed-login counts.
    pub throttle: Arc<crate::controller::auth::Throttle>,
    pub login_token_hours: u64,
    /// Where template images may come from.
    pub image_dirs: Arc<Vec<std::path::PathBuf>>,
    /// Node enrollment and the nodes' Redis users.
    pub enroller: Arc<crate::controller::enroll::Enroller>,
    /// Seals the secrets kept in the database (the SMTP password).
    pub sealer: Arc<crate::controller::sealed::Sealer>,
    /// Placement's limits, as the engine has them (a migration's target is checked
    /// before the operation starts).
    pub thresholds: crate::controller::placement::Thresholds,
    /// Checks fence commands as they are set (HA, S74).
    pub fencer: std::sync::Arc<crate::controller::fence::Fencer>,
    /// Metric history and the newest samples (S22, S87).
    pub metrics: Arc<crate::controller::metrics::Metrics>,
    /// Unspent console tickets (the web console's VNC WebSocket).
    pub consoles: Arc<web::vnc::Tickets>,
}

/// Names of disks, snapshots and uploaded or made templates: 1-63 letters, digits, `.`,
/// `_` or `-`. `what` names the kind in the 400.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), error::Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(error::Error::BadRequest(format!(
            "{what} name {name:?}: use 1-63 letters, digits, '.', '_' or '-'"
        )))
    }
}

/// The services, listed once: the type of the tuple and its value come from one list.
/// poem-openapi implements `OpenApi` for tuples of up to 16, so they go in two.
macro_rules! services {
    (($($a:path),+ $(,)?), ($($b:path),+ $(,)?)) => {
        type Apis = (($($a,)+), ($($b,)+));
        fn apis() -> Apis {
            (($($a,)+), ($($b,)+))
        }
    };
}

services!(
    (
        system::SystemApi,
        auth::AuthApi,
        guests::GuestApi,
        guest_config::GuestConfigApi,
        console::ConsoleApi,
        disks::DiskApi,
        operations::OperationApi,
        resources::TemplateApi,
        pools::PoolApi,
        nodes::NodeApi,
        events::EventApi,
        scripts::ScriptApi,
        bootjobs::BootJobApi,
        plugins::PluginApi,
    ),
    (
        users::UserApi,
        audit::AuditApi,
        recovery::RecoveryApi,
        snapshots::SnapshotApi,
        resize::ResizeApi,
        migrate::MigrateApi,
        drain::DrainApi,
        to_template::ToTemplateApi,
        images::ImageApi,
        ha::HaApi,
        metrics::MetricsApi,
        oplog::OpLogApi,
    )
);

fn service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(apis(), "corral", env!("CARGO_PKG_VERSION"))
        .description(
            "corral: a lightweight private cloud for KVM. Every change is an operation \
             (202 + Location); follow it with /operations/{id}/wait or the /events stream.",
        )
        .server("/api/v1")
}

/// The OpenAPI document as committed in `openapi/corral.json`.
pub fn spec_json() -> String {
    spec::finish(&service().spec())
}

/// The caller of a request, if it carries a token that works.
async fn caller_of(store: &Store, req: &poem::Request) -> Option<auth::Caller> {
    let token = req
        .headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))?;
    auth::caller(store, token.trim()).await
}

/// The largest request body the API reads, bytes. Scripts are the largest bodies it takes
/// (a script's source is capped at 256 KiB by the sandbox).
pub const MAX_BODY: usize = 1 << 20;

/// The whole HTTP application: the API, its docs and spec, health, and the node image
/// route, behind [`Edge`].
pub fn app(state: AppState) -> impl poem::Endpoint {
    let api = service();
    let docs = api.swagger_ui();
    let spec = spec_json();
    let edge = Arc::new(Edge {
        methods: spec::Methods::of(&spec, "/api/v1"),
        bodies: strict::Bodies::of(&spec, "/api/v1"),
        trail: audit::Trail::of(&spec, "/api/v1"),
        store: state.store.clone(),
    });
    web::routes(Route::new())
        .nest("/api/v1", api)
        .nest("/docs", docs)
        .at(
            "/openapi.json",
            poem::get(poem::endpoint::make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            })),
        )
        .at("/healthz", poem::get(system::healthz))
        .at(
            node_images::ROUTE,
            poem::get(node_images::serve).put(node_images::receive),
        )
        .at(node_images::LIST_ROUTE, poem::get(node_images::list))
        .at("/metrics", poem::get(prometheus::serve))
        .data(state)
        .with(Tracing)
        .around(move |ep, req| {
            let edge = edge.clone();
            async move { Ok(edge.handle(ep, req).await) }
        })
}

/// What every request passes before and after its handler: bodies read bounded and
/// checked against the spec, errors in one shape, `Allow` on a 405, writes recorded in
/// the audit trail.
struct Edge {
    methods: spec::Methods,
    bodies: strict::Bodies,
    trail: audit::Trail,
    store: Store,
}

impl Edge {
    async fn handle<E: poem::Endpoint>(
        &self,
        ep: Arc<E>,
        mut req: poem::Request,
    ) -> poem::Response {
        let started = std::time::Instant::now();
        // The console's session cookie stands for its bearer token (writes need its CSRF
        // token); from here on the request looks like any other.
        if let Some(refused) = web::session::adopt(&mut req) {
            return refused;
        }
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        // A write is attributed to the token's user as it was before the request ran (a
        // logout revokes the very token).
        let audited = audit::Trail::records(&method, &path);
        let caller = if audited {
            caller_of(&self.store, &req).await
        } else {
            None
        };
        let address = auth::peer_ip(req.remote_addr());
        let (mut resp, login_name) = match self.read_body(&mut req, caller.is_some(), &path).await {
            Err(refused) => (refused, None),
            Ok(login_name) => (self.call(&*ep, req, &path).await, login_name),
        };
        // A write without a working token changed nothing: it is not recorded, so
        // anonymous requests cannot grow the trail. Logins and recovery are (who tried
        // matters), and the login throttle bounds them per address.
        let anonymous_noise = caller.is_none() && !audit::Trail::is_auth(&path);
        if audited && !anonymous_noise {
            let c = caller.as_ref();
            self.trail
                .record(
                    &self.store,
                    method.as_str(),
                    &path,
                    c,
                    login_name,
                    address,
                    &mut resp,
                )
                .await;
        }
        // API latency by operation (paths outside the API are grouped under one name,
        // so unknown paths cannot grow the label set).
        let route = self
            .trail
            .action(method.as_str(), &path)
            .map_or("other", |(a, _)| a);
        crate::controller::metrics::prom::TELEMETRY.api(
            route,
            method.as_str(),
            resp.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
        resp
    }

    /// Reads a write's body, bounded, and checks it against the spec before any handler
    /// sees it (an unknown caller's body is not looked at, so that the handler answers 401
    /// first). Answers the login name a login or recovery was for, or the refusal.
    async fn read_body(
        &self,
        req: &mut poem::Request,
        known_caller: bool,
        path: &str,
    ) -> Result<Option<String>, poem::Response> {
        let has_body = matches!(
            *req.method(),
            poem::http::Method::POST | poem::http::Method::PUT | poem::http::Method::PATCH
        );
        // Template images are streamed to disk by their handler, unbounded here (the
        // handler caps them), once the caller is known. A node's image (node transport,
        // outside the API) is read by its handler only once the node proved who it is.
        if !has_body
            || (known_caller && images::is_upload(req.method(), path))
            || path.starts_with("/node/v1/")
        {
            return Ok(None);
        }
        let too_large =
            || error::ApiError::from(Error::TooLarge { limit: MAX_BODY }).into_response();
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let Ok(bytes) = req.take_body().into_bytes_limit(MAX_BODY).await else {
            return Err(too_large());
        };
        let known = match self.bodies.schema(req.method().as_str(), path) {
            Some((schema, true)) => known_caller.then_some(schema),
            Some((schema, false)) => Some(schema),
            None => None,
        };
        let value = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        // Who tried: the trail names the account a login (or a recovery) was for.
        let login_name = (path == "/api/v1/auth/login"
            || path == "/api/v1/auth/recover"
            || path == web::session::ROUTE)
            .then(|| {
                value.as_ref()?["username"]
                    .as_str()
                    .map(|n| n.chars().take(64).collect())
            })
            .flatten();
        // Unparsable JSON is left to the payload parser and its message.
        if let (Some(schema), Some(value)) = (known, &value) {
            if let Err(message) = self.bodies.check(value, schema) {
                return Err(error::ApiError::from(Error::BadRequest(message)).into_response());
            }
        }
        req.set_body(bytes);
        Ok(login_name)
    }

    /// The handler's answer, in the one error shape, with `Allow` on a 405.
    async fn call<E: poem::Endpoint>(
        &self,
        ep: &E,
        req: poem::Request,
        path: &str,
    ) -> poem::Response {
        let resp = match ep.call(req).await {
            Ok(r) => r.into_response(),
            Err(e) => e.into_response(),
        };
        let mut resp = error::normalize(resp).await;
        if resp.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
            if let Some(allow) = self.methods.allow(path) {
                if let Ok(v) = poem::http::HeaderValue::from_str(allow) {
                    resp.headers_mut().insert(poem::http::header::ALLOW, v);
                }
            }
        }
        resp
    }
}

/// Serves until `shutdown` resolves. The caller owns the listener (tests use port 0).
pub async fn serve(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), std::io::Error> {
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            app(state),
            shutdown,
            Some(std::time::Duration::from_secs(5)),
        )
        .await
}
