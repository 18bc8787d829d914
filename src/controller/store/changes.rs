//! Which tables changed: a counter per table, bumped by every commit that touched it, so a
//! read cache can tell whether a page it rendered is still what the database holds.
//!
//! Each connection (readers and the writer alike, so no write path can be missed) notes
//! the tables its statements change through SQLite's update hook, which also sees rows
//! changed by triggers. When SQLite reports the transaction committed through its WAL
//! hook (called after the commit is visible to other connections, and before the
//! committing call returns), the noted tables' counters go up. A rolled-back transaction's
//! notes are bumped with the next commit: an extra invalidation, never a missed one.
//!
//! Why this is enough for a cache: a reader reads the counters of the tables a page
//! depends on *before* it queries (its [`Stamp`]). A commit its query did not see became
//! visible after the query started, so its bump comes after the stamp was read, and the
//! stamp stops matching. The only window in which a page without that commit is served is
//! between the commit becoming visible and its bump, when the write's caller has not yet
//! been answered either.
//!
//! Each table of [`TABLES`] has its own counter; a test checks that every table of the
//! schema is listed, so a new migration's table cannot go unwatched.
//!
//! Not seen by the update hook (SQLite's documented exceptions), and not used by corral:
//! `WITHOUT ROWID` tables and `DELETE FROM t` without a `WHERE` (the truncate
//! optimisation). Migrations run before any cache exists.
//!
//! sqlx wraps the update hook but not the WAL hook, so this module calls SQLite's C API for
//! that one hook: one of the three modules with `unsafe` code (the others are the node's
//! libvirt event callback and its live disk I/O limits).
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;

/// Every table of the schema, each with its own counter.
const TABLES: &[&str] = &[
    "users",
    "tokens",
    "nodes",
    "templates",
    "ip_pools",
    "guests",
    "ip_leases",
    "vnc_leases",
    "mac_leases",
    "disks",
    "operations",
    "events",
    "ip_ranges",
    "ip_marks",
    "scripts",
    "boot_jobs",
    "node_cleanup",
    "node_usage",
    "audit",
    "settings",
    "password_resets",
    "node_credentials",
    "snapshots",
    "op_log",
];

/// One counter per table, and one shared by any table missing from the list.
const SLOTS: usize = TABLES.len() + 1;

/// SQLite's own default: checkpoint once the WAL holds this many pages. Installing a WAL
/// hook replaces SQLite's automatic checkpointing, so the hook does it itself.
const AUTOCHECKPOINT_PAGES: c_int = 1000;

/// The per-table commit counters of one database.
pub struct Changes {
    slots: [AtomicU64; SLOTS],
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The counters of a set of tables at one instant (their sum: each only grows, so the sum
/// changes exactly when one of them does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64);

impl Changes {
    /// The current stamp of `tables`.
    pub fn stamp(&self, tables: &[&str]) -> Stamp {
        Stamp(
            tables
                .iter()
                .map(|t| self.slots[slot(t)].load(Ordering::Acquire))
                .fold(0u64, u64::wrapping_add),
        )
    }

    fn bump(&self, mask: u64) {
        for (i, slot) in self.slots.iter().enumerate() {
            if mask & (1 << i) != 0 {
                slot.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Installs the update and WAL hooks on a new connection (the pools' `after_connect`).
    pub async fn watch(self: &Arc<Self>, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        let noted = Arc::new(Noted {
            changes: self.clone(),
            mask: AtomicU64::new(0),
        });
        let mut handle = conn.lock_handle().await?;
        let on_update = noted.clone();
        handle.set_update_hook(move |row| {
            on_update
                .mask
                .fetch_or(1 << slot(row.table), Ordering::AcqRel);
        });
        // The hook's context lives as long as the connection. Connections live as long as
        // the process (the pools set no idle timeout or lifetime), so this is one small
        // allocation per connection, never freed because SQLite gives no close callback.
        let ctx = Arc::into_raw(noted) as *mut c_void;
        // SAFETY: the handle is locked, so no other call runs on this connection; `ctx`
        // points to a `Noted` that is never freed; `on_commit` matches SQLite's signature.
        unsafe {
            ffi::sqlite3_wal_hook(handle.as_raw_handle().as_ptr(), Some(on_commit), ctx);
        }
        Ok(())
    }
}

/// What one connection changed since its last commit.
struct Noted {
    changes: Arc<Changes>,
    mask: AtomicU64,
}

/// SQLite's WAL hook: the transaction is committed and visible.
unsafe extern "C" fn on_commit(
    ctx: *mut c_void,
    db: *mut ffi::sqlite3,
    name: *const c_char,
    pages: c_int,
) -> c_int {
    // SAFETY: `ctx` is the `Noted` leaked in `watch`, alive for the connection's life.
    let noted = unsafe { &*(ctx as *const Noted) };
    noted.changes.bump(noted.mask.swap(0, Ordering::AcqRel));
    if pages >= AUTOCHECKPOINT_PAGES {
        // SAFETY: SQLite documents checkpointing from inside the WAL hook as allowed; `db`
        // and `name` are the arguments SQLite passed in. A failed or busy checkpoint is
        // retried at the next commit, as SQLite's own automatic checkpoint does.
        unsafe {
            ffi::sqlite3_wal_checkpoint(db, name);
        }
    }
    ffi::SQLITE_OK
}

/// The table's counter.
fn slot(table: &str) -> usize {
    TABLES
        .iter()
        .position(|t| *t == table)
        .unwrap_or(TABLES.len())
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::*;

    #[tokio::test]
    async fn every_table_of_the_schema_has_its_own_counter() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let names: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        for (name,) in names {
            assert!(
                TABLES.contains(&name.as_str()),
                "table {name} is not in TABLES"
            );
        }
    }

    #[tokio::test]
    async fn a_table_counts_up_when_a_commit_that_changed_it_is_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        let before = store.changes.stamp(&["users"]);
        let others = store.changes.stamp(&["guests", "operations"]);

        let mut tx = store.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO users (id, name, password_hash, is_admin, created_at) \
             VALUES ('u1', 'ann', 'x', 0, 0)",
        )
        .execute(&mut *tx)
        .await
        .unwrap();
        assert_eq!(
            store.changes.stamp(&["users"]),
            before,
            "bumped before commit"
        );
        store.commit(tx).await.unwrap();
        let after = store.changes.stamp(&["users"]);
        assert_ne!(
            after, before,
            "a commit that changed users left its counter"
        );
        assert_eq!(store.changes.stamp(&["guests", "operations"]), others);

        // A rolled-back change is not a change; a single statement outside a transaction,
        // on a reader connection, is one.
        let mut tx = store.begin().await.unwrap();
        sqlx::query("UPDATE users SET name = 'bob'")
            .execute(&mut *tx)
            .await
            .unwrap();
        drop(tx);
        assert_eq!(store.changes.stamp(&["users"]), after);
        sqlx::query("UPDATE users SET name = 'cy'")
            .execute(store.pool())
            .await
            .unwrap();
        assert_ne!(store.changes.stamp(&["users"]), after);
    }
}
