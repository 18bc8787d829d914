//! Template images a node made reach the controller, and images of deleted templates
//! leave the node's cache.
//!
//! A template made from a guest is converted on the guest's node. When the controller's
//! template directory is not one of that node's image directories (another host), the
//! node converts into its own template cache (`<id>.img`, which then serves its own
//! guests of that template) and uploads the image to the controller
//! (`PUT /node/v1/templates/{id}/image`, with the secret of its Redis credential). The
//! controller accepts it only from the node that runs that conversion, keeps it in its
//! template directory and answers the SHA-256 it computed, which must be the node's. From
//! there every node fetches it as any other template (`node::fetch`).
//!
//! Deleting a template that corral wrote removes the controller's copy; each node drops
//! its cached copy at its next sweep (`template_sweep_secs`, and at start), which keeps
//! only the images of templates the controller still lists (`GET /node/v1/templates`).

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::actions::ActionError;
use super::fetch::ImageSource;

/// What the controller answers to an upload.
#[derive(Debug, serde::Deserialize)]
struct Received {
    sha256: String,
}

impl ImageSource {
    /// Uploads template `id`'s image at `path`, whose SHA-256 is `sha256`, to the
    /// controller.
    pub async fn publish(&self, id: &str, path: &Path, sha256: &str) -> Result<(), ActionError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| ActionError::retry(format!("opening {}", path.display()), e))?;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        let chunks = futures::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let url = format!("{}/node/v1/templates/{id}/image", self.base_url);
        let resp = self
            .http()
            .put(&url)
            .bearer_auth(&self.secret)
            .header("X-Corral-Node", &self.node_id)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(chunks.boxed()))
            .send()
            .await
            .map_err(|e| ActionError::retry("uploading the image to the controller", e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let why = resp.text().await.unwrap_or_default();
            let msg = format!("the controller refused the image ({status}): {why}");
            return Err(if status >= 500 {
                ActionError::Transient(msg)
            } else {
                ActionError::Permanent(msg)
            });
        }
        let got: Received = resp
            .json()
            .await
            .map_err(|e| ActionError::retry("reading the controller's answer", e))?;
        if got.sha256 != sha256 {
            return Err(ActionError::Permanent(format!(
                "the controller received SHA-256 {}, not {sha256}",
                got.sha256
            )));
        }
        tracing::info!(template = id, "template image published to the controller");
        Ok(())
    }

    /// Removes cached images of templates the controller no longer lists; how many.
    pub async fn sweep_deleted(&self) -> Result<usize, ActionError> {
        let url = format!("{}/node/v1/templates", self.base_url);
        let resp = self
            .http()
            .get(&url)
            .bearer_auth(&self.secret)
            .header("X-Corral-Node", &self.node_id)
            .send()
            .await
            .map_err(|e| ActionError::retry("listing the controller's templates", e))?;
        if !resp.status().is_success() {
            return Err(ActionError::Transient(format!(
                "listing the controller's templates: {}",
                resp.status()
            )));
        }
        let ids: Vec<String> = resp
            .json()
            .await
            .map_err(|e| ActionError::retry("reading the controller's templates", e))?;
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return Ok(0);
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(id) = name.strip_suffix(".img") else {
                continue;
            };
            if !ids.iter().any(|i| i == id) && std::fs::remove_file(e.path()).is_ok() {
                tracing::info!(template = id, "cached image of a deleted template removed");
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The cache sweep, at start and every `every` until shutdown.
pub async fn sweep_loop(
    images: std::sync::Arc<ImageSource>,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                if let Err(e) = images.sweep_deleted().await {
                    tracing::debug!("template cache sweep: {e}");
                }
            }
        }
    }
}
