-- IP address management: pools bound to a network, several ranges per pool, and address
-- marks (reserved = blacklist / VIP, disabled = taken out of service).

ALTER TABLE ip_pools ADD COLUMN bridge TEXT NOT NULL DEFAULT '';
ALTER TABLE ip_pools ADD COLUMN vlan INTEGER;

CREATE TABLE IF NOT EXISTS ip_ranges (
    pool_id TEXT NOT NULL,
    start   TEXT NOT NULL,
    end     TEXT NOT NULL,
    PRIMARY KEY (pool_id, start)
);
INSERT OR IGNORE INTO ip_ranges (pool_id, start, end) SELECT id, range_start, range_end FROM ip_pools;

CREATE TABLE IF NOT EXISTS ip_marks (
    ip         TEXT PRIMARY KEY,
    pool_id    TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('reserved', 'disabled')),
    note       TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);
