//! Users, passwords and API tokens.
//!
//! Passwords are argon2id hashes. API tokens are 32 random bytes, shown once and stored as
//! SHA-256 digests. At first start the controller creates the `admin` user (password from
//! config, else generated and printed once) and writes an admin token to
//! `<data_dir>/admin.token` (mode 0600) so the local CLI works without a login.

use std::path::PathBuf;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::store::{Store, StoreError, UserRow};
use crate::config::ControllerConfig;
use crate::model::{new_id, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("hashing password: {0}")]
    Hash(String),
    #[error("writing {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates a token for `user` and returns it (the only time it exists in clear).
pub async fn issue_token(store: &Store, user: &UserRow) -> Result<String, AuthError> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("crl_{}", hex::encode(bytes));
    store
        .insert_token(&token_digest(&token), &user.id, now_ms())
        .await?;
    Ok(token)
}

/// First-start setup; returns an admin token valid for this run (used by `corral up`).
pub async fn bootstrap(store: &Store, cfg: &ControllerConfig) -> Result<String, AuthError> {
    if store.user_count().await? == 0 {
        let (password, generated) = match &cfg.admin_password {
            Some(p) => (p.clone(), false),
            None => (super::saga::steps::random_secret(20), true),
        };
        store
            .insert_user(&UserRow {
                id: new_id(),
                name: "admin".into(),
                password_hash: hash_password(&password)?,
                is_admin: true,
                created_at: now_ms(),
            })
            .await?;
        if generated {
            // Printed once, on the first start only; it is not stored anywhere in clear.
            println!("created user admin with password: {password}");
        }
    }
    let admin = store
        .user_by_name("admin")
        .await?
        .ok_or_else(|| AuthError::Hash("the admin user is missing".into()))?;
    let token = issue_token(store, &admin).await?;
    write_token_file(&cfg.data_dir.join("admin.token"), &token)?;
    Ok(token)
}

fn write_token_file(path: &std::path::Path, token: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| AuthError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(token.as_bytes()).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_round_trip() {
        let h = hash_password("pw").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("pw", &h));
        assert!(!verify_password("other", &h));
        assert!(!verify_password("pw", "not a hash"));
    }
}
