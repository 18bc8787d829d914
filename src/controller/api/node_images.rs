//! Template images for nodes: `GET /node/v1/templates/{id}/image`.
//!
//! A node whose image directories do not hold a template's image (a host without the
//! shared template directory) fetches it from here on first use and keeps it in its own
//! cache (`node::fetch`). This is node transport, like Redis, not part of the public API:
//! it is not in the OpenAPI document, and no user token opens it. The node proves who it
//! is with the secret of its Redis credential (`Authorization: Bearer`, and its id in
//! `X-Corral-Node`); the controller keeps only that secret's SHA-256, the same digest
//! Redis checks. A wrong or revoked credential gets 401 and nothing else.
//!
//! The body is the file, streamed, with `Content-Length` and, when corral knows it, the
//! image's SHA-256 in `X-Checksum-Sha256`, which the node checks before keeping a byte.

use poem::http::StatusCode;
use poem::web::{Data, Path};
use poem::{handler, Body, Request, Response};

use super::AppState;
use crate::transport::acl;

/// The route nodes fetch template images from.
pub const ROUTE: &str = "/node/v1/templates/:id/image";

/// Equal strings, compared in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn plain(status: StatusCode, message: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("text/plain")
        .body(message.to_string())
}

/// The node the request's credential belongs to, if it is a valid one.
async fn node_of(state: &AppState, req: &Request) -> Option<String> {
    let node = req.headers().get("x-corral-node")?.to_str().ok()?;
    let secret = req
        .headers()
        .get(poem::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    let known = state.store.node_secret_sha256(node).await.ok()??;
    same(&known, &acl::digest(secret)).then(|| node.to_string())
}

#[handler]
pub async fn serve(state: Data<&AppState>, Path(id): Path<String>, req: &Request) -> Response {
    let Some(node) = node_of(&state, req).await else {
        return plain(
            StatusCode::UNAUTHORIZED,
            "not an enrolled node's credential",
        );
    };
    let t = match state.store.template(&id).await {
        Ok(Some(t)) if t.id == id => t,
        Ok(_) => return plain(StatusCode::NOT_FOUND, "no such template"),
        Err(e) => {
            tracing::warn!("serving a template image: {e}");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable");
        }
    };
    let file = match tokio::fs::File::open(&t.path).await {
        Ok(f) => f,
        Err(e) => {
            return plain(
                StatusCode::CONFLICT,
                &format!("the image {} cannot be read on the controller: {e}", t.path),
            )
        }
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    tracing::info!(node, template = t.name, "a node fetches a template image");
    let mut resp = Response::builder().content_type("application/octet-stream");
    if let Some(l) = len {
        resp = resp.header(poem::http::header::CONTENT_LENGTH, l);
    }
    if let Some(sum) = &t.sha256 {
        resp = resp.header("X-Checksum-Sha256", sum.as_str());
    }
    resp.body(Body::from_async_read(file))
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn credentials_compare_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd") && !same("abc", "ab") && !same("", "a"));
    }
}
