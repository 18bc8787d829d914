//! Users and API tokens. Passwords are argon2id hashes; tokens are stored as SHA-256
//! digests, so a copy of the database gives no working credential.

use super::{Store, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at: i64,
}

impl Store {
    pub async fn user_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    pub async fn insert_user(&self, u: &UserRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO users (id, name, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?, ?)")
            .bind(&u.id)
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(u.is_admin)
            .bind(u.created_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, password_hash, is_admin, created_at FROM users WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Stores a token's digest; `id` names it for listing and revoking.
    pub async fn insert_token(&self, t: &TokenRow, hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (hash, id, user_id, name, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(&t.id)
        .bind(&t.user_id)
        .bind(&t.name)
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    /// The user and token id behind a bearer token's digest, unless it has expired.
    pub async fn user_by_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<(UserRow, String)>, StoreError> {
        let row: Option<(String, String, String, bool, i64, String)> = sqlx::query_as(
            "SELECT u.id, u.name, u.password_hash, u.is_admin, u.created_at, t.id \
             FROM tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.hash = ? AND (t.expires_at IS NULL OR t.expires_at > ?)",
        )
        .bind(hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        Ok(
            row.map(|(id, name, password_hash, is_admin, created_at, token)| {
                (
                    UserRow {
                        id,
                        name,
                        password_hash,
                        is_admin,
                        created_at,
                    },
                    token,
                )
            }),
        )
    }

    /// Whether the token with this digest exists and has not expired.
    pub async fn token_valid(&self, hash: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self.user_by_token(hash, now).await?.is_some())
    }

    /// A user's tokens, newest first (expired ones included, until purged).
    pub async fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRow>, StoreError> {
        Ok(sqlx::query_as::<_, TokenRow>(
            "SELECT id, user_id, name, created_at, expires_at FROM tokens \
             WHERE user_id = ? ORDER BY created_at DESC, id",
        )
        .bind(user_id)
        .fetch_all(self.pool())
        .await?)
    }

    /// Revokes one of a user's tokens; false when that user has no such token.
    pub async fn revoke_token(&self, user_id: &str, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM tokens WHERE id = ? AND user_id = ?")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n > 0)
    }

    /// Drops tokens that expired before `now`.
    pub async fn purge_expired_tokens(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n)
    }
}

/// An API token as listed: never its value.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub created_at: i64,
    /// ms since the epoch; `None`: never.
    pub expires_at: Option<i64>,
}
