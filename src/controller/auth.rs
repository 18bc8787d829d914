//! Users, passwords and API tokens.
//!
//! Passwords are argon2id hashes, computed and checked on the blocking pool (a hash takes
//! tens of milliseconds of CPU: on the async runtime it would stall every request). API
//! tokens are 32 random bytes, shown once and stored as SHA-256 digests, each with a name
//! and an optional expiry: login tokens expire after `login_token_hours`, named tokens when
//! their creator says.
//!
//! At first start the controller creates the `admin` user (password from config, else
//! generated and printed once) and writes an admin token to `<data_dir>/admin.token`
//! (mode 0600, directory 0700) so the local CLI works without a login. Later starts keep
//! that file while its token is valid: no token is minted per start.
//!
//! Failed logins are throttled in memory ([`Throttle`]): a user name is locked for
//! [`LOCKOUT`] after [`MAX_FAILURES`] failures within [`WINDOW`], and one address may try
//! at most [`PER_ADDRESS`] logins per minute. A restart forgets the counts; an attacker
//! gains a few attempts per restart, which an operator would notice first.

use std::path::PathBuf;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::store::{Store, StoreError, TokenRow, UserRow};
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

/// A new random secret (256 bits), as tokens and reset links carry it.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("crl_{}", hex::encode(bytes))
}

/// Creates a token for `user` and returns it with its record (the only time the value
/// exists in clear).
pub async fn issue_token(
    store: &Store,
    user: &UserRow,
    name: &str,
    expires_at: Option<i64>,
) -> Result<(TokenRow, String), AuthError> {
    let token = new_token();
    let row = TokenRow {
        id: new_id(),
        user_id: user.id.clone(),
        name: name.to_string(),
        created_at: now_ms(),
        expires_at,
    };
    store.insert_token(&row, &token_digest(&token)).await?;
    Ok((row, token))
}

/// [`hash_password`] on the blocking pool.
pub async fn hash_password_blocking(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| AuthError::Hash(e.to_string()))?
}

/// Checks a login on the blocking pool. An unknown user costs the same hash as a known
/// one, so the answer's timing does not tell which names exist.
pub async fn verify_login(password: String, user: Option<UserRow>) -> Option<UserRow> {
    /// The hash of a random string: what an unknown name's password is compared with.
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        hash_password(&crate::model::random_secret(20)).unwrap_or_default()
    });
    tokio::task::spawn_blocking(move || {
        let hash = user
            .as_ref()
            .map_or(DUMMY.as_str(), |u| u.password_hash.as_str());
        let ok = verify_password(&password, hash);
        user.filter(|_| ok)
    })
    .await
    .ok()
    .flatten()
}

/// First-start setup; returns the admin token of `<data_dir>/admin.token` (used by `corral
/// up`), minting one only when the file is missing or its token no longer works.
pub async fn bootstrap(store: &Store, cfg: &ControllerConfig) -> Result<String, AuthError> {
    if store.user_count().await? == 0 {
        let (password, generated) = match &cfg.admin_password {
            Some(p) => (p.clone(), false),
            None => (crate::model::random_secret(20), true),
        };
        store
            .insert_user(&UserRow {
                id: new_id(),
                name: "admin".into(),
                password_hash: hash_password_blocking(password.clone()).await?,
                is_admin: true,
                created_at: now_ms(),
                role: "admin".into(),
            })
            .await?;
        if generated {
            // Printed once, on the first start only; it is not stored anywhere in clear.
            println!("created user admin with password: {password}");
        }
    }
    let path = cfg.data_dir.join("admin.token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_string();
        if store
            .token_valid(&token_digest(&existing), now_ms())
            .await?
        {
            return Ok(existing);
        }
    }
    let admin = store
        .user_by_name("admin")
        .await?
        .ok_or_else(|| AuthError::Hash("the admin user is missing".into()))?;
    let (_, token) = issue_token(store, &admin, "admin.token", None).await?;
    write_token_file(&path, &token)?;
    Ok(token)
}

/// Drops expired tokens every ten minutes (they already stop working at their expiry;
/// this keeps the table from growing with every login), until `shutdown`.
pub async fn purge_expired(store: Store, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {
                match store.purge_expired_tokens(now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!("purged {n} expired token(s)"),
                    Err(e) => tracing::warn!("purging expired tokens: {e}"),
                }
                if let Err(e) = store.purge_expired_resets(now_ms()).await {
                    tracing::warn!("purging expired reset links: {e}");
                }
            }
        }
    }
}

/// Failures of one user name or address.
#[derive(Debug, Clone, Copy)]
struct Tries {
    count: u32,
    since: std::time::Instant,
    locked_until: Option<std::time::Instant>,
}

/// Failed logins before a user name is locked.
pub const MAX_FAILURES: u32 = 5;
/// The window those failures are counted in.
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// How long a locked name stays locked.
pub const LOCKOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// Logins one address may try per minute, successful or not.
pub const PER_ADDRESS: u32 = 30;

/// Login throttling, in memory; see the module docs.
#[derive(Default)]
pub struct Throttle {
    names: std::sync::Mutex<std::collections::HashMap<String, Tries>>,
    addresses: std::sync::Mutex<std::collections::HashMap<String, Tries>>,
}

