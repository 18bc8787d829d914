//! Health and about.

use std::time::Duration;

use poem::web::Data;
use poem::IntoResponse;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use redis::aio::ConnectionManager;

use super::error::ApiResult;
use super::{AppState, Auth};
use crate::transport::{self, TransportError};

#[derive(Tags)]
pub enum Tag {
    /// Health and version.
    System,
    /// Login, logout and API tokens.
    Auth,
    /// Users and roles.
    Users,
    /// Guests (virtual machines) and their power actions.
    Guests,
    /// Operations: every change, with its steps and progress.
    Operations,
    /// Templates (OS images) and IP pools.
    Resources,
    /// Nodes (KVM hosts).
    Nodes,
    /// The event stream.
    Events,
    /// OS-init profiles, boot scripts and boot jobs (Rhai).
    Scripts,
    /// Controller plugins.
    Plugins,
    /// Metric history and current figures of guests and nodes.
    Metrics,
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct Health {
    /// `ok` when every dependency answers.
    pub status: String,
    pub database: String,
    pub redis: String,
}

#[derive(ApiResponse)]
pub enum HealthResponse {
    /// Ready.
    #[oai(status = 200)]
    Ok(Json<Health>),
    /// A dependency is down; the body says which.
    #[oai(status = 503)]
    Unavailable(Json<Health>),
}

#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct About {
    pub name: String,
    pub version: String,
    /// Operation kinds this controller runs.
    pub operation_kinds: Vec<String>,
}

/// How long a probe waits for Redis before reporting it unavailable.
const REDIS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The health probes' Redis connection: made on first use (Redis may be down when the
/// controller starts), then kept and shared by every probe. The connection manager
/// reconnects by itself after Redis comes back; a probe never waits longer than
/// [`REDIS_PROBE_TIMEOUT`].
pub struct RedisProbe {
    url: String,
    conn: tokio::sync::OnceCell<ConnectionManager>,
}

impl RedisProbe {
    pub fn new(url: &str) -> Self {
        RedisProbe {
            url: url.to_string(),
            conn: tokio::sync::OnceCell::new(),
        }
    }

    /// `ok`, or why Redis did not answer a PING.
    async fn ping(&self) -> String {
        let ping = async {
            let conn = self
                .conn
                .get_or_try_init(|| transport::connect(&self.url))
                .await
                .map_err(|e| match e {
                    TransportError::Redis(e) => e.to_string(),
                    other => other.to_string(),
                })?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn.clone())
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(REDIS_PROBE_TIMEOUT, ping).await {
            Ok(Ok(_)) => "ok".to_string(),
            Ok(Err(why)) => why,
            Err(_) => "timed out".to_string(),
        }
    }
}

impl RedisProbe {
    /// How many jobs wait in each node's queue; a node whose count Redis did not give
    /// (Redis down, or over the probe's time) is left out.
    pub async fn queue_depths(&self, nodes: &[String]) -> Vec<(String, u64)> {
        let depths = async {
            let conn = self
                .conn
                .get_or_try_init(|| transport::connect(&self.url))
                .await
                .ok()?;
            let mut pipe = redis::pipe();
            for n in nodes {
                pipe.cmd("LLEN")
                    .arg(transport::queue_config(n).active_jobs_list());
            }
            let counts: Vec<u64> = pipe.query_async(&mut conn.clone()).await.ok()?;
            Some(nodes.iter().cloned().zip(counts).collect())
        };
        tokio::time::timeout(REDIS_PROBE_TIMEOUT, depths)
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

async fn check(state: &AppState) -> Health {
    let database = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let redis = state.redis.ping().await;
    let status = if database == "ok" && redis == "ok" {
        "ok"
    } else {
        "degraded"
    };
    Health {
        status: status.into(),
        database,
        redis,
    }
}

/// `/healthz` outside the API prefix, for load balancers and systemd.
#[poem::handler]
pub async fn healthz(state: Data<&AppState>) -> poem::Response {
    let h = check(&state).await;
    let code = if h.status == "ok" {
        poem::http::StatusCode::OK
    } else {
        poem::http::StatusCode::SERVICE_UNAVAILABLE
    };
    poem::web::Json(
        serde_json::json!({"status": h.status, "database": h.database, "redis": h.redis}),
    )
    .with_status(code)
    .into_response()
}

pub struct SystemApi;

#[OpenApi(tag = "Tag::System")]
impl SystemApi {
    /// Readiness: the database and Redis answer. No authentication.
    #[oai(path = "/health", method = "get", operation_id = "health")]
    async fn health(&self, state: Data<&AppState>) -> HealthResponse {
        let h = check(&state).await;
        if h.status == "ok" {
            HealthResponse::Ok(Json(h))
        } else {
            HealthResponse::Unavailable(Json(h))
        }
    }

    /// Version and capabilities.
    #[oai(path = "/about", method = "get", operation_id = "about")]
    async fn about(&self, _auth: Auth, state: Data<&AppState>) -> ApiResult<Json<About>> {
        Ok(Json(About {
            name: "corral".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            operation_kinds: state.catalog.kinds().map(|k| k.kind.to_string()).collect(),
        }))
    }
}
