//! Template images reach the nodes that need them.
//!
//! A guest's system disk is a qcow2 overlay on its template's image. When this node sees
//! that image in one of its image directories (a shared template directory, or the
//! controller's own host), the overlay is made on it as it is. When it does not, the node
//! fetches the image from the controller (`GET /node/v1/templates/{id}/image`, with the
//! secret of its Redis credential) into its template cache, once, and every later guest
//! of that template on this node is made on the cached copy:
//!
//! 1. one fetch at a time per node, so two guests of a new template wait for one copy;
//! 2. the body is streamed to `.<id>.part` in the cache while it is hashed, never held;
//!    its bytes are the creation's progress ("fetching the template image: N%");
//! 3. the SHA-256 must be the template's (from the job, else the controller's header);
//!    a mismatch keeps nothing;
//! 4. the part is renamed to `<id>.img`: a cached image is complete by its name, and a
//!    node killed mid-fetch leaves a part that the next fetch starts over (and that the
//!    node removes when it starts).
//!
//! Template images never change under an id (an upload is a new template), so the cache
//! needs no invalidation; a deleted template's copy stays until removed by hand.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::actions::ActionError;
use crate::model::TemplateSource;

/// Hears a fetch's bytes received and its total.
pub type Progress<'a> = dyn Fn(u64, Option<u64>) + Send + Sync + 'a;

