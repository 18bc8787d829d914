//! Template images for nodes: `GET /node/v1/templates/{id}/image` (a node fetches one),
//! `PUT` on the same route (a node that made a template from a guest sends its image,
//! see `node::publish`), and `GET /node/v1/templates` (the ids of the templates that
//! exist, against which nodes sweep their caches).
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

/// The route nodes fetch template images from, and send the ones they made to.
pub const ROUTE: &str = "/node/v1/templates/:id/image";
/// The route listing the templates that exist (their ids).
pub const LIST_ROUTE: &str = "/node/v1/templates";

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

/// The ids of the templates that exist: a node keeps cached images of these only.
#[handler]
pub async fn list(state: Data<&AppState>, req: &Request) -> Response {
    if node_of(&state, req).await.is_none() {
        return plain(
            StatusCode::UNAUTHORIZED,
            "not an enrolled node's credential",
        );
    }
    match state.store.templates().await {
        Ok(ts) => {
            let mut ids: Vec<String> = ts.into_iter().map(|t| t.id).collect();
            // A conversion's image exists on its node before its template does.
            ids.extend(converting(&state).await.into_iter().map(|(id, ..)| id));
            Response::builder()
                .content_type("application/json")
                .body(serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()))
        }
        Err(e) => {
            tracing::warn!("listing templates for a node: {e}");
            plain(StatusCode::SERVICE_UNAVAILABLE, "the store is unavailable")
        }
    }
}

/// Template `id`'s image from the node that converts a guest into it: accepted only from
/// the node that runs that `template.from_guest` (403 for any other), only into the path
/// that operation chose in the controller's template directory; streamed into a part file
/// while hashed, then renamed into place. The answer is the SHA-256 received, which the
/// node checks against its own. A path already in place (a node that re-sends after a
/// crash) is answered with its SHA-256 and left as it is.
#[handler]
pub async fn receive(
    state: Data<&AppState>,
    Path(id): Path<String>,
    req: &Request,
    body: Body,
) -> Response {
    let Some(node) = node_of(&state, req).await else {
        return plain(
            StatusCode::UNAUTHORIZED,
            "not an enrolled node's credential",
        );
    };
    let dest = match conversion_of(&state, &node, &id).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let at = std::path::Path::new(&dest);
    let total = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let got = if at.exists() {
        super::images::sha256_of(at).await
    } else {
        super::images::receive_from_node(&state, &node, &id, body, total, at).await
    };
    match got {
        Ok((sha256, size_bytes)) => {
            tracing::info!(node, template = id, "a node sent a template image");
            Response::builder()
                .content_type("application/json")
                .body(serde_json::json!({"sha256": sha256, "size_bytes": size_bytes}).to_string())
        }
        Err(e) => plain(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// The conversions under way: (template id, the node running it, the path chosen for
/// the image in the controller's template directory).
async fn converting(state: &AppState) -> Vec<(String, Option<String>, String)> {
    let filter = crate::controller::store::OpFilter {
        kind: Some("template.from_guest".into()),
        active_only: true,
        limit: 1000,
        ..Default::default()
    };
    let ops = match state.store.ops(&filter).await {
        Ok(ops) => ops,
        Err(e) => {
            tracing::warn!("finding conversions: {e}");
            return Vec::new();
        }
    };
    ops.into_iter()
        .filter_map(|op| {
            serde_json::from_str::<crate::controller::saga::kinds::to_template::Payload>(
                &op.payload,
            )
            .ok()
            .map(|p| (p.template_id, op.node_id, p.path))
        })
        .collect()
}

/// The path the running conversion of template `id` by `node` chose; the answer to send
/// otherwise.
async fn conversion_of(state: &AppState, node: &str, id: &str) -> Result<String, Response> {
    for (template, by, path) in converting(state).await {
        if template != id {
            continue;
        }
        if by.as_deref() != Some(node) {
            return Err(plain(
                StatusCode::FORBIDDEN,
                &format!("node {node} does not make template {id}"),
            ));
        }
        if !crate::config::in_dirs(&state.image_dirs, &path) {
            return Err(plain(
                StatusCode::CONFLICT,
                &format!("{path} is outside the controller's template directories"),
            ));
        }
        return Ok(path);
    }
    Err(plain(
        StatusCode::NOT_FOUND,
        &format!("no conversion into template {id} is under way"),
    ))
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
