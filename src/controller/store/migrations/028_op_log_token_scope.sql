-- Each operation's own log (S31): the controller's lines (written with the state change
-- they describe) and the node's (sent with the step's result), by step and attempt. A
-- node line is numbered within its step's attempt, so a replayed result adds nothing.
-- The lines go with their operation (retention).
CREATE TABLE IF NOT EXISTS op_log (
    id        INTEGER PRIMARY KEY,
    op_id     TEXT NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
    at        INTEGER NOT NULL,
    source    TEXT NOT NULL,            -- 'controller' or 'node:<id>'
    step      INTEGER,
    step_name TEXT,
    attempt   INTEGER,
    undo      INTEGER NOT NULL DEFAULT 0,
    n         INTEGER,                  -- a node line's number within its attempt
    level     TEXT NOT NULL,
    message   TEXT NOT NULL,
    detail    TEXT NOT NULL DEFAULT '',
    UNIQUE (op_id, source, step, attempt, undo, n)
);
CREATE INDEX IF NOT EXISTS op_log_op ON op_log (op_id, id);

-- What a token may do: 'api' (everything its user may), or 'metrics' (only scrape
-- /metrics, for Prometheus).
ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'api';
