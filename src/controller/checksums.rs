//! Every template gets its image's SHA-256 and size, so the template list is a downloads
//! list (S43) with checksums, and nodes that fetch an image (`node::fetch`) can check
//! what arrived.
//!
//! Images corral writes (uploads, templates from guests) are hashed as they are written.
//! A template registered by path is hashed here, in the background, so registering a
//! large image answers at once: every [`EVERY`], each template without a checksum whose
//! image this host can read is hashed, one at a time on a blocking thread, and recorded
//! (`set_template_checksum` keeps a checksum already there). An image this host cannot
//! read (it lives only on a node's template directory) stays without one and is tried
//! again later. Template images are not changed in place, so one hash is enough.

use std::path::PathBuf;
use std::time::Duration;

use super::store::Store;

/// How often templates without a checksum are looked for.
pub const EVERY: Duration = Duration::from_secs(10);

/// Hashes what has no checksum yet; the number of templates hashed.
pub async fn fill(store: &Store) -> usize {
    let templates = match store.templates().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("listing templates to checksum: {e}");
            return 0;
        }
    };
    let mut done = 0;
    for t in templates.into_iter().filter(|t| t.sha256.is_none()) {
        let path = PathBuf::from(&t.path);
        if !path.is_file() {
            continue;
        }
        let hashed = tokio::task::spawn_blocking(move || crate::digest::sha256_file(&path)).await;
        match hashed {
            Ok(Ok((sum, size))) => match store.set_template_checksum(&t.id, &sum, size).await {
                Ok(()) => {
                    tracing::info!(template = t.name, sha256 = sum, "template checksummed");
                    done += 1;
                }
                Err(e) => tracing::warn!(template = t.name, "recording a checksum: {e}"),
            },
            Ok(Err(e)) => tracing::info!(template = t.name, "not checksummed: {e}"),
            Err(e) => tracing::warn!(template = t.name, "checksum task: {e}"),
        }
    }
    done
}

/// Runs [`fill`] every [`EVERY`] until `shutdown`.
pub async fn run(store: Store, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        fill(&store).await;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
