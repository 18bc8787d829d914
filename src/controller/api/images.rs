//! Template images over HTTP (S60, S43): upload a new template's image, download any
//! template's image.
//!
//! Upload (`PUT /templates/{name}/image?os_type=…&sha256=…`) streams the body to a
//! temporary file in the first template directory while hashing it: nothing is held in
//! memory. It is then checked, and nothing is kept unless every check passes:
//! 1. the SHA-256 the client gave matches what arrived;
//! 2. `qemu-img info` finds a `qcow2` or `raw` image;
//! 3. a qcow2 image has no external data file, and no backing file but the image of a
//!    template the uploader may use (another user's private image is not one).
//!
//! The image is then renamed into place, named by the new template's id (a path nobody
//! can guess or choose, so no one can point at it), and registered as a template (private to a user,
//! public when an administrator or operator uploads). An interrupted upload leaves
//! nothing: send it again (restartable). The body limit of the rest of the API does not
//! apply to this one route (`api::app`).
//!
//! The upload is followed on the event stream: `template.upload` events (subject: the
//! template's name) carry the bytes received, the total from `Content-Length` and the
//! percent while it arrives, then `checking`, and `registered` or `refused`. The
//! temporary file of an upload the controller was receiving when it stopped is removed
//! when it starts again ([`sweep`]).
//!
//! Download (`GET /templates/{name}/image`) streams the file with its checksum in
//! `X-Checksum-Sha256` when corral knows it.
//!
//! The image is written on the controller's host; a node that does not see it in its own
//! template directories fetches it from the controller on first use (`node_images`).

use poem::web::Data;
use poem::Body;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, OpenApi};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::error::{ApiResult, Error};
use super::resources::{template_view, OsType, Template};
use super::{access, AppState, Auth};
use crate::controller::store::TemplateRow;
use crate::model::{new_id, now_ms};

const MIB: u64 = 1 << 20;

