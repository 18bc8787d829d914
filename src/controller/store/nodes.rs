//! Node rows: identity, last reported facts, liveness.

use super::{events, Store, StoreError, Tx};
use crate::model::{now_ms, NodeFacts};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    pub facts: String,
    pub accept_auto: bool,
    pub online: bool,
    pub last_seen: i64,
    pub last_seen_local: i64,
    pub offline_since: Option<i64>,
    pub created_at: i64,
    pub foreign_domains: String,
    /// JSON argv of its fence command (HA, S74); its program is a file in the
    /// controller's fence directory.
    pub fence_command: Option<String>,
    /// When its fence was last confirmed.
    pub fenced_at: Option<i64>,
}

impl NodeRow {
    /// Its fence command, as given.
    pub fn fence(&self) -> Option<Vec<String>> {
        self.fence_command
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
    }
}

impl NodeRow {
    pub fn node_facts(&self) -> NodeFacts {
        serde_json::from_str(&self.facts).unwrap_or_default()
    }
}

macro_rules! node_cols {
    () => {
        "id, hostname, facts, accept_auto, online, last_seen, last_seen_local, offline_since, created_at, foreign_domains, fence_command, fenced_at"
    };
}

impl Store {
    /// What node `id` claims beyond what was accepted (None: an unknown node, or one
    /// that has not reported yet).
    pub async fn node_claims(
        &self,
        id: &str,
    ) -> Result<Option<(super::claims::Accepted, super::claims::Held)>, StoreError> {
        let row: Option<(Option<String>, Option<String>)> =
            sqlx::query_as("SELECT accepted, claimed FROM nodes WHERE id = ?")
                .bind(id)
                .fetch_optional(self.pool())
                .await?;
        let Some((Some(accepted), Some(claimed))) = row else {
            return Ok(None);
        };
        let accepted: super::claims::Accepted = serde_json::from_str(&accepted)?;
        let claimed: NodeFacts = serde_json::from_str(&claimed)?;
        let (_, held) = accepted.bound(&claimed);
        Ok(Some((accepted, held)))
    }

    /// Accepts node `id`'s latest claims (an administrator's act); false when it has none.
    /// A disk-image directory that would hold a template directory stays refused.
    pub async fn accept_node_claims(
        &self,
        id: &str,
        image_dirs: &[std::path::PathBuf],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT claimed FROM nodes WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((Some(claimed),)) = row else {
            return Ok(false);
        };
        let claim: NodeFacts = serde_json::from_str(&claimed)?;
        let mut accepted = super::claims::Accepted::first(&claim, image_dirs);
        if accepted.storage_dir.is_empty() {
            // A directory that would hold the templates: the one accepted before stays.
            let before: Option<(Option<String>,)> =
                sqlx::query_as("SELECT accepted FROM nodes WHERE id = ?")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((Some(b),)) = before {
                let b: super::claims::Accepted = serde_json::from_str(&b)?;
                accepted.storage_dir = b.storage_dir;
            }
        }
        let (facts, _) = accepted.bound(&claim);
        sqlx::query("UPDATE nodes SET accepted = ?, facts = ? WHERE id = ?")
            .bind(serde_json::to_string(&accepted)?)
            .bind(serde_json::to_string(&facts)?)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await?;
        Ok(true)
    }

    /// Records a heartbeat; returns true when the node came (back) online. The node's
    /// claims are kept as sent (`claimed`) and as what readers use (`facts`): bounded by
    /// what was accepted (see [`super::claims`]); its first claims become the accepted ones.
    pub async fn heartbeat(
        &self,
        id: &str,
        claim: &NodeFacts,
        at_ms: i64,
        image_dirs: &[std::path::PathBuf],
    ) -> Result<bool, StoreError> {
        use super::claims::Accepted;
        let mut tx = self.begin().await?;
        let now = now_ms();
        let was: Option<(bool, Option<String>)> =
            sqlx::query_as("SELECT online, accepted FROM nodes WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        let accepted = match was.as_ref().and_then(|(_, a)| a.as_deref()) {
            Some(a) => serde_json::from_str(a)?,
            None => Accepted::first(claim, image_dirs),
        };
        let (facts, _held) = accepted.bound(claim);
        let json = serde_json::to_string(&facts)?;
        sqlx::query(
            "INSERT INTO nodes (id, hostname, facts, online, last_seen, last_seen_local, created_at, \
             accepted, claimed) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET \
             hostname = excluded.hostname, facts = excluded.facts, online = 1, \
             last_seen = excluded.last_seen, last_seen_local = excluded.last_seen_local, \
             offline_since = NULL, accepted = excluded.accepted, claimed = excluded.claimed",
        )
        .bind(id)
        .bind(&facts.hostname)
        .bind(&json)
        .bind(at_ms)
        .bind(now)
        .bind(now)
        .bind(serde_json::to_string(&accepted)?)
        .bind(serde_json::to_string(claim)?)
        .execute(&mut *tx)
        .await?;
        let came_online = !matches!(was, Some((true, _)));
        if came_online {
            events::append(
                &mut tx,
                "node.state",
                id,
                &serde_json::json!({"node_id": id, "online": true, "hostname": facts.hostname}),
            )
            .await?;
        }
        self.commit(tx).await?;
        Ok(came_online)
    }

