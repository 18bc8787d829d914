-- corral controller schema (SQLite). Applied at start; every statement is idempotent.
-- Timestamps are milliseconds since the Unix epoch.

CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,          -- argon2id PHC string
    is_admin      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS tokens (
    hash       TEXT PRIMARY KEY,          -- sha256 of the bearer token; the token is never stored
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS nodes (
    id              TEXT PRIMARY KEY,     -- /etc/machine-id unless overridden
    hostname        TEXT NOT NULL,
    facts           TEXT NOT NULL,        -- JSON NodeFacts of the last heartbeat
    accept_auto     INTEGER NOT NULL DEFAULT 1,
    online          INTEGER NOT NULL DEFAULT 1,
    last_seen       INTEGER NOT NULL,     -- node clock of the last heartbeat
    last_seen_local INTEGER NOT NULL,     -- controller clock when it arrived (liveness)
    offline_since   INTEGER,
    created_at      INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS templates (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    path           TEXT NOT NULL,        -- full path of the qcow2 image on the nodes (S07)
    os_type        TEXT NOT NULL,        -- linux | windows (S37)
    min_memory_mib INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS ip_pools (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    cidr        TEXT NOT NULL,
    range_start TEXT NOT NULL,
    range_end   TEXT NOT NULL,
    gateway     TEXT,
    dns         TEXT NOT NULL,           -- JSON array
    created_at  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS guests (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    hostname     TEXT NOT NULL,
    template_id  TEXT NOT NULL,
    template_path TEXT NOT NULL,         -- kept so deleting a template record never breaks the guest (S53)
    os_type      TEXT NOT NULL,
    cpus         INTEGER NOT NULL,
    memory_mib   INTEGER NOT NULL,
    node_id      TEXT,
    requested_node TEXT,
    pool_id      TEXT,
    requested_ip TEXT,
    ip           TEXT,
    vnc_port     INTEGER,
    vnc_password TEXT,
    mac          TEXT,
    state        TEXT NOT NULL,
    lock_op      TEXT,                   -- the operation holding this guest: one at a time
    domain_xml   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- Allocations: unique constraints make double allocation impossible under any concurrency.
CREATE TABLE IF NOT EXISTS ip_leases (
    ip       TEXT PRIMARY KEY,
    pool_id  TEXT NOT NULL,
    guest_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vnc_leases (
    node_id  TEXT NOT NULL,
    port     INTEGER NOT NULL,
    guest_id TEXT NOT NULL,
    PRIMARY KEY (node_id, port)
);
CREATE TABLE IF NOT EXISTS mac_leases (
    mac      TEXT PRIMARY KEY,
    guest_id TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS disks (
    id         TEXT PRIMARY KEY,
    guest_id   TEXT,
    node_id    TEXT NOT NULL,
    path       TEXT NOT NULL,            -- full path (S04)
    kind       TEXT NOT NULL,            -- system | seed
    backing    TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (node_id, path)
);

CREATE TABLE IF NOT EXISTS operations (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    guest_id     TEXT,
    node_id      TEXT,
    state        TEXT NOT NULL,
    steps        TEXT NOT NULL,          -- JSON [StepRecord]
    cursor       INTEGER NOT NULL DEFAULT 0,
    payload      TEXT NOT NULL,          -- JSON, per kind
    stage        TEXT NOT NULL DEFAULT '',
    percent      INTEGER NOT NULL DEFAULT 0,
    message      TEXT NOT NULL DEFAULT '',
    error        TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    inflight_node TEXT,                  -- node holding one of its steps right now (the window)
    requested_by TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    updated_at   INTEGER NOT NULL,
    finished_at  INTEGER
);
CREATE INDEX IF NOT EXISTS operations_state ON operations (state);
CREATE INDEX IF NOT EXISTS operations_guest ON operations (guest_id);
CREATE INDEX IF NOT EXISTS operations_inflight ON operations (inflight_node);

CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL,
    data    TEXT NOT NULL
);
