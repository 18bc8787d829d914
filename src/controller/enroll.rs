//! Node enrollment: each node gets its own Redis user, and the controller listens only to
//! the nodes it enrolled.
//!
//! The flow:
//! 1. An administrator enrolls a node (`POST /nodes`, `corral node enroll <id>`; `corral
//!    up` enrolls its local node itself at every start). The controller mints a secret,
//!    stores its SHA-256, installs the node's Redis user (`transport::acl`) and answers
//!    the secret once, inside the `redis_url` the node is to use.
//! 2. Every [`SYNC_EVERY`] the sync loop makes Redis agree with the database: it installs
//!    users Redis does not have (Redis forgets `ACL SETUSER` users when it restarts) or
//!    has with an older digest, creates each enrolled node's stream and consumer group,
//!    deletes the data of each node's ended jobs (`transport::jobdata`), and removes the
//!    users, queues and streams of nodes no longer enrolled (a removed node).
//! 3. Ingest reads the streams of [`Enroller::nodes`] only; an event's stream names its
//!    sender, and the sender is checked against what the event is about (`ingest`).
//!
//! Rotating a credential (`POST /nodes/{id}/credential`) replaces the digest; Redis refuses
//! the old secret from then on, and the node needs its new `redis_url`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{watch, Mutex};

use super::store::{Store, StoreError};
use crate::transport::{self, acl};

