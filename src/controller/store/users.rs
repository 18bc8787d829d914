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
    /// `admin`, `operator` or `user` (see [`Role`]).
    pub role: String,
}

/// What a user may do. `admin`: everything. `operator`: every guest, template, operation
/// and boot job, and reading nodes and plugins; no users, pools or node changes. `user`:
/// their own guests and templates (and public templates), the operations and boot jobs
/// of their guests, their own scripts and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    User,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "user" => Some(Role::User),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::User => "user",
        }
    }
}

impl UserRow {
    /// The user's role; an unreadable one is the least privileged.
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::User)
    }

    /// Admins and operators see every guest, template and operation.
    pub fn sees_all(&self) -> bool {
        matches!(self.role(), Role::Admin | Role::Operator)
    }

    /// The owner a list is narrowed to: none for admins and operators.
    pub fn owner_scope(&self) -> Option<&str> {
        (!self.sees_all()).then_some(self.id.as_str())
    }
}

impl Store {
    pub async fn user_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    pub async fn insert_user(&self, u: &UserRow) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, name, password_hash, is_admin, created_at, role) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&u.id)
        .bind(&u.name)
        .bind(&u.password_hash)
        .bind(u.role() == Role::Admin)
        .bind(u.created_at)
        .bind(u.role().as_str())
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, password_hash, is_admin, created_at, role FROM users WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await?)
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, password_hash, is_admin, created_at, role FROM users ORDER BY name",
        )
        .fetch_all(self.pool())
        .await?)
    }

    pub async fn user(&self, id_or_name: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, password_hash, is_admin, created_at, role FROM users \
             WHERE id = ? OR name = ?",
        )
        .bind(id_or_name)
        .bind(id_or_name)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Changes a user's role and/or password hash.
    pub async fn update_user(
        &self,
        id: &str,
        role: Option<Role>,
        password_hash: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if let Some(r) = role {
            sqlx::query("UPDATE users SET role = ?, is_admin = ? WHERE id = ?")
                .bind(r.as_str())
                .bind(r == Role::Admin)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        if let Some(h) = password_hash {
            sqlx::query("UPDATE users SET password_hash = ? WHERE id = ?")
                .bind(h)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await
    }

    /// Deletes a user with their tokens. Their guests and templates stay (an administrator
    /// sees them, and deletes or keeps them).
    pub async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await
    }

    /// What a user owns: guests, templates, data disks, scripts (in that order).
    pub async fn owned_by(&self, user_id: &str) -> Result<[i64; 4], StoreError> {
        let mut out = [0i64; 4];
        for (i, q) in [
            "SELECT COUNT(*) FROM guests WHERE owner_id = ?",
            "SELECT COUNT(*) FROM templates WHERE owner_id = ?",
            "SELECT COUNT(*) FROM disks WHERE owner_id = ? AND kind = 'data'",
            "SELECT COUNT(*) FROM scripts WHERE owner_id = ?",
        ]
        .into_iter()
        .enumerate()
        {
            let (n,): (i64,) = sqlx::query_as(q)
                .bind(user_id)
                .fetch_one(self.pool())
                .await?;
            out[i] = n;
        }
        Ok(out)
    }

    /// How many administrators there are (the last one may not be demoted or deleted).
    pub async fn admin_count(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users WHERE role = 'admin'")
            .fetch_one(self.pool())
            .await?;
        Ok(n)
    }

    /// Stores a token's digest; `id` names it for listing and revoking.
    pub async fn insert_token(&self, t: &TokenRow, hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO tokens (hash, id, user_id, name, created_at, expires_at, scope) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(&t.id)
        .bind(&t.user_id)
        .bind(&t.name)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(&t.scope)
        .execute(&mut *tx)
        .await?;
        self.commit(tx).await
    }

    /// The user and token id behind a bearer token's digest, unless it has expired. Only
    /// API tokens: a scrape-only token is not one.
    pub async fn user_by_token(
        &self,
        hash: &str,
        now: i64,
    ) -> Result<Option<(UserRow, String)>, StoreError> {
        self.user_by_scoped_token(hash, now, &["api"]).await
    }

    /// The user and token id behind a bearer token's digest of one of `scopes`.
    pub async fn user_by_scoped_token(
        &self,
        hash: &str,
        now: i64,
        scopes: &[&str],
    ) -> Result<Option<(UserRow, String)>, StoreError> {
        type Found = (String, String, String, bool, i64, String, String, String);
        let row: Option<Found> = sqlx::query_as(
            "SELECT u.id, u.name, u.password_hash, u.is_admin, u.created_at, u.role, t.id, t.scope \
             FROM tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.hash = ? AND (t.expires_at IS NULL OR t.expires_at > ?)",
        )
        .bind(hash)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        let row = row.filter(|r| scopes.contains(&r.7.as_str()));
        Ok(row.map(
            |(id, name, password_hash, is_admin, created_at, role, token, _)| {
                (
                    UserRow {
                        id,
                        name,
                        password_hash,
                        is_admin,
                        created_at,
                        role,
                    },
                    token,
                )
            },
        ))
    }

    /// Whether the token with this digest exists and has not expired.
    pub async fn token_valid(&self, hash: &str, now: i64) -> Result<bool, StoreError> {
        Ok(self.user_by_token(hash, now).await?.is_some())
    }

    /// A user's tokens, newest first (expired ones included, until purged).
    pub async fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenRow>, StoreError> {
        Ok(sqlx::query_as::<_, TokenRow>(
            "SELECT id, user_id, name, created_at, expires_at, scope FROM tokens \
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

    /// Revokes every token of a user (their password was reset).
    pub async fn revoke_all_tokens(&self, user_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM tokens WHERE user_id = ?")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n)
    }

    /// Revokes every token of a user but `keep` (the one that changed their password).
    pub async fn revoke_other_tokens(&self, user_id: &str, keep: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM tokens WHERE user_id = ? AND id <> ?")
            .bind(user_id)
            .bind(keep)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n)
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
    /// `api` (everything its user may do) or `metrics` (only `/metrics`).
    pub scope: String,
}
