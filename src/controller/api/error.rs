//! The one error body and the one mapping from errors to HTTP status.
//!
//! Every failure, whether raised by a handler, by request parsing (malformed JSON, unknown
//! fields, a bad path parameter) or by authentication, leaves as
//! `{"code": "...", "message": "...", "details": ...}`.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use crate::controller::store::StoreError;

#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
#[oai(skip_serializing_if_is_none)]
pub struct ErrorBody {
    /// Machine-readable code: `bad_request`, `unauthorized`, `not_found`, `conflict`,
    /// `unprocessable`, `internal`, `unavailable`.
    pub code: String,
    /// What went wrong and what to change.
    pub message: String,
    /// Extra structured context, e.g. the operation holding a guest.
    pub details: Option<serde_json::Value>,
}

/// Errors a handler can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required: send Authorization: Bearer <token> (POST /api/v1/auth/login gives one)")]
    Unauthorized,
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{message}")]
    Conflict {
        message: String,
        details: Option<serde_json::Value>,
    },
    #[error("{0}")]
    Unprocessable(String),
    /// A script (profile, boot job, plugin) was refused; details name the script and where.
    #[error("{message}")]
    Script {
        message: String,
        details: serde_json::Value,
    },
    #[error("{0}")]
    Forbidden(String),
    /// The request body is larger than the API takes.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Too many attempts (failed logins); `retry_after` seconds until the next is heard.
    #[error("{message}; try again in {retry_after} s")]
    TooMany { message: String, retry_after: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Store(#[from] StoreError),
}

impl Error {
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            id: id.into(),
        }
    }

    /// The one status mapping.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Unprocessable(_) | Error::Script { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Store(e) if e.is_unique_violation() => StatusCode::CONFLICT,
            Error::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> ErrorBody {
        let status = self.status();
        let (message, details) = match self {
            Error::Conflict { message, details } => (message.clone(), details.clone()),
            Error::Script { message, details } => (message.clone(), Some(details.clone())),
            Error::TooMany { retry_after, .. } => (
                self.to_string(),
                Some(serde_json::json!({ "retry_after_secs": retry_after })),
            ),
            Error::Store(e) if e.is_unique_violation() => {
                ("a resource with that name already exists".to_string(), None)
            }
            other => (other.to_string(), None),
        };
        ErrorBody {
            code: code_of(status).into(),
            message,
            details,
        }
    }
}

pub fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        429 => "too_many_requests",
        422 => "unprocessable",
        503 => "unavailable",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// How errors appear in the OpenAPI document.
#[derive(ApiResponse)]
pub enum ApiError {
    /// The request is malformed: fix what the message names.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No or an invalid bearer token.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// The caller may not do this (system jobs need an administrator).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// The resource does not exist.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// The resource is busy (another operation holds it) or the name is taken.
    #[oai(status = 409)]
    Conflict(Json<ErrorBody>),
    /// The body is larger than the API takes (1 MiB).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// The body is not JSON, or its `Content-Type` is missing or not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Well-formed but not acceptable (e.g. memory below the template's minimum).
    #[oai(status = 422)]
    Unprocessable(Json<ErrorBody>),
    /// The server failed; the message says why.
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// Too many attempts (failed logins from this user name or address): `details.retry_after_secs`.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>),
    /// A dependency (database, Redis) is not ready.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let body = Json(e.body());
        match e.status().as_u16() {
            400 => ApiError::BadRequest(body),
            401 => ApiError::Unauthorized(body),
            403 => ApiError::Forbidden(body),
            404 => ApiError::NotFound(body),
            409 => ApiError::Conflict(body),
            413 => ApiError::PayloadTooLarge(body),
            415 => ApiError::UnsupportedMediaType(body),
            429 => ApiError::TooManyRequests(body),
            422 => ApiError::Unprocessable(body),
            503 => ApiError::Unavailable(body),
            _ => {
                tracing::error!("internal error: {}", body.0.message);
                ApiError::Internal(body)
            }
        }
    }
}

/// The allocators' refusals, mapped once: a taken or exhausted resource is a conflict, an
/// address that may not be handed out is unprocessable.
impl From<crate::controller::alloc::AllocError> for Error {
    fn from(e: crate::controller::alloc::AllocError) -> Self {
        use crate::controller::alloc::AllocError as A;
        match e {
            A::Store(s) => Error::Store(s),
            A::IpInUse(_)
            | A::PoolExhausted(_)
            | A::NoFreeAddress
            | A::VncExhausted { .. }
            | A::Raced(_) => Error::Conflict {
                message: e.to_string(),
                details: None,
            },
            A::NotAnAddress(_) => Error::BadRequest(e.to_string()),
            A::NotInPool(_)
            | A::NotInNetwork(_)
            | A::IpMarked(..)
            | A::IpSpecial { .. }
            | A::BadPool { .. } => Error::Unprocessable(e.to_string()),
        }
    }
}

impl From<crate::controller::enroll::EnrollError> for Error {
    fn from(e: crate::controller::enroll::EnrollError) -> Self {
        use crate::controller::enroll::EnrollError as E;
        match e {
            E::InvalidId(_) => Error::BadRequest(e.to_string()),
            E::Enrolled(_) => Error::Conflict {
                message: e.to_string(),
                details: None,
            },
            E::NotEnrolled(id) => Error::not_found("enrolled node", id),
            E::Store(s) => Error::Store(s),
        }
    }
}

impl From<crate::script::ScriptError> for Error {
    fn from(e: crate::script::ScriptError) -> Self {
        use crate::script::ScriptError as S;
        let (line, column) = match &e {
            S::Invalid { line, column, .. } | S::Failed { line, column, .. } => (*line, *column),
            _ => (None, None),
        };
        Error::Script {
            message: e.to_string(),
            details: serde_json::json!({"script": e.script(), "line": line, "column": column}),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Error::from(e).into()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Rewrites any non-JSON error response (poem's own parse and auth errors) into the one
/// error body, keeping its status.
pub async fn normalize(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(poem::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (_, body) = resp.into_parts();
    let text = body.into_string().await.unwrap_or_default();
    let message = if status == StatusCode::UNAUTHORIZED {
        Error::Unauthorized.to_string()
    } else if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    let body = ErrorBody {
        code: code_of(status).into(),
        message,
        details: None,
    };
    poem::web::Json(body).with_status(status).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status_and_code() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::BadRequest("x".into()), 400, "bad_request"),
            (Error::Unauthorized, 401, "unauthorized"),
            (Error::not_found("guest", "g"), 404, "not_found"),
            (
                Error::Conflict {
                    message: "busy".into(),
                    details: None,
                },
                409,
                "conflict",
            ),
            (Error::Unprocessable("x".into()), 422, "unprocessable"),
            (
                Error::Script {
                    message: "x".into(),
                    details: serde_json::json!({}),
                },
                422,
                "unprocessable",
            ),
            (Error::Forbidden("x".into()), 403, "forbidden"),
            (Error::TooLarge { limit: 1 }, 413, "payload_too_large"),
            (
                Error::TooMany {
                    message: "x".into(),
                    retry_after: 1,
                },
                429,
                "too_many_requests",
            ),
            (Error::Unavailable("redis".into()), 503, "unavailable"),
            (
                Error::Store(StoreError::Db(sqlx::Error::RowNotFound)),
                500,
                "internal",
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e}");
            assert_eq!(e.body().code, code);
        }
    }
}