/// Where and how this node fetches template images.
pub struct ImageSource {
    /// The controller's base URL, e.g. `http://controller:8080`.
    pub base_url: String,
    pub node_id: String,
    /// The secret of this node's Redis credential.
    pub secret: String,
    pub cache_dir: PathBuf,
    http: reqwest::Client,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl ImageSource {
    /// A source from the node's settings: None without a controller URL, or without a
    /// password in its Redis URL (a node that was never enrolled cannot prove who it is).
    pub fn new(
        controller_url: Option<&str>,
        redis_url: &str,
        node_id: &str,
        cache_dir: PathBuf,
    ) -> Option<ImageSource> {
        let base_url = controller_url?.trim_end_matches('/').to_string();
        let secret = crate::transport::acl::node_secret(redis_url)?;
        Some(ImageSource {
            base_url,
            node_id: node_id.to_string(),
            secret,
            cache_dir,
            http: reqwest::Client::new(),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    pub(super) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Where this node keeps template `id`'s image (complete by its name).
    pub fn cache_path(&self, id: &str) -> std::path::PathBuf {
        self.cache_dir.join(format!("{id}.img"))
    }

    /// Removes what a node killed mid-fetch left.
    pub fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.cache_dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.ends_with(".part") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The cached copy of template `t`, fetched first when this node has none;
    /// `progress` hears the bytes received and the total, when the controller said it.
    pub async fn cached(
        &self,
        t: &TemplateSource,
        progress: &Progress<'_>,
    ) -> Result<String, ActionError> {
        if t.id.is_empty() || !t.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(ActionError::Permanent(format!(
                "{:?} is not a template id",
                t.id
            )));
        }
        let dest = self.cache_dir.join(format!("{}.img", t.id));
        let _one = self.one_at_a_time.lock().await;
        if !dest.exists() {
            self.fetch(t, &dest, progress).await?;
        }
        Ok(dest.display().to_string())
    }

    /// Fetches template `t`'s image into `dest`: requested from the controller, streamed
    /// into a part file while hashed, checked against the expected SHA-256, then renamed
    /// into place.
    async fn fetch(
        &self,
        t: &TemplateSource,
        dest: &Path,
        progress: &Progress<'_>,
    ) -> Result<(), ActionError> {
        crate::modes::private_dir(&self.cache_dir)
            .map_err(|e| fetch_failed(&t.id, "creating the cache", e))?;
        let resp = self.request(t).await?;
        let want = expected_sha256(t, &resp);
        let part = self.cache_dir.join(format!(".{}.part", t.id));
        let got = receive(t, resp, &part, progress).await?;
        if let Some(want) = want.filter(|w| *w != got) {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(ActionError::Permanent(format!(
                "template {} arrived with SHA-256 {got}, not {want}: nothing kept",
                t.id
            )));
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| fetch_failed(&t.id, "keeping the image", e))?;
        tracing::info!(template = t.id, sha256 = got, "template image cached");
        Ok(())
    }

    /// Asks the controller for template `t`'s image: its answer when it sends the image.
    /// A refused credential, an unknown template or a 409 (its message passed on) will
    /// not change on a retry and are permanent; any other status is worth retrying.
    async fn request(&self, t: &TemplateSource) -> Result<reqwest::Response, ActionError> {
        let url = format!("{}/node/v1/templates/{}/image", self.base_url, t.id);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.secret)
            .header("X-Corral-Node", &self.node_id)
            .send()
            .await
            .map_err(|e| fetch_failed(&t.id, "reaching the controller", e))?;
        match resp.status().as_u16() {
            200 => Ok(resp),
            401 => Err(ActionError::Permanent(
                "the controller refused this node's credential for a template image".into(),
            )),
            404 => Err(ActionError::Permanent(format!(
                "the controller has no template {}",
                t.id
            ))),
            409 => {
                let why = resp.text().await.unwrap_or_default();
                Err(ActionError::Permanent(why))
            }
            s => Err(ActionError::Transient(format!(
                "fetching template {}: the controller answered {s}",
                t.id
            ))),
        }
    }
}

/// The SHA-256 the image must have: the job's, else the controller's
/// `X-Checksum-Sha256`; none when neither knows it.
fn expected_sha256(t: &TemplateSource, resp: &reqwest::Response) -> Option<String> {
    t.sha256.clone().or_else(|| {
        resp.headers()
            .get("x-checksum-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    })
}

/// Streams `resp`'s body into `part` (created or truncated), hashing it and telling
/// `progress` of each chunk: the SHA-256 of what arrived, once it is on disk. A broken
/// transfer leaves the part for the next fetch to start over.
async fn receive(
    t: &TemplateSource,
    resp: reqwest::Response,
    part: &Path,
    progress: &Progress<'_>,
) -> Result<String, ActionError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(crate::modes::FILE)
        .open(part)
        .await
        .map_err(|e| fetch_failed(&t.id, "writing the cache", e))?;
    let total = resp.content_length();
    let mut received = 0u64;
    let mut hash = Sha256::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| fetch_failed(&t.id, "the transfer broke off", e))?;
        received += chunk.len() as u64;
        progress(received, total);
        hash.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| fetch_failed(&t.id, "writing the cache", e))?;
    }
    file.sync_all()
        .await
        .map_err(|e| fetch_failed(&t.id, "writing the cache", e))?;
    Ok(hex::encode(hash.finalize()))
}

/// A fetch of template `id` failed at `what`; the next try starts over.
fn fetch_failed<E: std::error::Error + Send + Sync + 'static>(
    id: &str,
    what: &str,
    e: E,
) -> ActionError {
    ActionError::retry(format!("fetching template {id}: {what}"), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_comes_from_the_redis_url() {
        let s = ImageSource::new(
            Some("http://c:8080/"),
            "redis://corral-node-a:s3cret@127.0.0.1:6379/",
            "a",
            PathBuf::from("/tmp"),
        )
        .unwrap();
        assert_eq!(
            (s.base_url.as_str(), s.secret.as_str()),
            ("http://c:8080", "s3cret")
        );
        assert!(ImageSource::new(None, "redis://u:p@h/", "a", PathBuf::new()).is_none());
        assert!(ImageSource::new(Some("http://c"), "redis://h/", "a", PathBuf::new()).is_none());
    }

    #[tokio::test]
    async fn a_cached_image_is_used_and_a_part_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let src = ImageSource::new(
            // Nothing listens there: a fetch would fail.
            Some("http://127.0.0.1:9"),
            "redis://u:p@h/",
            "a",
            dir.path().to_path_buf(),
        )
        .unwrap();
        std::fs::write(dir.path().join("t-1.img"), b"x").unwrap();
        std::fs::write(dir.path().join(".t-2.part"), b"half").unwrap();
        let t = |id: &str| TemplateSource {
            id: id.into(),
            sha256: None,
        };
        let quiet = |_, _| {};
        let got = src.cached(&t("t-1"), &quiet).await.unwrap();
        assert_eq!(got, dir.path().join("t-1.img").display().to_string());
        assert!(src
            .cached(&t("t-2"), &quiet)
            .await
            .is_err_and(|e| !e.is_permanent()));
        assert!(matches!(
            src.cached(&t("../x"), &quiet).await,
            Err(ActionError::Permanent(_))
        ));
        src.sweep();
        assert!(!dir.path().join(".t-2.part").exists());
        assert!(dir.path().join("t-1.img").exists());
    }
}
