//! The metrics database: its own SQLite file beside the main one (`metrics.db`).
//!
//! Its own file, because samples are the controller's busiest writes (100 nodes × 100
//! guests every 15 s is 667 samples a second) and must never queue behind, or hold up,
//! an operation's transaction in the main database. Losing it loses history, never state.
//!
//! Tables (see `codec.rs` for the blobs):
//! * `subjects`: a node or a guest by kind and id, numbered (the samples carry the number);
//! * `names`: series names, numbered;
//! * `raw (subject, ts)`: one row per sample, kept `retention.metrics_raw_hours`;
//! * `rollup (subject, bucket)`: one row per 5-minute bucket, kept `retention.metrics_days`.
//!
//! A rollup is brought up to date as each sample is written, in the same transaction, and
//! only when the sample was new (a replayed event is ignored whole): there is no rollup
//! job to fall behind or to crash half-way, late samples land in their own bucket, and the
//! current bucket is always queryable.
//!
//! For PostgreSQL the same three tables work as they are (`bytea` blobs, `bigint` times,
//! `ON CONFLICT DO NOTHING`); only this file knows SQL.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Mutex;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::codec::{self, Agg};
use super::query::BUCKET_MS;
use super::MetricsError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subjects (
    id   INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    UNIQUE (kind, key)
);
CREATE TABLE IF NOT EXISTS names (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS raw (
    subject INTEGER NOT NULL,
    ts      INTEGER NOT NULL,
    vals    BLOB NOT NULL,
    PRIMARY KEY (subject, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup (
    subject INTEGER NOT NULL,
    bucket  INTEGER NOT NULL,
    vals    BLOB NOT NULL,
    PRIMARY KEY (subject, bucket)
) WITHOUT ROWID;
";

/// Series ids are u16 in the blobs: more names than this are refused.
const MAX_NAMES: usize = 60_000;

/// One sample to write: whose, when (ms), which values.
pub struct SampleRow<'a> {
    pub kind: &'a str,
    pub key: &'a str,
    pub ts: i64,
    pub values: Vec<(&'a str, f64)>,
}

pub struct Db {
    writer: SqlitePool,
    reader: SqlitePool,
    subjects: Mutex<HashMap<(String, String), i64>>,
    names: Mutex<Names>,
}

#[derive(Default)]
struct Names {
    ids: HashMap<String, u16>,
    by_id: HashMap<u16, String>,
}

fn pool_opts(path: &Path) -> Result<SqliteConnectOptions, MetricsError> {
    Ok(
        SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(10)),
    )
}

impl Db {
    pub async fn open(path: &Path) -> Result<Db, MetricsError> {
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| MetricsError::Open(path.display().to_string(), e))?;
        }
        let opts = pool_opts(path)?;
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await?;
        let db = Db {
            writer,
            reader,
            subjects: Mutex::new(HashMap::new()),
            names: Mutex::new(Names::default()),
        };
        db.load_names().await?;
        Ok(db)
    }

    async fn load_names(&self) -> Result<(), MetricsError> {
        let rows: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM names")
            .fetch_all(&self.reader)
            .await?;
        let mut n = self.names.lock().map_err(|_| MetricsError::Poisoned)?;
        for (id, name) in rows {
            let id = id as u16;
            n.ids.insert(name.clone(), id);
            n.by_id.insert(id, name);
        }
        Ok(())
    }

    /// The series name of an id.
    pub fn name(&self, id: u16) -> Option<String> {
        self.names.lock().ok()?.by_id.get(&id).cloned()
    }

    /// The id of a subject, if it has any history.
    pub async fn subject(&self, kind: &str, key: &str) -> Result<Option<i64>, MetricsError> {
        let k = (kind.to_string(), key.to_string());
        if let Some(id) = self.subjects.lock().ok().and_then(|m| m.get(&k).copied()) {
            return Ok(Some(id));
        }
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM subjects WHERE kind = ? AND key = ?")
                .bind(kind)
                .bind(key)
                .fetch_optional(&self.reader)
                .await?;
        if let (Some(id), Ok(mut m)) = (id, self.subjects.lock()) {
            m.insert(k, id);
        }
        Ok(id)
    }

    /// Writes samples in one transaction; answers how many were new.
    pub async fn write(&self, rows: &[SampleRow<'_>]) -> Result<u64, MetricsError> {
        let mut tx = self.writer.begin().await?;
        let mut new = 0;
        for r in rows {
            let subject = self.subject_in(&mut tx, r.kind, r.key).await?;
            let mut sample = Vec::with_capacity(r.values.len());
            for (name, v) in &r.values {
                sample.push((self.name_in(&mut tx, name).await?, *v as f32));
            }
            let inserted =
                sqlx::query("INSERT OR IGNORE INTO raw (subject, ts, vals) VALUES (?, ?, ?)")
                    .bind(subject)
                    .bind(r.ts)
                    .bind(codec::encode_sample(&sample))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if inserted == 0 {
                continue; // a replay: its rollup already counts it
            }
            new += 1;
            let bucket = r.ts.div_euclid(BUCKET_MS) * BUCKET_MS;
            let old: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT vals FROM rollup WHERE subject = ? AND bucket = ?")
                    .bind(subject)
                    .bind(bucket)
                    .fetch_optional(&mut *tx)
                    .await?;
            sqlx::query("INSERT OR REPLACE INTO rollup (subject, bucket, vals) VALUES (?, ?, ?)")
                .bind(subject)
                .bind(bucket)
                .bind(codec::add_to_rollup(old.as_deref().unwrap_or(&[]), &sample))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    async fn subject_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        kind: &str,
        key: &str,
    ) -> Result<i64, MetricsError> {
        let k = (kind.to_string(), key.to_string());
        if let Some(id) = self.subjects.lock().ok().and_then(|m| m.get(&k).copied()) {
            return Ok(id);
        }
        sqlx::query("INSERT OR IGNORE INTO subjects (kind, key) VALUES (?, ?)")
            .bind(kind)
            .bind(key)
            .execute(&mut **tx)
            .await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM subjects WHERE kind = ? AND key = ?")
            .bind(kind)
            .bind(key)
            .fetch_one(&mut **tx)
            .await?;
        if let Ok(mut m) = self.subjects.lock() {
            m.insert(k, id);
        }
        Ok(id)
    }

    async fn name_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        name: &str,
    ) -> Result<u16, MetricsError> {
        {
            let n = self.names.lock().map_err(|_| MetricsError::Poisoned)?;
            if let Some(id) = n.ids.get(name) {
                return Ok(*id);
            }
            if n.ids.len() >= MAX_NAMES {
                return Err(MetricsError::TooManyNames);
            }
        }
        sqlx::query("INSERT OR IGNORE INTO names (name) VALUES (?)")
            .bind(name)
            .execute(&mut **tx)
            .await?;
        let id: i64 = sqlx::query_scalar("SELECT id FROM names WHERE name = ?")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
        let id = u16::try_from(id).map_err(|_| MetricsError::TooManyNames)?;
        let mut n = self.names.lock().map_err(|_| MetricsError::Poisoned)?;
        n.ids.insert(name.to_string(), id);
        n.by_id.insert(id, name.to_string());
        Ok(id)
    }

    /// Raw samples of a subject in `[from, to)`, as (time, series, one-sample aggregate).
    pub async fn raw(
        &self,
        subject: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, u16, Agg)>, MetricsError> {
        let rows = sqlx::query(
            "SELECT ts, vals FROM raw WHERE subject = ? AND ts >= ? AND ts < ? ORDER BY ts",
        )
        .bind(subject)
        .bind(from)
        .bind(to)
        .fetch_all(&self.reader)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let ts: i64 = r.try_get(0)?;
            let vals: Vec<u8> = r.try_get(1)?;
            out.extend(
                codec::decode_sample(&vals)
                    .into_iter()
                    .map(|(id, v)| (ts, id, Agg::of(v))),
            );
        }
        Ok(out)
    }

    /// Rollups of a subject whose buckets start in `[from, to)`.
    pub async fn rollups(
        &self,
        subject: i64,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, u16, Agg)>, MetricsError> {
        let rows = sqlx::query(
            "SELECT bucket, vals FROM rollup WHERE subject = ? AND bucket >= ? AND bucket < ? ORDER BY bucket",
        )
        .bind(subject)
        .bind(from.div_euclid(BUCKET_MS) * BUCKET_MS)
        .bind(to)
        .fetch_all(&self.reader)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let b: i64 = r.try_get(0)?;
            let vals: Vec<u8> = r.try_get(1)?;
            out.extend(
                codec::decode_rollup(&vals)
                    .into_iter()
                    .map(|(id, a)| (b, id, a)),
            );
        }
        Ok(out)
    }

    /// Removes raw samples older than `raw_before` and rollups older than
    /// `rollup_before` (ms), subject by subject so that each delete walks the primary key
    /// and the writer is free in between. Answers (samples, rollups) removed.
    pub async fn purge(
        &self,
        raw_before: i64,
        rollup_before: i64,
    ) -> Result<(u64, u64), MetricsError> {
        let subjects: Vec<i64> = sqlx::query_scalar("SELECT id FROM subjects")
            .fetch_all(&self.reader)
            .await?;
        let (mut raw, mut rollups) = (0, 0);
        for chunk in subjects.chunks(200) {
            let mut tx = self.writer.begin().await?;
            for s in chunk {
                raw += sqlx::query("DELETE FROM raw WHERE subject = ? AND ts < ?")
                    .bind(s)
                    .bind(raw_before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                rollups += sqlx::query("DELETE FROM rollup WHERE subject = ? AND bucket < ?")
                    .bind(s)
                    .bind(rollup_before.div_euclid(BUCKET_MS) * BUCKET_MS)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
        }
        Ok((raw, rollups))
    }

    /// Compacts the file and answers its size (bytes), for the bench.
    pub async fn vacuum(&self) -> Result<f64, MetricsError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await?;
        sqlx::query("VACUUM").execute(&self.writer).await?;
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&self.writer)
            .await?;
        let size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&self.writer)
            .await?;
        Ok((pages * size) as f64)
    }

    /// Row counts (samples, rollups), for the bench and the tests.
    pub async fn counts(&self) -> Result<(i64, i64), MetricsError> {
        let raw: i64 = sqlx::query_scalar("SELECT count(*) FROM raw")
            .fetch_one(&self.reader)
            .await?;
        let rollups: i64 = sqlx::query_scalar("SELECT count(*) FROM rollup")
            .fetch_one(&self.reader)
            .await?;
        Ok((raw, rollups))
    }
}
