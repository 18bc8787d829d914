//! The controller's SQL store: the single source of truth for guests, allocations,
//! operations and the event log. Nodes never touch it.
//!
//! SQLite in WAL mode with a busy timeout; every query is parameterised. Writes that must
//! agree (an operation's step state, the allocation it made, the event announcing it)
//! happen in one transaction, so a crash at any instant leaves a consistent database.

/// The paging clause of every list: `+?` rather than a bare `?`, because SQLite plans a
/// bare `LIMIT ?` with the bound value and so prepares the statement again at every
/// execution; `+?` is the same number to SQL but opaque to the planner.
macro_rules! page_clause {
    () => {
        "LIMIT +? OFFSET +?"
    };
}

mod audit;
mod changes;
pub mod claims;
mod cleanup;
mod disks;
pub mod events;
#[macro_use]
mod guests;
pub mod ha;
pub mod leases;
mod nodes;
pub mod observed;
pub mod oplog;
mod ops;
mod recovery;
mod resources;
mod saga;
mod scripts;
mod snapshots;
mod users;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use audit::{AuditFilter, AuditRow};
pub use changes::{Changes, Stamp};
pub use cleanup::*;
pub use disks::*;
pub use events::EventRow;
pub use guests::*;
pub use nodes::{node_in, set_accept_auto_in, NodeRow};
pub use ops::*;
pub use resources::*;
pub use saga::*;
pub use scripts::*;
pub use snapshots::*;
pub use users::{Role, TokenRow, UserRow};

pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored JSON is corrupt: {0}")]
    Json(#[from] serde_json::Error),
    #[error("creating {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// True when the error is a unique-constraint violation (a lost allocation race).
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Db(sqlx::Error::Database(d)) if d.is_unique_violation())
    }
}

/// Shared handle; clones share the pool and the event notifier.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// One connection for write transactions: writers queue here, asynchronously, instead
    /// of spinning in SQLite's busy handler while holding pooled connections (under load
    /// that ended in "database is locked").
    writer: SqlitePool,
    /// Woken after every commit that appended events, so SSE streams follow without polling.
    pub events_appended: Arc<tokio::sync::Notify>,
    /// The ids of operations that just ended (sent after the commit), so that waiters wake
    /// for their own operation rather than for every commit.
    pub ops_ended: tokio::sync::broadcast::Sender<String>,
    /// Per-table commit counters, for read caches.
    pub changes: Arc<Changes>,
}

impl Store {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        // The database holds password and token digests and guests' secrets: its directory
        // is created 0700 and the file kept 0600 (SQLite gives its WAL and shared-memory
        // files the database file's mode). The controller narrows the data directory at
        // start (`modes::tighten`).
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| StoreError::Dir {
                        path: dir.display().to_string(),
                        source,
                    })?;
            }
        }
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Dir {
                    path: path.display().to_string(),
                    source,
                })?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let url = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        // Readers hand rows to the async side through a bounded channel; at the default
        // 50 a page of guests with their disks parked the connection's thread on every
        // row past the 50th. A page of the largest size fits without waiting.
        let changes = Arc::new(Changes::default());
        // Connections live as long as the store: each carries the change hooks (see
        // `changes`), and keeps its prepared statements warm.
        let watched = |n: u32| {
            let changes = changes.clone();
            SqlitePoolOptions::new()
                .max_connections(n)
                .idle_timeout(None)
                .max_lifetime(None)
                .after_connect(move |conn, _| {
                    let changes = changes.clone();
                    Box::pin(async move { changes.watch(conn).await })
                })
        };
        let pool = watched(4)
            .connect_with(opts.clone().row_buffer_size(4096))
            .await?;
        let writer = watched(1)
            .acquire_timeout(Duration::from_secs(300))
            .connect_with(opts)
            .await?;
        let store = Store {
            pool,
            writer,
            events_appended: Arc::new(tokio::sync::Notify::new()),
            ops_ended: tokio::sync::broadcast::channel(4096).0,
            changes,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies `schema.sql` (version 1), then each later migration once, recorded in
    /// SQLite's `user_version`. Migrations are append-only.
    async fn migrate(&self) -> Result<(), StoreError> {
        let schema = include_str!("schema.sql");
        sqlx::raw_sql(schema).execute(&self.pool).await?;
        const MIGRATIONS: &[(i64, &str)] = &[
            (2, include_str!("migrations/002_ip_management.sql")),
            (3, include_str!("migrations/003_foreign_domains.sql")),
            (4, include_str!("migrations/004_bandwidth.sql")),
            (5, include_str!("migrations/005_guest_node_index.sql")),
            (6, include_str!("migrations/006_scripts_boot_jobs.sql")),
            (7, include_str!("migrations/007_list_indexes.sql")),
            (8, include_str!("migrations/008_node_cleanup.sql")),
            (9, include_str!("migrations/009_node_usage.sql")),
            (10, include_str!("migrations/010_state_at.sql")),
            (11, include_str!("migrations/011_tokens.sql")),
            (12, include_str!("migrations/012_ownership.sql")),
            (13, include_str!("migrations/013_boot_job_source.sql")),
            (14, include_str!("migrations/014_audit_settings.sql")),
            (15, include_str!("migrations/015_guest_tags.sql")),
            (16, include_str!("migrations/016_recovery.sql")),
            (17, include_str!("migrations/017_node_credentials.sql")),
            (18, include_str!("migrations/018_no_vnc_passwords.sql")),
            (19, include_str!("migrations/019_data_disks.sql")),
            (20, include_str!("migrations/020_snapshots.sql")),
            (21, include_str!("migrations/021_template_checksums.sql")),
            (22, include_str!("migrations/022_guest_maxima.sql")),
            (23, include_str!("migrations/023_owner_ids.sql")),
            (24, include_str!("migrations/024_one_naming_rule.sql")),
            (25, include_str!("migrations/025_node_claims.sql")),
            (26, include_str!("migrations/026_sealed_boot_params.sql")),
            (27, include_str!("migrations/027_ha.sql")),
            (28, include_str!("migrations/028_op_log_token_scope.sql")),
            (29, include_str!("migrations/029_template_description.sql")),
        ];
        let (mut version,): (i64,) = sqlx::query_as("PRAGMA user_version")
            .fetch_one(&self.pool)
            .await?;
        if version == 0 {
            version = 1;
        }
        for (v, sql) in MIGRATIONS {
            if *v > version {
                let mut tx = self.begin().await?;
                sqlx::raw_sql(*sql).execute(&mut *tx).await?;
                // PRAGMA takes no bound parameters; `v` is a compile-time constant.
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {v}")))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                version = *v;
            }
        }
        Ok(())
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Begins a write transaction. `BEGIN IMMEDIATE` takes the write lock up front so two
    /// writers never both read and then collide on upgrade (SQLite's SQLITE_BUSY trap).
    pub async fn begin(&self) -> Result<Tx<'static>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Commits and wakes event followers.
    pub async fn commit(&self, tx: Tx<'_>) -> Result<(), StoreError> {
        tx.commit().await?;
        self.events_appended.notify_waiters();
        Ok(())
    }

    /// Readiness probe for `/healthz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
