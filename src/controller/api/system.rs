//! Health and about.

use std::time::Duration;

use poem::web::Data;
use poem::IntoResponse;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};

use super::{AppState, Auth};

#[derive(Tags)]
pub enum Tag {
    /// Health and version.
    System,
    /// Login.
    Auth,
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
}

#[derive(Debug, Object)]
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
pub struct About {
    pub name: String,
    pub version: String,
    /// Operation kinds this controller runs.
    pub operation_kinds: Vec<String>,
}

async fn check(state: &AppState) -> Health {
    let database = match state.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let redis = async {
        let client = redis::Client::open(state.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    let redis = match tokio::time::timeout(Duration::from_secs(2), redis).await {
        Ok(Ok(_)) => "ok".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
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
    async fn about(&self, _auth: Auth, state: Data<&AppState>) -> Json<About> {
        Json(About {
            name: "corral".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            operation_kinds: state.catalog.kinds().map(|k| k.kind.clone()).collect(),
        })
    }
}
