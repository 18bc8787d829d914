//! The lease tables: IP addresses (`ip_leases`, with `ip_marks` for reserved and disabled
//! ones, and each pool's `ip_ranges`), VNC ports (`vnc_leases`) and MACs (`mac_leases`).
//!
//! Each lease's primary key makes a duplicate impossible: an insert that loses a race
//! answers `false` instead of failing, and the allocator (`controller::alloc`) decides
//! what to try next. Everything here runs inside the caller's transaction, except the
//! reads of a pool for the API, which take the pool.

use sqlx::SqliteConnection;

use super::{StoreError, Tx};

/// A pool's allocatable ranges, as stored (start, end).
pub async fn pool_ranges(
    conn: &mut SqliteConnection,
    pool_id: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT start, end FROM ip_ranges WHERE pool_id = ?")
            .bind(pool_id)
            .fetch_all(&mut *conn)
            .await?,
    )
}

/// Every leased address of a pool, and every mark (address, state).
pub async fn pool_usage(
    store: &super::Store,
    pool_id: &str,
) -> Result<(Vec<String>, Vec<(String, String)>), StoreError> {
    let leases: Vec<(String,)> = sqlx::query_as("SELECT ip FROM ip_leases WHERE pool_id = ?")
        .bind(pool_id)
        .fetch_all(store.pool())
        .await?;
    let marks = sqlx::query_as("SELECT ip, state FROM ip_marks WHERE pool_id = ?")
        .bind(pool_id)
        .fetch_all(store.pool())
        .await?;
    Ok((leases.into_iter().map(|l| l.0).collect(), marks))
}

/// A lease or mark row: (ip, guest, mark state, note).
pub type HolderRow = (String, Option<String>, Option<String>, Option<String>);

/// Leases and marks of a pool.
const HOLDERS: &str = "SELECT ip, guest_id, NULL, NULL FROM ip_leases WHERE pool_id = ? \
     UNION ALL SELECT ip, NULL, state, note FROM ip_marks WHERE pool_id = ?";

/// Leases and marks of some addresses of a pool (the addresses as one JSON array). The
/// addresses drive the join (`CROSS JOIN` fixes the order): one primary-key lookup each,
/// never a walk over all the pool's leases.
const HOLDERS_OF: &str = "SELECT l.ip, l.guest_id, NULL, NULL FROM json_each(?) AS a \
     CROSS JOIN ip_leases AS l ON l.ip = a.value WHERE l.pool_id = ? \
     UNION ALL SELECT m.ip, NULL, m.state, m.note FROM json_each(?) AS a \
     CROSS JOIN ip_marks AS m ON m.ip = a.value WHERE m.pool_id = ?";

/// Every lease and mark of a pool.
pub async fn holders(store: &super::Store, pool_id: &str) -> Result<Vec<HolderRow>, StoreError> {
    Ok(sqlx::query_as(HOLDERS)
        .bind(pool_id)
        .bind(pool_id)
        .fetch_all(store.pool())
        .await?)
}

/// The leases and marks of addresses `ips` (as text) of a pool.
pub async fn holders_of(
    store: &super::Store,
    pool_id: &str,
    ips: &[String],
) -> Result<Vec<HolderRow>, StoreError> {
    let list = serde_json::to_string(ips)?;
    Ok(sqlx::query_as(HOLDERS_OF)
        .bind(&list)
        .bind(pool_id)
        .bind(&list)
        .bind(pool_id)
        .fetch_all(store.pool())
        .await?)
}

/// Whether a guest holds `ip` or it is marked.
pub async fn ip_taken(tx: &mut Tx<'_>, ip: &str) -> Result<bool, StoreError> {
    let (taken,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM ip_leases WHERE ip = ?1) \
             OR EXISTS (SELECT 1 FROM ip_marks WHERE ip = ?1)",
    )
    .bind(ip)
    .fetch_one(&mut **tx)
    .await?;
    Ok(taken)
}

/// Addresses of a pool that cannot be handed out: leased, reserved or disabled.
pub async fn taken_in(tx: &mut Tx<'_>, pool_id: &str) -> Result<Vec<String>, StoreError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT ip FROM ip_leases WHERE pool_id = ? UNION SELECT ip FROM ip_marks WHERE pool_id = ?",
    )
    .bind(pool_id)
    .bind(pool_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The mark on `ip` (`reserved`, `disabled`), if any.
pub async fn mark_of(tx: &mut Tx<'_>, ip: &str) -> Result<Option<String>, StoreError> {
    let row: Option<(String,)> = sqlx::query_as("SELECT state FROM ip_marks WHERE ip = ?")
        .bind(ip)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| r.0))
}

/// Leases `ip` of `pool` to `guest`; false when someone holds it already.
pub async fn insert_ip(
    tx: &mut Tx<'_>,
    ip: &str,
    pool: &str,
    guest: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query("INSERT INTO ip_leases (ip, pool_id, guest_id) VALUES (?, ?, ?)")
        .bind(ip)
        .bind(pool)
        .bind(guest)
        .execute(&mut **tx)
        .await;
    unique(r)
}

