//! The console's cookie session.
//!
//! `POST /console/session` checks a username and password exactly as `POST /auth/login`
//! does (same throttle, same lockout, same token) but hands the token to the browser in a
//! cookie the page's scripts cannot read (`HttpOnly`), that is never sent by another site
//! (`SameSite=Strict`), and that is `Secure` when the request came over TLS (a TLS proxy
//! says so with `X-Forwarded-Proto: https`). The answer carries the session's CSRF token,
//! which the page sends as `X-CSRF-Token` with every write.
//!
//! [`adopt`] runs at the edge of every request: an API request with no `Authorization`
//! header but the session cookie is given the cookie's token as its bearer token, so every
//! handler, role check and audit record sees the same user as for a token. A write must
//! also carry the CSRF token (derived from the session token, so nothing more is stored);
//! without it the request is refused with 403 before any handler runs.
//!
//! `GET /console/session` tells a reloaded page who it is (and its CSRF token again);
//! `DELETE /console/session` revokes the token and clears the cookie.

use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::web::{Data, RemoteAddr};
use poem::{Body, IntoResponse, Request, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::super::auth::{caller, log_in, Caller};
use super::super::error::{ApiError, Error};
use super::super::AppState;
use crate::controller::store::Store;
use crate::model::rfc3339;

/// Where the session is opened, read and closed.
pub const ROUTE: &str = "/console/session";
/// The session cookie's name.
pub const COOKIE: &str = "corral_session";
/// The header a console write carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The largest login body read.
const MAX_LOGIN_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    username: String,
    password: String,
}