/// The route `api::app` lets through without its body limit.
pub fn is_upload(method: &poem::http::Method, path: &str) -> bool {
    method == poem::http::Method::PUT
        && path
            .strip_prefix("/api/v1/templates/")
            .and_then(|rest| rest.strip_suffix("/image"))
            .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

#[derive(ApiResponse)]
pub enum Uploaded {
    /// The template, registered.
    #[oai(status = 201)]
    Created(Json<Template>),
}

#[derive(ApiResponse)]
pub enum Download {
    #[oai(status = 200, content_type = "application/octet-stream")]
    Ok(
        Binary<Body>,
        /// SHA-256 of the image, when corral computed it (uploaded or made from a guest).
        #[oai(header = "X-Checksum-Sha256")]
        Option<String>,
    ),
}

fn unprocessable(m: String) -> Error {
    Error::Unprocessable(m)
}

/// What `qemu-img info` says of a file: its format, or why it is refused. A backing file
/// must be the image of a template in `usable` (those the uploader may see): anything else
/// could be another user's private image, reached through the new template's chain.
async fn inspect(path: &str, usable: &[TemplateRow]) -> Result<String, Error> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["info", "--output=json", path])
        .output()
        .await
        .map_err(|e| Error::Unavailable(format!("running qemu-img: {e}")))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        unprocessable(format!(
            "the upload is not a disk image qemu-img can read: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })?;
    let format = info["format"].as_str().unwrap_or("").to_string();
    if format != "qcow2" && format != "raw" {
        return Err(unprocessable(format!(
            "the image is {format:?}: templates are qcow2 or raw"
        )));
    }
    if let Some(backing) = info["full-backing-filename"]
        .as_str()
        .or(info["backing-filename"].as_str())
    {
        if !is_template_image(backing, usable) {
            return Err(unprocessable(format!(
                "the image's backing file {backing} is not the image of a template you may \
                 use: upload a self-contained image (qemu-img convert -O qcow2 IN OUT)"
            )));
        }
    }
    if info["format-specific"]["data"]["data-file"].is_string() {
        return Err(unprocessable(
            "the image keeps its data in an external file: upload a self-contained image".into(),
        ));
    }
    Ok(format)
}

/// Whether `path` is (resolves to the same file as) the image of one of `templates`.
fn is_template_image(path: &str, templates: &[TemplateRow]) -> bool {
    let Ok(file) = std::fs::canonicalize(path) else {
        return false;
    };
    templates
        .iter()
        .any(|t| std::fs::canonicalize(&t.path).is_ok_and(|p| p == file))
}

/// Receives an upload into `tmp` within the caller's limit and checks it: its SHA-256
/// against `want`, then what `qemu-img` finds (its format, on success, and its size).
/// The caller removes `tmp` on any error.
async fn receive_checked(
    state: &AppState,
    caller: &super::auth::Caller,
    body: Body,
    tmp: &std::path::Path,
    progress: &mut Progress<'_>,
    want: &str,
) -> Result<(String, u64), Error> {
    let limit = upload_limit(state, caller).await?;
    if progress.total.is_some_and(|t| t > limit) {
        return Err(Error::TooLarge {
            limit: limit as usize,
        });
    }
    let (got, size) = receive(body, tmp, progress, limit).await?;
    progress.report("checking", size).await;
    if got != want {
        return Err(unprocessable(format!(
            "the upload's SHA-256 is {got}, not {want}: nothing was kept; send it again"
        )));
    }
    let usable: Vec<TemplateRow> = state
        .store
        .templates()
        .await?
        .into_iter()
        .filter(|t| access::sees_template(caller, t))
        .collect();
    let format = inspect(&tmp.display().to_string(), &usable).await?;
    Ok((format, size))
}

/// How many bytes this upload may be: the site's per-upload cap and, for users, what is
/// left of their quota (the sizes of the templates they own).
async fn upload_limit(state: &AppState, caller: &super::auth::Caller) -> Result<u64, Error> {
    let policy: super::audit::UploadPolicy = state.store.setting("uploads").await?;
    let cap = u64::from(policy.max_upload_mib) * MIB;
    if caller.sees_all() {
        return Ok(cap);
    }
    let used: u64 = state
        .store
        .templates()
        .await?
        .iter()
        .filter(|t| t.owner_id.as_deref() == Some(caller.id.as_str()))
        .map(|t| t.size_bytes.unwrap_or(0).max(0) as u64)
        .sum();
    let left = (u64::from(policy.user_quota_mib) * MIB).saturating_sub(used);
    Ok(cap.min(left))
}

/// The client's SHA-256 of the image, lower-cased: 64 hex digits, or 400.
fn checksum(sha256: &str) -> Result<String, Error> {
    let want = sha256.to_ascii_lowercase();
    if want.len() != 64 || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::BadRequest("sha256 must be 64 hex digits".into()));
    }
    Ok(want)
}

/// Where new template images go, uploaded or made from a guest: the first template
/// directory (409 when none is configured).
pub(super) fn template_dir(state: &AppState) -> Result<&std::path::Path, Error> {
    state
        .image_dirs
        .first()
        .map(std::path::PathBuf::as_path)
        .ok_or_else(|| Error::Conflict {
            message: "no template directory is configured (image_dirs)".into(),
            details: None,
        })
}