/// Ok(true) for an insert, Ok(false) for a lost race on the key.
fn unique(r: Result<sqlx::sqlite::SqliteQueryResult, sqlx::Error>) -> Result<bool, StoreError> {
    match r {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Returns every address a guest holds.
pub async fn release_ips(tx: &mut Tx<'_>, guest: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM ip_leases WHERE guest_id = ?")
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Returns one address a guest held.
pub async fn release_ip(tx: &mut Tx<'_>, ip: &str, guest: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM ip_leases WHERE ip = ? AND guest_id = ?")
        .bind(ip)
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The highest VNC port leased on `node`.
pub async fn highest_vnc(tx: &mut Tx<'_>, node: &str) -> Result<Option<i64>, StoreError> {
    let (highest,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(port) FROM vnc_leases WHERE node_id = ?")
            .bind(node)
            .fetch_one(&mut **tx)
            .await?;
    Ok(highest)
}

/// Every VNC port leased on `node`.
pub async fn vnc_ports(tx: &mut Tx<'_>, node: &str) -> Result<Vec<i64>, StoreError> {
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT port FROM vnc_leases WHERE node_id = ?")
        .bind(node)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Leases VNC `port` on `node` to `guest`; false when it is taken.
pub async fn insert_vnc(
    tx: &mut Tx<'_>,
    node: &str,
    port: i64,
    guest: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query("INSERT INTO vnc_leases (node_id, port, guest_id) VALUES (?, ?, ?)")
        .bind(node)
        .bind(port)
        .bind(guest)
        .execute(&mut **tx)
        .await;
    unique(r)
}

/// Gives up `guest`'s VNC `port` on `node` (the other ports it holds stay).
pub async fn release_vnc(
    tx: &mut Tx<'_>,
    node: &str,
    port: i64,
    guest: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM vnc_leases WHERE node_id = ? AND port = ? AND guest_id = ?")
        .bind(node)
        .bind(port)
        .bind(guest)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Leases `mac` to `guest`; false when it is taken.
pub async fn insert_mac(tx: &mut Tx<'_>, mac: &str, guest: &str) -> Result<bool, StoreError> {
    let r = sqlx::query("INSERT INTO mac_leases (mac, guest_id) VALUES (?, ?)")
        .bind(mac)
        .bind(guest)
        .execute(&mut **tx)
        .await;
    unique(r)
}

/// Returns every lease `guest` holds.
pub async fn release_all(tx: &mut Tx<'_>, guest: &str) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM ip_leases WHERE guest_id = ?",
        "DELETE FROM vnc_leases WHERE guest_id = ?",
        "DELETE FROM mac_leases WHERE guest_id = ?",
    ] {
        sqlx::query(sql).bind(guest).execute(&mut **tx).await?;
    }
    Ok(())
}

/// Keeps a guest's leases, marked as waiting for its node's cleanup.
pub async fn mark_for_cleanup(tx: &mut Tx<'_>, guest: &str) -> Result<(), StoreError> {
    for sql in [
        "UPDATE ip_leases SET needs_cleanup = 1 WHERE guest_id = ?",
        "UPDATE vnc_leases SET needs_cleanup = 1 WHERE guest_id = ?",
        "UPDATE mac_leases SET needs_cleanup = 1 WHERE guest_id = ?",
    ] {
        sqlx::query(sql).bind(guest).execute(&mut **tx).await?;
    }
    Ok(())
}

/// Whether any of a guest's leases waits for cleanup.
pub async fn held_for_cleanup(tx: &mut Tx<'_>, guest: &str) -> Result<bool, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM ip_leases WHERE guest_id = ?1 AND needs_cleanup = 1) \
              + (SELECT COUNT(*) FROM vnc_leases WHERE guest_id = ?1 AND needs_cleanup = 1) \
              + (SELECT COUNT(*) FROM mac_leases WHERE guest_id = ?1 AND needs_cleanup = 1)",
    )
    .bind(guest)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n > 0)
}

/// Frees the leases a guest held for cleanup; whether there were any.
pub async fn release_cleaned(tx: &mut Tx<'_>, guest: &str) -> Result<bool, StoreError> {
    let mut any = false;
    for sql in [
        "DELETE FROM ip_leases WHERE guest_id = ? AND needs_cleanup = 1",
        "DELETE FROM vnc_leases WHERE guest_id = ? AND needs_cleanup = 1",
        "DELETE FROM mac_leases WHERE guest_id = ? AND needs_cleanup = 1",
    ] {
        any |= sqlx::query(sql)
            .bind(guest)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            > 0;
    }
    Ok(any)
}

/// Adds an allocatable range to a pool.
pub async fn insert_range(
    store: &super::Store,
    pool_id: &str,
    start: &str,
    end: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO ip_ranges (pool_id, start, end) VALUES (?, ?, ?)")
        .bind(pool_id)
        .bind(start)
        .bind(end)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// The leases among addresses `ips` (ip, guest), in no order: one lookup per address.
pub async fn leased_among(
    tx: &mut Tx<'_>,
    ips: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT l.ip, l.guest_id FROM json_each(?) AS a CROSS JOIN ip_leases AS l \
         ON l.ip = a.value",
    )
    .bind(serde_json::to_string(ips)?)
    .fetch_all(&mut **tx)
    .await?)
}

/// Marks `ip` of `pool` (`reserved` or `disabled`, with a note), or clears its mark
/// (`None`); whether anything changed.
pub async fn set_mark(
    tx: &mut Tx<'_>,
    ip: &str,
    pool_id: &str,
    mark: Option<(&str, &str)>,
) -> Result<bool, StoreError> {
    let r = match mark {
        None => {
            sqlx::query("DELETE FROM ip_marks WHERE ip = ? AND pool_id = ?")
                .bind(ip)
                .bind(pool_id)
                .execute(&mut **tx)
                .await?
        }
        Some((state, note)) => sqlx::query(
            "INSERT INTO ip_marks (ip, pool_id, state, note, created_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT(ip) DO UPDATE SET state = excluded.state, note = excluded.note, \
                 pool_id = excluded.pool_id",
        )
        .bind(ip)
        .bind(pool_id)
        .bind(state)
        .bind(note)
        .bind(crate::model::now_ms())
        .execute(&mut **tx)
        .await?,
    };
    Ok(r.rows_affected() > 0)
}