    /// Marks nodes silent since `deadline` offline and their guests `unknown` (S95).
    pub async fn expire_nodes(&self, deadline: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.begin().await?;
        let stale: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM nodes WHERE online = 1 AND last_seen_local < ?")
                .bind(deadline)
                .fetch_all(&mut *tx)
                .await?;
        let now = now_ms();
        for (id,) in &stale {
            sqlx::query("UPDATE nodes SET online = 0, offline_since = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            // Operations whose step is out on the node say so; a cancel abandons it.
            sqlx::query(
                "UPDATE operations SET message = ? WHERE inflight_node = ? \
                 AND state IN ('pending', 'running', 'undoing')",
            )
            .bind(format!(
                "waiting for node {id}, offline since {}",
                crate::model::rfc3339(now)
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let guests: Vec<(String,)> = sqlx::query_as(
                "SELECT id FROM guests WHERE node_id = ? AND state NOT IN ('unknown', 'error')",
            )
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("UPDATE guests SET state = 'unknown', updated_at = ? WHERE node_id = ? AND state NOT IN ('unknown', 'error')")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            events::append(
                &mut tx,
                "node.state",
                id,
                &serde_json::json!({"node_id": id, "online": false}),
            )
            .await?;
            for (g,) in guests {
                events::append(
                    &mut tx,
                    "guest.state",
                    &g,
                    &serde_json::json!({"guest_id": g, "state": "unknown"}),
                )
                .await?;
            }
        }
        self.commit(tx).await?;
        Ok(stale.into_iter().map(|s| s.0).collect())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        Ok(sqlx::query_as::<_, NodeRow>(concat!(
            "SELECT ",
            node_cols!(),
            " FROM nodes ORDER BY hostname, id"
        ))
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn node(&self, id: &str) -> Result<Option<NodeRow>, StoreError> {
        Ok(sqlx::query_as::<_, NodeRow>(concat!(
            "SELECT ",
            node_cols!(),
            " FROM nodes WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn set_node_accept_auto(&self, id: &str, accept: bool) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE nodes SET accept_auto = ? WHERE id = ?")
            .bind(accept)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }
}

/// An enrolled node's credential: only the digest of its secret.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeCredential {
    pub node_id: String,
    pub secret_sha256: String,
}

impl Store {
    /// Records (or replaces, `rotate`) node `id`'s credential. Without `rotate`, an
    /// existing one is kept and `false` is answered.
    pub async fn set_node_credential(
        &self,
        id: &str,
        secret_sha256: &str,
        rotate: bool,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let sql = if rotate {
            "INSERT INTO node_credentials (node_id, secret_sha256, created_at, rotated_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT(node_id) DO UPDATE SET \
             secret_sha256 = excluded.secret_sha256, rotated_at = excluded.rotated_at"
        } else {
            "INSERT INTO node_credentials (node_id, secret_sha256, created_at, rotated_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT(node_id) DO NOTHING"
        };
        let mut tx = self.begin().await?;
        let done = sqlx::query(sql)
            .bind(id)
            .bind(secret_sha256)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        self.commit(tx).await?;
        Ok(done)
    }

    /// Forgets node `id`'s credential; `false` if it had none.
    pub async fn drop_node_credential(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query("DELETE FROM node_credentials WHERE node_id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        self.commit(tx).await?;
        Ok(gone)
    }

    /// Whether node `id` is enrolled.
    pub async fn node_enrolled(&self, id: &str) -> Result<bool, StoreError> {
        let r: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM node_credentials WHERE node_id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.is_some())
    }

    /// The digest of node `id`'s secret, if it is enrolled.
    pub async fn node_secret_sha256(&self, id: &str) -> Result<Option<String>, StoreError> {
        let r: Option<(String,)> =
            sqlx::query_as("SELECT secret_sha256 FROM node_credentials WHERE node_id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(r.map(|(h,)| h))
    }

    /// Every enrolled node's credential, by id.
    pub async fn node_credentials(&self) -> Result<Vec<NodeCredential>, StoreError> {
        Ok(
            sqlx::query_as("SELECT node_id, secret_sha256 FROM node_credentials ORDER BY node_id")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

/// Sets whether node `id` takes automatically placed guests; its previous setting.
pub async fn set_accept_auto_in(
    tx: &mut Tx<'_>,
    id: &str,
    accept: bool,
) -> Result<Option<bool>, StoreError> {
    let before: Option<(bool,)> = sqlx::query_as("SELECT accept_auto FROM nodes WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
    sqlx::query("UPDATE nodes SET accept_auto = ? WHERE id = ?")
        .bind(accept)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(before.map(|b| b.0))
}

/// Node `id`'s row, read in `tx`.
pub async fn node_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<NodeRow>, StoreError> {
    Ok(
        sqlx::query_as::<_, NodeRow>(concat!("SELECT ", node_cols!(), " FROM nodes WHERE id = ?"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?,
    )
}