/// How often Redis is brought in line with the enrolled nodes.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("node id {0:?} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or a digit")]
    InvalidId(String),
    #[error("node {0} is already enrolled; POST /nodes/{0}/credential gives it a new secret")]
    Enrolled(String),
    #[error("node {0} is not enrolled; enroll it with POST /nodes")]
    NotEnrolled(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A node's new credential, answered once.
#[derive(Debug, Clone)]
pub struct Credential {
    pub node_id: String,
    pub user: String,
    pub secret: String,
    /// The controller's Redis URL with the node's user and secret in it.
    pub redis_url: String,
}

pub struct Enroller {
    store: Store,
    redis_url: String,
    conn: Mutex<Option<ConnectionManager>>,
    /// The digest installed in Redis per node, as far as this process knows.
    installed: Mutex<HashMap<String, String>>,
    nodes: watch::Sender<Arc<Vec<String>>>,
}

impl Enroller {
    pub async fn new(store: Store, redis_url: &str) -> Result<Arc<Self>, StoreError> {
        let ids = node_ids(&store).await?;
        Ok(Arc::new(Enroller {
            store,
            redis_url: redis_url.to_string(),
            conn: Mutex::new(None),
            installed: Mutex::new(HashMap::new()),
            nodes: watch::channel(Arc::new(ids)).0,
        }))
    }

    /// The enrolled nodes, kept current: the streams ingest reads.
    pub fn nodes(&self) -> watch::Receiver<Arc<Vec<String>>> {
        self.nodes.subscribe()
    }

    /// Enrolls node `id` (`rotate = false`: refused if it is already), or gives an enrolled
    /// one a new secret (`rotate = true`: refused if it is not).
    pub async fn enroll(&self, id: &str, rotate: bool) -> Result<Credential, EnrollError> {
        if !acl::valid_node_id(id) {
            return Err(EnrollError::InvalidId(id.to_string()));
        }
        if rotate && !self.store.node_enrolled(id).await? {
            return Err(EnrollError::NotEnrolled(id.to_string()));
        }
        let secret = acl::new_secret();
        let digest = acl::digest(&secret);
        if !self.store.set_node_credential(id, &digest, rotate).await? {
            return Err(EnrollError::Enrolled(id.to_string()));
        }
        self.nodes
            .send_replace(Arc::new(node_ids(&self.store).await?));
        // Installed now when Redis answers; otherwise the sync loop does it once it does
        // (and a Redis that was away has no connection left from the old secret).
        match self.install(id, &digest).await {
            Err(e) => tracing::warn!(node = id, "installing the node's Redis user: {e}; retrying"),
            Ok(()) if rotate => self.cut_old_connections(id).await,
            Ok(()) => {}
        }
        Ok(Credential {
            node_id: id.to_string(),
            user: acl::user_name(id),
            redis_url: acl::node_url(&self.redis_url, id, &secret),
            secret,
        })
    }

    /// Revokes node `id`'s credential; the next sync removes its Redis user (closing its
    /// connections) and stream.
    pub async fn revoke(&self, id: &str) -> Result<(), EnrollError> {
        if !self.store.drop_node_credential(id).await? {
            return Err(EnrollError::NotEnrolled(id.to_string()));
        }
        self.nodes
            .send_replace(Arc::new(node_ids(&self.store).await?));
        self.sync().await
    }

    /// `corral up`'s own node: enrolled, or given a new secret, at every start (the secret
    /// is never stored, and the node runs in this process).
    pub async fn enroll_local(&self, id: &str) -> Result<Credential, EnrollError> {
        let rotate = self.store.node_enrolled(id).await?;
        self.enroll(id, rotate).await
    }

    async fn conn(&self) -> Result<ConnectionManager, transport::TransportError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = transport::connect(&self.redis_url).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// After a rotation: connections made with the old secret are closed, as a revocation
    /// closes them (the node logs in again with its new secret). A failure is retried once
    /// Redis answers, and logged: the old secret itself is already refused.
    async fn cut_old_connections(&self, id: &str) {
        for _ in 0..3 {
            match self.conn().await {
                Ok(mut conn) => match acl::kill_clients(&mut conn, id).await {
                    Ok(n) => {
                        tracing::info!(
                            node = id,
                            closed = n,
                            "closed the connections of the rotated credential"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!(
                        node = id,
                        "closing the rotated credential's connections: {e}"
                    ),
                },
                Err(e) => tracing::warn!(
                    node = id,
                    "closing the rotated credential's connections: {e}"
                ),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn install(&self, id: &str, digest: &str) -> Result<(), transport::TransportError> {
        let mut conn = self.conn().await?;
        acl::install(&mut conn, id, digest).await?;
        transport::ensure_groups(&mut conn, &[id.to_string()]).await?;
        self.installed
            .lock()
            .await
            .insert(id.to_string(), digest.to_string());
        Ok(())
    }

    /// Brings Redis in line with the database once (see the module docs).
    pub async fn sync(&self) -> Result<(), EnrollError> {
        let creds = self.store.node_credentials().await?;
        let ids: Vec<String> = creds.iter().map(|c| c.node_id.clone()).collect();
        if **self.nodes.borrow() != ids {
            self.nodes.send_replace(Arc::new(ids.clone()));
        }
        let step = async {
            let mut conn = self.conn().await?;
            let present: HashSet<String> = acl::installed(&mut conn).await?.into_iter().collect();
            for c in &creds {
                let known = self.installed.lock().await.get(&c.node_id).cloned();
                if !present.contains(&c.node_id) || known.as_deref() != Some(&c.secret_sha256) {
                    self.install(&c.node_id, &c.secret_sha256).await?;
                    tracing::info!(node = %c.node_id, "installed the node's Redis user");
                }
            }
            // Streams and groups Redis lost (a wipe) come back before ingest reads them.
            transport::ensure_groups(&mut conn, &ids).await?;
            // Ended jobs' arguments (secrets among them) leave Redis.
            for id in &ids {
                let swept = transport::jobdata::sweep(&mut conn, id).await?;
                if swept > 0 {
                    tracing::debug!(node = %id, swept, "deleted the data of ended jobs");
                }
            }
            let enrolled: HashSet<&String> = ids.iter().collect();
            for gone in present.iter().filter(|p| !enrolled.contains(p)) {
                transport::jobdata::purge(&mut conn, gone).await?;
                acl::remove(&mut conn, gone).await?;
                self.installed.lock().await.remove(gone);
                tracing::info!(node = %gone, "removed the Redis user of a node no longer enrolled");
            }
            Ok::<(), transport::TransportError>(())
        };
        if let Err(e) = step.await {
            // Redis is away: the next round tries again; nothing is lost meanwhile.
            tracing::debug!("syncing node users with Redis: {e}");
            *self.conn.lock().await = None;
        }
        Ok(())
    }

    /// Runs [`Enroller::sync`] every [`SYNC_EVERY`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.sync().await {
                tracing::warn!("node enrollment sync: {e}");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(SYNC_EVERY) => {}
            }
        }
    }
}

async fn node_ids(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(store
        .node_credentials()
        .await?
        .into_iter()
        .map(|c| c.node_id)
        .collect())
}
