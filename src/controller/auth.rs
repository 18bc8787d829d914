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
//! Failed logins are throttled in memory ([`Throttle`]) per user name *and* address, never
//! per name alone: five wrong passwords for `admin` from one address lock `admin` for that
//! address, not for the administrator at their own desk.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
    Hash(argon2::password_hash::Error),
    #[error("the hashing task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("the admin user is missing")]
    NoAdmin,
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
        .map_err(AuthError::Hash)
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
    issue_scoped_token(store, user, name, expires_at, "api").await
}

/// [`issue_token`] of a scope: `api`, or `metrics` (scrape `/metrics` only).
pub async fn issue_scoped_token(
    store: &Store,
    user: &UserRow,
    name: &str,
    expires_at: Option<i64>,
    scope: &str,
) -> Result<(TokenRow, String), AuthError> {
    let token = new_token();
    let row = TokenRow {
        id: new_id(),
        user_id: user.id.clone(),
        name: name.to_string(),
        created_at: now_ms(),
        expires_at,
        scope: scope.to_string(),
    };
    store.insert_token(&row, &token_digest(&token)).await?;
    Ok((row, token))
}

/// [`hash_password`] on the blocking pool.
pub async fn hash_password_blocking(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(AuthError::Join)?
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
        .ok_or(AuthError::NoAdmin)?;
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

/// Failed logins before a name is locked for the address they came from.
pub const MAX_FAILURES: u32 = 5;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(600);
/// How long a first lock lasts; each lock of the same pair that follows within
/// [`FORGET_AFTER`] lasts twice the one before, up to [`MAX_LOCKOUT`].
pub const LOCKOUT: Duration = Duration::from_secs(300);
/// The longest lock.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(3600);
/// A pair with no failure for this long starts over (its back-off forgotten).
pub const FORGET_AFTER: Duration = Duration::from_secs(86_400);
/// Failures of one name from all addresses within [`WINDOW`] that mark it as under
/// attack: every address that has failed for it is then locked, whatever its own count.
pub const NAME_UNDER_ATTACK: u32 = 50;
/// Logins one address may try per minute, successful or not.
pub const PER_ADDRESS: u32 = 30;
/// Entries each of the throttle's maps keeps at most: attempts beyond that evict the
/// oldest, so a flood of made-up names and addresses costs bounded memory.
pub const MAX_ENTRIES: usize = 20_000;
/// The longest name the throttle keys on (the API's limit for user names).
pub const MAX_NAME: usize = 64;

/// Failures of one (name, address) pair.
#[derive(Debug, Clone, Copy)]
struct PairTries {
    count: u32,
    since: Instant,
    last: Instant,
    locked_until: Option<Instant>,
    /// Locks so far: the next lasts `LOCKOUT × 2^locks`.
    locks: u32,
}

/// Attempts of one address, or failures of one name, in a window.
#[derive(Debug, Clone, Copy)]
struct Count {
    count: u32,
    since: Instant,
}

impl Count {
    /// Adds one, starting over when `window` has passed; the count after.
    fn bump(&mut self, now: Instant, window: Duration) -> u32 {
        if now.duration_since(self.since) >= window {
            *self = Count {
                count: 0,
                since: now,
            };
        }
        self.count += 1;
        self.count
    }
}

/// Login throttling, in memory, in the way of fail2ban and Keycloak's brute-force
/// detection, but never keyed on a name alone:
/// * a (name, address) pair is locked after [`MAX_FAILURES`] failures in [`WINDOW`], for
///   [`LOCKOUT`], doubling with each lock that follows (fail2ban's `bantime.increment`),
///   up to [`MAX_LOCKOUT`]; a success clears the pair;
/// * one address may try [`PER_ADDRESS`] logins a minute, whatever the names;
/// * a name failed [`NAME_UNDER_ATTACK`] times in the window from all addresses is under
///   attack: each address that failed for it at least once is locked out of it. An
///   address that never failed for the name is never stopped by the name's state, so
///   nobody can lock the administrator out by guessing from elsewhere.
///
/// A restart forgets the counts; an attacker gains a few attempts per restart, which an
/// operator would notice first. Maps are bounded by [`MAX_ENTRIES`].
#[derive(Default)]
pub struct Throttle {
    inner: std::sync::Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    pairs: HashMap<(String, String), PairTries>,
    names: HashMap<String, Count>,
    addresses: HashMap<String, Count>,
}

/// Why a login is not even tried: the message and the seconds until it would be.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
    pub retry_after: u64,
}