/// Why a login is not even tried: the message and the seconds until it would be.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
    pub retry_after: u64,
}

impl Throttle {
    /// Called before checking a password: counts the attempt against the address and
    /// refuses it when the address or the name is over its limit.
    pub fn admit(&self, name: &str, address: &str) -> Result<(), Refused> {
        let now = std::time::Instant::now();
        {
            let mut a = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
            if a.len() > 100_000 {
                a.retain(|_, t| now.duration_since(t.since) < std::time::Duration::from_secs(60));
            }
            let t = a.entry(address.to_string()).or_insert(Tries {
                count: 0,
                since: now,
                locked_until: None,
            });
            if now.duration_since(t.since) >= std::time::Duration::from_secs(60) {
                *t = Tries {
                    count: 0,
                    since: now,
                    locked_until: None,
                };
            }
            t.count += 1;
            if t.count > PER_ADDRESS {
                let left = 60u64.saturating_sub(now.duration_since(t.since).as_secs());
                return Err(Refused {
                    message: format!("too many logins from {address}"),
                    retry_after: left.max(1),
                });
            }
        }
        let n = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = n.get(name).and_then(|t| t.locked_until) {
            if until > now {
                return Err(Refused {
                    message: format!("user {name} is locked after {MAX_FAILURES} failed logins"),
                    retry_after: until.duration_since(now).as_secs().max(1),
                });
            }
        }
        Ok(())
    }

    /// A failed password for `name`: locks it once the window holds too many.
    pub fn failed(&self, name: &str) {
        let now = std::time::Instant::now();
        let mut n = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if n.len() > 100_000 {
            n.retain(|_, t| t.locked_until.is_some_and(|u| u > now));
        }
        let t = n.entry(name.to_string()).or_insert(Tries {
            count: 0,
            since: now,
            locked_until: None,
        });
        if now.duration_since(t.since) >= WINDOW || t.locked_until.is_some_and(|u| u <= now) {
            *t = Tries {
                count: 0,
                since: now,
                locked_until: None,
            };
        }
        t.count += 1;
        if t.count >= MAX_FAILURES {
            t.locked_until = Some(now + LOCKOUT);
        }
    }

    /// A successful login clears the name's failures.
    pub fn succeeded(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}

fn write_token_file(path: &std::path::Path, token: &str) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| AuthError::TokenFile {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
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

    #[tokio::test]
    async fn an_unknown_user_is_refused_after_the_same_work() {
        let h = hash_password("pw").unwrap();
        let known = UserRow {
            id: "u".into(),
            name: "ann".into(),
            password_hash: h,
            is_admin: false,
            created_at: 0,
            role: "user".into(),
        };
        assert!(verify_login("pw".into(), Some(known.clone()))
            .await
            .is_some());
        assert!(verify_login("no".into(), Some(known)).await.is_none());
        assert!(verify_login("pw".into(), None).await.is_none());
    }

    #[tokio::test]
    async fn purging_drops_expired_tokens_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let user = UserRow {
            id: "u".into(),
            name: "ann".into(),
            password_hash: "x".into(),
            is_admin: false,
            created_at: 0,
            role: "user".into(),
        };
        store.insert_user(&user).await.unwrap();
        let now = now_ms();
        let (_, old) = issue_token(&store, &user, "old", Some(now - 1))
            .await
            .unwrap();
        let (_, live) = issue_token(&store, &user, "live", Some(now + 60_000))
            .await
            .unwrap();
        let (_, forever) = issue_token(&store, &user, "forever", None).await.unwrap();
        assert_eq!(store.purge_expired_tokens(now).await.unwrap(), 1);
        let names: Vec<String> = store
            .tokens_of("u")
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert!(!names.contains(&"old".to_string()), "{names:?}");
        assert!(!store.token_valid(&token_digest(&old), now).await.unwrap());
        assert!(store.token_valid(&token_digest(&live), now).await.unwrap());
        assert!(store
            .token_valid(&token_digest(&forever), now)
            .await
            .unwrap());
    }

    #[test]
    fn a_name_locks_after_its_failures_and_an_address_after_its_rate() {
        let t = Throttle::default();
        for _ in 0..MAX_FAILURES {
            assert!(t.admit("ann", "10.0.0.1").is_ok());
            t.failed("ann");
        }
        let refused = t.admit("ann", "10.0.0.2").unwrap_err();
        assert!(refused.message.contains("locked"), "{refused:?}");
        assert!(refused.retry_after > 0 && refused.retry_after <= LOCKOUT.as_secs());
        // Another name is not locked with it; a success clears a name's count.
        assert!(t.admit("bob", "10.0.0.2").is_ok());
        t.failed("bob");
        t.succeeded("bob");
        for _ in 0..MAX_FAILURES - 1 {
            t.failed("bob");
        }
        assert!(t.admit("bob", "10.0.0.3").is_ok());
        // One address: PER_ADDRESS tries a minute, whatever the names.
        let t = Throttle::default();
        for i in 0..PER_ADDRESS {
            assert!(t.admit(&format!("u{i}"), "10.0.0.9").is_ok());
        }
        let refused = t.admit("u-last", "10.0.0.9").unwrap_err();
        assert!(refused.message.contains("10.0.0.9"), "{refused:?}");
    }
}