/// What the page learns about its session.
#[derive(Serialize)]
struct SessionView {
    csrf: String,
    username: String,
    role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

/// The CSRF token of a session: a digest of its token, so it proves the page read it from
/// this origin without revealing the token itself.
pub fn csrf_of(token: &str) -> String {
    hex::encode(Sha256::digest(
        format!("corral-console-csrf:{token}").as_bytes(),
    ))
}

/// The session token in the request's cookies, if any.
pub fn cookie_token(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Compares two strings in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether the request carries the CSRF token of session `token`.
fn csrf_ok(req: &Request, token: &str) -> bool {
    req.headers()
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| same(v.trim(), &csrf_of(token)))
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn refuse(e: Error) -> Response {
    ApiError::from(e).into_response()
}

fn csrf_refused() -> Response {
    refuse(Error::Forbidden(
        "a console session writes only with its CSRF token in X-CSRF-Token; reload the page".into(),
    ))
}

/// At the edge: gives an API request that came with the session cookie (and no
/// `Authorization`) the cookie's token as its bearer token; a write without the session's
/// CSRF token is refused here: the answer is that refusal, if any.
pub fn adopt(req: &mut Request) -> Option<Response> {
    if !req.uri().path().starts_with("/api/") || req.headers().contains_key(header::AUTHORIZATION) {
        return None;
    }
    let token = cookie_token(req)?;
    if is_write(req.method()) && !csrf_ok(req, &token) {
        return Some(csrf_refused());
    }
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    None
}

/// The caller of a console request: its bearer token, else its session cookie.
pub async fn console_caller(store: &Store, req: &Request) -> Option<Caller> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    caller(store, &bearer.or_else(|| cookie_token(req))?).await
}

fn over_tls(req: &Request) -> bool {
    req.uri().scheme_str() == Some("https")
        || req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn cookie(req: &Request, value: &str, max_age_secs: i64) -> String {
    let secure = if over_tls(req) { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}")
}

fn view(token: &str, c: &Caller, expires_at: Option<i64>) -> SessionView {
    SessionView {
        csrf: csrf_of(token),
        username: c.user.name.clone(),
        role: c.user.role.clone(),
        expires_at: expires_at.map(rfc3339),
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(serde_json::to_vec(body).unwrap_or_default())
}

/// `POST /console/session`: log in with `{"username","password"}`.
#[poem::handler]
pub async fn open(req: &Request, body: Body, state: Data<&AppState>) -> Response {
    let remote: &RemoteAddr = req.remote_addr();
    let creds = match body.into_bytes_limit(MAX_LOGIN_BODY).await {
        Ok(b) => serde_json::from_slice::<Credentials>(&b).map_err(|e| {
            Error::BadRequest(format!(
                "send {{\"username\": …, \"password\": …}} as JSON: {e}"
            ))
        }),
        Err(e) => Err(Error::BadRequest(format!(
            "the login body could not be read: {e}"
        ))),
    };
    let creds = match creds {
        Ok(c) if c.username.len() <= 64 && c.password.len() <= 1024 => c,
        Ok(_) => return refuse(Error::BadRequest("username or password too long".into())),
        Err(e) => return refuse(e),
    };
    match log_in(&state, &creds.username, creds.password, remote).await {
        Ok((row, token, user)) => {
            let c = Caller {
                user,
                token_id: row.id.clone(),
            };
            let max_age = (state.login_token_hours as i64) * 3600;
            let mut resp = json(StatusCode::OK, &view(&token, &c, row.expires_at));
            if let Ok(v) = HeaderValue::from_str(&cookie(req, &token, max_age)) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => refuse(e),
    }
}

/// `GET /console/session`: who the cookie stands for, with the CSRF token. Without a
/// session, 401 with `details.recovery`: whether mail is set up, so the login page offers
/// password recovery only when it can work.
#[poem::handler]
pub async fn current(req: &Request, state: Data<&AppState>) -> Response {
    if let Some(token) = cookie_token(req) {
        if let Some(c) = caller(&state.store, &token).await {
            return json(StatusCode::OK, &view(&token, &c, None));
        }
    }
    let recovery = super::super::recovery::load_smtp(&state)
        .await
        .is_ok_and(|s| !s.host.is_empty());
    json(
        StatusCode::UNAUTHORIZED,
        &serde_json::json!({
            "code": "unauthorized",
            "message": Error::Unauthorized.to_string(),
            "details": {"recovery": recovery},
        }),
    )
}

/// `DELETE /console/session`: revokes the session's token and clears the cookie.
#[poem::handler]
pub async fn close(req: &Request, state: Data<&AppState>) -> Response {
    let Some(token) = cookie_token(req) else {
        return refuse(Error::Unauthorized);
    };
    if !csrf_ok(req, &token) {
        return csrf_refused();
    }
    let Some(c) = caller(&state.store, &token).await else {
        return refuse(Error::Unauthorized);
    };
    if let Err(e) = state.store.revoke_token(&c.user.id, &c.token_id).await {
        return refuse(e.into());
    }
    let mut resp = Response::builder().status(StatusCode::NO_CONTENT).finish();
    if let Ok(v) = HeaderValue::from_str(&cookie(req, "", 0)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_is_bound_to_the_token() {
        assert_eq!(csrf_of("a"), csrf_of("a"));
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_eq!(csrf_of("a").len(), 64);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let req = Request::builder()
            .header(header::COOKIE, "x=1; corral_session=tok; y=2")
            .finish();
        assert_eq!(cookie_token(&req).as_deref(), Some("tok"));
        let none = Request::builder().header(header::COOKIE, "x=1").finish();
        assert_eq!(cookie_token(&none), None);
    }

    #[test]
    fn a_cookie_write_needs_the_csrf_token() {
        let mut bare = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/guests".parse().expect("uri"))
            .header(header::COOKIE, "corral_session=tok")
            .finish();
        assert_eq!(
            adopt(&mut bare).expect("refused").status(),
            StatusCode::FORBIDDEN
        );
        let mut signed = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/guests".parse().expect("uri"))
            .header(header::COOKIE, "corral_session=tok")
            .header(CSRF_HEADER, csrf_of("tok"))
            .finish();
        assert!(adopt(&mut signed).is_none(), "accepted");
        assert_eq!(
            signed
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer tok"[..])
        );
        let mut read = Request::builder()
            .uri("/api/v1/guests".parse().expect("uri"))
            .header(header::COOKIE, "corral_session=tok")
            .finish();
        assert!(adopt(&mut read).is_none(), "a read needs no CSRF token");
    }

    #[test]
    fn the_cookie_is_strict_and_http_only() {
        let req = Request::builder().finish();
        let c = cookie(&req, "t", 60);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        let tls = Request::builder()
            .header("x-forwarded-proto", "https")
            .finish();
        assert!(cookie(&tls, "t", 60).ends_with("; Secure"));
    }
}