/// The key a name is counted under: at most [`MAX_NAME`] bytes (longer names are refused
/// by the API before they get here; this keeps the bound whatever the caller).
fn name_key(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Makes room for one more entry: expired ones go first, then the oldest.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    stale: impl Fn(&V) -> bool,
    age: impl Fn(&V) -> Instant,
) {
    if map.len() < MAX_ENTRIES {
        return;
    }
    map.retain(|_, v| !stale(v));
    while map.len() >= MAX_ENTRIES {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| age(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl Throttle {
    /// Called before checking a password: counts the attempt against the address and
    /// refuses it when the address, or this name from this address, is over its limit.
    pub fn admit(&self, name: &str, address: &str) -> Result<(), Refused> {
        let now = Instant::now();
        let name = name_key(name);
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let minute = Duration::from_secs(60);
        if !c.addresses.contains_key(address) {
            make_room(
                &mut c.addresses,
                |t| now.duration_since(t.since) >= minute,
                |t| t.since,
            );
        }
        let a = c.addresses.entry(address.to_string()).or_insert(Count {
            count: 0,
            since: now,
        });
        if a.bump(now, minute) > PER_ADDRESS {
            let left = minute.saturating_sub(now.duration_since(a.since));
            return Err(Refused {
                message: format!("too many logins from {address}"),
                retry_after: secs(left),
            });
        }
        let Some(pair) = c.pairs.get(&(name.clone(), address.to_string())).copied() else {
            return Ok(());
        };
        if let Some(until) = pair.locked_until.filter(|u| *u > now) {
            return Err(Refused {
                message: format!(
                    "user {name} is locked for this address after {MAX_FAILURES} failed logins"
                ),
                retry_after: secs(until.duration_since(now)),
            });
        }
        let attacked = c
            .names
            .get(&name)
            .is_some_and(|n| now.duration_since(n.since) < WINDOW && n.count >= NAME_UNDER_ATTACK);
        if attacked && now.duration_since(pair.last) < WINDOW {
            return Err(Refused {
                message: format!("user {name} is under attack: addresses that failed for it wait"),
                retry_after: secs(LOCKOUT),
            });
        }
        Ok(())
    }

    /// A failed password for `name` from `address`: counts it for the pair (locking it
    /// once the window holds too many) and for the name.
    pub fn failed(&self, name: &str, address: &str) {
        let now = Instant::now();
        let name = name_key(name);
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !c.names.contains_key(&name) {
            make_room(
                &mut c.names,
                |t| now.duration_since(t.since) >= WINDOW,
                |t| t.since,
            );
        }
        c.names
            .entry(name.clone())
            .or_insert(Count {
                count: 0,
                since: now,
            })
            .bump(now, WINDOW);
        let key = (name, address.to_string());
        if !c.pairs.contains_key(&key) {
            make_room(
                &mut c.pairs,
                |t| {
                    t.locked_until.is_none_or(|u| u <= now)
                        && now.duration_since(t.last) >= FORGET_AFTER
                },
                |t| t.last,
            );
        }
        let t = c.pairs.entry(key).or_insert(PairTries {
            count: 0,
            since: now,
            last: now,
            locked_until: None,
            locks: 0,
        });
        if now.duration_since(t.last) >= FORGET_AFTER {
            t.locks = 0;
        }
        if now.duration_since(t.since) >= WINDOW || t.locked_until.is_some_and(|u| u <= now) {
            t.count = 0;
            t.since = now;
            t.locked_until = None;
        }
        t.last = now;
        t.count += 1;
        if t.count >= MAX_FAILURES {
            let lock = LOCKOUT
                .saturating_mul(1u32 << t.locks.min(16))
                .min(MAX_LOCKOUT);
            t.locked_until = Some(now + lock);
            t.locks += 1;
        }
    }

    /// A successful login clears the pair's failures (and its back-off).
    pub fn succeeded(&self, name: &str, address: &str) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        c.pairs.remove(&(name_key(name), address.to_string()));
    }

    /// How many entries the throttle holds (pairs, names, addresses).
    pub fn entries(&self) -> (usize, usize, usize) {
        let c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (c.pairs.len(), c.names.len(), c.addresses.len())
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
    fn a_name_locks_only_for_the_addresses_that_failed_for_it() {
        let t = Throttle::default();
        for _ in 0..MAX_FAILURES {
            assert!(t.admit("admin", "10.0.0.1").is_ok());
            t.failed("admin", "10.0.0.1");
        }
        let refused = t.admit("admin", "10.0.0.1").unwrap_err();
        assert!(refused.message.contains("locked"), "{refused:?}");
        assert!(refused.retry_after > 0 && refused.retry_after <= LOCKOUT.as_secs());
        // The administrator elsewhere is not locked out; nor is another name.
        assert!(t.admit("admin", "10.0.0.2").is_ok());
        assert!(t.admit("bob", "10.0.0.1").is_ok());
        // A success clears a pair's count.
        t.failed("bob", "10.0.0.3");
        t.succeeded("bob", "10.0.0.3");
        for _ in 0..MAX_FAILURES - 1 {
            t.failed("bob", "10.0.0.3");
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

    #[test]
    fn a_name_under_attack_stops_the_attackers_and_not_a_clean_address() {
        let t = Throttle::default();
        // Many addresses, a few wrong passwords each: no pair reaches its own limit.
        for i in 0..NAME_UNDER_ATTACK {
            t.failed("admin", &format!("10.1.{}.{}", i / 200, i % 200));
        }
        let refused = t.admit("admin", "10.1.0.7").unwrap_err();
        assert!(refused.message.contains("under attack"), "{refused:?}");
        assert!(
            t.admit("admin", "192.0.2.1").is_ok(),
            "a clean address logs in"
        );
    }

    #[test]
    fn repeated_locks_of_a_pair_last_longer() {
        let t = Throttle::default();
        let lock = |t: &Throttle| {
            for _ in 0..MAX_FAILURES {
                t.failed("ann", "10.0.0.1");
            }
            t.admit("ann", "10.0.0.1").unwrap_err().retry_after
        };
        let first = lock(&t);
        // Expire the lock by hand: the next one is twice as long.
        t.inner
            .lock()
            .unwrap()
            .pairs
            .values_mut()
            .for_each(|p| p.locked_until = Some(Instant::now()));
        let second = lock(&t);
        assert!(
            first <= LOCKOUT.as_secs() && second > LOCKOUT.as_secs(),
            "{first} {second}"
        );
        assert!(second <= MAX_LOCKOUT.as_secs());
    }

    #[test]
    fn the_throttle_holds_a_bounded_number_of_short_keys() {
        let t = Throttle::default();
        let long = "x".repeat(1 << 20);
        for i in 0..(MAX_ENTRIES + 500) {
            t.failed(
                &format!("{long}{i}"),
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            );
        }
        let (pairs, names, _) = t.entries();
        assert!(
            pairs <= MAX_ENTRIES && names <= MAX_ENTRIES,
            "{pairs} {names}"
        );
        let c = t.inner.lock().unwrap();
        assert!(c.names.keys().all(|k| k.len() <= MAX_NAME));
    }
}
