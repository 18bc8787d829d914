-- What an abandoned or failed undo left on a node: run there when it is (back) online,
-- before it takes new work, and retried by the janitor until it succeeds.
CREATE TABLE IF NOT EXISTS node_cleanup (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id     TEXT NOT NULL,
    guest_id    TEXT,
    op_id       TEXT,                  -- the operation that left it
    action      TEXT NOT NULL,         -- JSON NodeAction: destroy, undefine or remove_file
    reason      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    tried_at    INTEGER,               -- the last run's time: the janitor's backoff
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS node_cleanup_node ON node_cleanup (node_id);
CREATE INDEX IF NOT EXISTS node_cleanup_guest ON node_cleanup (guest_id);

-- Leases an undo could not give back (the node may still use them): held until the
-- node's cleanup confirms the objects are gone.
ALTER TABLE ip_leases ADD COLUMN needs_cleanup INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vnc_leases ADD COLUMN needs_cleanup INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mac_leases ADD COLUMN needs_cleanup INTEGER NOT NULL DEFAULT 0;

-- Why an operation is being ended from outside (a node's removal), shown when it ends.
ALTER TABLE operations ADD COLUMN abandon_reason TEXT;
