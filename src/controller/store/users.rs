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

    pub async fn insert_token(&self, hash: &str, user_id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO tokens (hash, user_id, created_at) VALUES (?, ?, ?)")
            .bind(hash)
            .bind(user_id)
            .bind(at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn user_by_token(&self, hash: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT u.id, u.name, u.password_hash, u.is_admin, u.created_at FROM users u \
             JOIN tokens t ON t.user_id = u.id WHERE t.hash = ?",
        )
        .bind(hash)
        .fetch_optional(self.pool())
        .await?)
    }
}
