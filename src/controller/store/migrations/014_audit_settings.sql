-- The audit trail (S67): one row per write request, who (the token's user), from where
-- (the peer address), what (the API operation, method and path), on which object, and
-- the result (the HTTP status). Purged after `retention.audit_days` (S71).
CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    user_id   TEXT,
    user_name TEXT,
    address   TEXT NOT NULL,
    method    TEXT NOT NULL,
    path      TEXT NOT NULL,
    action    TEXT NOT NULL,
    object    TEXT,
    status    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user_id, seq);
CREATE INDEX IF NOT EXISTS audit_object ON audit (object, seq);

-- System settings kept in the database and changed through the API (S94): one JSON
-- document per key (`retention`, `smtp`).
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Finished operations and events are purged by age: their time columns are indexed.
CREATE INDEX IF NOT EXISTS operations_finished ON operations (finished_at);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