/// The upload's size from its `Content-Length`, when the client sent a readable one.
fn content_length(req: &poem::Request) -> Option<u64> {
    req.headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Renames the checked upload `tmp` into place as `dest`, never over an existing file;
/// on failure `tmp` is removed, so nothing of the upload is left.
async fn keep(tmp: &std::path::Path, dest: &std::path::Path) -> Result<(), Error> {
    if dest.exists() {
        let _ = tokio::fs::remove_file(tmp).await;
        return Err(Error::Conflict {
            message: format!("{} exists; choose another name", dest.display()),
            details: None,
        });
    }
    if let Err(e) = tokio::fs::rename(tmp, dest).await {
        let _ = tokio::fs::remove_file(tmp).await;
        return Err(Error::Unavailable(format!("keeping the image: {e}")));
    }
    Ok(())
}

pub struct ImageApi;

#[OpenApi(tag = "super::system::Tag::Resources")]
impl ImageApi {
    /// Upload a new template's image (qcow2 or raw), streamed: checked against `sha256`
    /// and inspected before anything is kept, then registered as template `name`.
    #[oai(
        path = "/templates/:name/image",
        method = "put",
        operation_id = "template_upload"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        name: Path<String>,
        os_type: Query<OsType>,
        /// SHA-256 of the image, hex: the upload is refused unless it matches.
        sha256: Query<String>,
        #[oai(validator(minimum(value = "16"), maximum(value = "1048576")))] min_memory_mib: Query<
            Option<u32>,
        >,
        body: Binary<Body>,
        req: &poem::Request,
    ) -> ApiResult<Uploaded> {
        super::check_name("template", &name)?;
        let want = checksum(&sha256)?;
        super::resources::refuse_taken_name(&state, &auth.0, &name).await?;
        let dir = template_dir(&state)?;
        // The file is named by the new template's id: a path nobody can guess or choose.
        let id = new_id();
        let tmp = dir.join(format!(".{id}.upload"));
        let mut progress = Progress {
            store: &state.store,
            name: &name.0,
            requested_by: &auth.0.name,
            requested_by_id: &auth.0.id,
            total: content_length(req),
            reported: None,
        };
        let checked = receive_checked(&state, &auth.0, body.0, &tmp, &mut progress, &want).await;
        let (format, size) = match checked {
            Ok(v) => v,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                progress.report("refused", 0).await;
                return Err(e.into());
            }
        };
        let dest = dir.join(format!("{id}.{format}"));
        keep(&tmp, &dest).await?;
        let row = TemplateRow {
            id,
            name: name.0.clone(),
            path: dest.display().to_string(),
            os_type: match os_type.0 {
                OsType::Linux => "linux".into(),
                OsType::Windows => "windows".into(),
            },
            min_memory_mib: i64::from(min_memory_mib.0.unwrap_or(64)),
            created_at: now_ms(),
            os_init_profile: None,
            owner_id: Some(auth.0.id.clone()),
            public: auth.0.sees_all(),
            sha256: Some(want),
            size_bytes: Some(size as i64),
            description: None,
        };
        if let Err(e) = state.store.insert_template(&row).await {
            let _ = tokio::fs::remove_file(&dest).await;
            progress.report("refused", 0).await;
            return Err(Error::from(e).into());
        }
        progress.report("registered", size).await;
        Ok(Uploaded::Created(Json(template_view(row))))
    }

    /// Download a template's image, streamed.
    #[oai(
        path = "/templates/:name/image",
        method = "get",
        operation_id = "template_download"
    )]
    async fn download(
        &self,
        auth: Auth,
        state: Data<&AppState>,
        name: Path<String>,
    ) -> ApiResult<Download> {
        let t = state
            .store
            .template(&name)
            .await?
            .filter(|t| access::sees_template(&auth.0, t))
            .ok_or_else(|| Error::not_found("template", name.0.clone()))?;
        let file = tokio::fs::File::open(&t.path)
            .await
            .map_err(|e| Error::Conflict {
                message: format!("the image {} cannot be read on this host: {e}", t.path),
                details: None,
            })?;
        Ok(Download::Ok(Binary(Body::from_async_read(file)), t.sha256))
    }
}

/// An upload's progress, as `template.upload` events on the event stream: whoever follows
/// `GET /events` (the uploader sees their own) watches the bytes arrive and the checks.
struct Progress<'a> {
    store: &'a crate::controller::store::Store,
    name: &'a str,
    requested_by: &'a str,
    requested_by_id: &'a str,
    /// From `Content-Length`, when the client sent one.
    total: Option<u64>,
    reported: Option<(u64, std::time::Instant)>,
}

