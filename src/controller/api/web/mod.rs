//! The web console's server side: the embedded single-page console at `/`, its cookie
//! session, and the WebSocket that carries a guest's VNC console to the browser.
//!
//! The console itself is TypeScript (`web/`), built into `web/dist/` and embedded here; it
//! calls the API through the generated TypeScript SDK, so it can do exactly what the API
//! lets its user do (docs/ARCHITECTURE.md says why this shape was chosen). What the server
//! adds for a browser is small:
//! - [`assets`]: `/` and `/assets/*` with a Content-Security-Policy that forbids inline
//!   scripts, so a value that slipped into the page as markup could still not run;
//! - [`session`]: `POST/GET/DELETE /console/session`, a login token kept in an `HttpOnly`,
//!   `SameSite=Strict` cookie, and the edge rule that turns that cookie into the request's
//!   bearer token, for writes only with the session's CSRF token in `X-CSRF-Token`;
//! - [`vnc`]: `GET /console/vnc?ticket=…`, a WebSocket relayed to the node's VNC port for
//!   the holder of a single-use ticket made by `POST /guests/{id}/console`.

pub mod assets;
pub mod session;
pub mod vnc;

use poem::Route;

/// Adds the console's routes to the application.
pub fn routes(route: Route) -> Route {
    route
        .at("/", poem::get(assets::index))
        .at("/assets/:file", poem::get(assets::file))
        .at(
            session::ROUTE,
            poem::get(session::current)
                .post(session::open)
                .delete(session::close),
        )
        .at(vnc::ROUTE, poem::get(vnc::relay))
}
