//! Users' mail addresses and password-reset links (S33). A link's token is stored only as
//! its SHA-256 digest; taking it deletes it, so a link works once.

use super::{Store, StoreError};

impl Store {
    pub async fn set_user_email(&self, user: &str, email: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE users SET email = ? WHERE id = ?")
            .bind(email)
            .bind(user)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await
    }

    pub async fn user_email(&self, user: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> = sqlx::query_as("SELECT email FROM users WHERE id = ?")
            .bind(user)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.and_then(|(e,)| e))
    }

    /// Every user's address, by user id.
    pub async fn user_emails(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, email FROM users WHERE email IS NOT NULL")
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// Records a reset link's digest; the user's earlier links stop working.
    pub async fn add_reset(
        &self,
        hash: &str,
        user: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM password_resets WHERE user_id = ?")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO password_resets (hash, user_id, expires_at) VALUES (?, ?, ?)")
            .bind(hash)
            .bind(user)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        self.commit(tx).await
    }

    /// Uses up a reset link: its user, if it exists and has not expired. It is gone
    /// afterwards either way.
    pub async fn take_reset(&self, hash: &str, now: i64) -> Result<Option<String>, StoreError> {
        let mut tx = self.begin().await?;
        let row: Option<(String, i64)> = sqlx::query_as(
            "DELETE FROM password_resets WHERE hash = ? RETURNING user_id, expires_at",
        )
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?;
        self.commit(tx).await?;
        Ok(row.filter(|(_, exp)| *exp > now).map(|(u, _)| u))
    }

    pub async fn purge_expired_resets(&self, now: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let n = sqlx::query("DELETE FROM password_resets WHERE expires_at <= ?")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit(tx).await?;
        Ok(n)
    }
}
