//! The console's files, embedded at build time from `web/dist/` (built by `web/build.sh`
//! and committed, so `cargo build` never needs npm; CI rebuilds them and checks that the
//! committed bundle is what the sources give).
//!
//! Every answer carries the console's security headers: a Content-Security-Policy that
//! allows scripts, styles and connections from this origin only (no inline script, no
//! `eval`), no framing, and no content sniffing.

use poem::http::{header, StatusCode};
use poem::web::Path;
use poem::Response;

/// The policy every console answer carries. `img-src data: blob:` is for noVNC's cursor;
/// `connect-src 'self'` covers the API, the event stream and the console WebSocket.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     frame-ancestors 'none'; form-action 'self'";

/// `(name, content type, bytes)` of each file under `/assets/`.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../../web/dist/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../../web/dist/app.css"),
    ),
];

const INDEX: &[u8] = include_bytes!("../../../../web/dist/index.html");

/// Adds the console's security headers.
fn secured() -> poem::ResponseBuilder {
    Response::builder()
        .header(header::CONTENT_SECURITY_POLICY, CSP)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "same-origin")
        .header("Cross-Origin-Opener-Policy", "same-origin")
}

/// `GET /`: the console's page. Not cached, so a new controller serves its new console.
#[poem::handler]
pub fn index() -> Response {
    secured()
        .content_type("text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(INDEX)
}

/// `GET /assets/{file}`: one embedded file, or 404.
#[poem::handler]
pub fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ty, bytes)) => secured()
            .content_type(*ty)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(*bytes),
        None => secured()
            .status(StatusCode::NOT_FOUND)
            .content_type("text/plain")
            .body("no such console file"),
    }
}