impl Progress<'_> {
    /// Reports `stage` with `received` bytes so far. While receiving, only every 5% or
    /// every second, so a large image makes dozens of events, not thousands.
    async fn report(&mut self, stage: &str, received: u64) {
        let percent = self
            .total
            .filter(|t| *t > 0)
            .map(|t| (received.min(t) * 100 / t) as u8);
        // The last bytes always report, so a follower sees the upload reach 100%.
        if stage == "receiving" && self.total != Some(received) {
            if let Some((last, at)) = self.reported {
                let step = self.total.map_or(u64::MAX, |t| t / 20);
                if received.saturating_sub(last) < step && at.elapsed().as_secs() < 1 {
                    return;
                }
            }
        }
        self.reported = Some((received, std::time::Instant::now()));
        let data = serde_json::json!({
            "requested_by": self.requested_by, "requested_by_id": self.requested_by_id, "stage": stage, "received_bytes": received,
            "total_bytes": self.total, "percent": percent,
        });
        if let Err(e) = self
            .store
            .record_event("template.upload", self.name, &data)
            .await
        {
            tracing::debug!(template = self.name, "upload progress not recorded: {e}");
        }
    }
}

/// A node's image of template `id` (`node_images::receive`), streamed into a part file
/// beside `dest`, then renamed to it; its SHA-256 and size. Its progress goes out as
/// `template.upload` events, by the node.
pub(super) async fn receive_from_node(
    state: &AppState,
    node: &str,
    id: &str,
    body: Body,
    total: Option<u64>,
    dest: &std::path::Path,
) -> Result<(String, u64), String> {
    let dir = dest.parent().unwrap_or(std::path::Path::new("/"));
    let tmp = dir.join(format!(".{id}.upload"));
    let _ = tokio::fs::remove_file(&tmp).await; // a transfer that broke off
    let by = format!("node {node}");
    let mut progress = Progress {
        store: &state.store,
        name: id,
        requested_by: &by,
        requested_by_id: "",
        total,
        reported: None,
    };
    let got = receive(body, &tmp, &mut progress, u64::MAX)
        .await
        .map_err(|e| e.to_string());
    let kept = match got {
        Ok(g) => tokio::fs::rename(&tmp, dest)
            .await
            .map(|()| g)
            .map_err(|e| format!("keeping the image: {e}")),
        Err(e) => Err(e),
    };
    if kept.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    kept
}

/// The SHA-256 and size of the file at `path`.
pub(super) async fn sha256_of(path: &std::path::Path) -> Result<(String, u64), String> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    let (mut hash, mut size, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            return Ok((hex::encode(hash.finalize()), size));
        }
        size += n as u64;
        hash.update(&buf[..n]);
    }
}

/// Removes the temporary files of uploads a stopped controller was receiving.
pub fn sweep(dirs: &[std::path::PathBuf]) {
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.ends_with(".upload") {
                tracing::info!(file = %e.path().display(), "removing an interrupted upload");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Streams `body` into `path` (created 0600), hashing it; its SHA-256 and size.
async fn receive(
    body: Body,
    path: &std::path::Path,
    progress: &mut Progress<'_>,
    limit: u64,
) -> Result<(String, u64), Error> {
    use futures::StreamExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|e| Error::Unavailable(format!("writing the upload: {e}")))?;
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut stream = body.into_bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::BadRequest(format!("the upload broke off: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(Error::TooLarge {
                limit: limit as usize,
            });
        }
        hash.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| Error::Unavailable(format!("writing the upload: {e}")))?;
        progress.report("receiving", size).await;
    }
    file.flush()
        .await
        .map_err(|e| Error::Unavailable(format!("writing the upload: {e}")))?;
    Ok((hex::encode(hash.finalize()), size))
}
