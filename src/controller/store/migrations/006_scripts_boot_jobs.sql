-- Rhai scripts users wrote: OS-init profiles (kind 'os-init') and boot jobs (kind 'boot').
-- Shipped scripts are compiled into the binary and never stored here.
CREATE TABLE IF NOT EXISTS scripts (
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, name)
);

-- The profile a template's guests get (NULL: the default for its OS type), and the one
-- each guest was created with (S02).
ALTER TABLE templates ADD COLUMN os_init_profile TEXT;
ALTER TABLE guests ADD COLUMN os_init_profile TEXT;
-- The initial password's hash and SSH keys, for profiles applied again (seed rebuilds).
ALTER TABLE guests ADD COLUMN init_secrets TEXT;
-- Set when the guest booted and its pending boot jobs have not been looked at since.
ALTER TABLE guests ADD COLUMN boot_pending INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS guests_boot_pending ON guests (boot_pending) WHERE boot_pending = 1;

-- Boot jobs queued for guests (S14, S18, S19, S21). params never hold a password: only
-- its crypt hash.
CREATE TABLE IF NOT EXISTS boot_jobs (
    id           TEXT PRIMARY KEY,
    guest_id     TEXT NOT NULL,
    script       TEXT NOT NULL,
    params       TEXT NOT NULL,          -- JSON object
    system       INTEGER NOT NULL,       -- queued by corral itself; hidden by default (S21)
    state        TEXT NOT NULL,          -- pending | running | done | failed | cancelled
    operation_id TEXT,                   -- the run that claimed it
    actions      TEXT,                   -- JSON [AgentAction] the script produced for that run
    results      TEXT,                   -- JSON per-action results of the last run
    error        TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    requested_by TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER
);
CREATE INDEX IF NOT EXISTS boot_jobs_guest ON boot_jobs (guest_id, state);
CREATE INDEX IF NOT EXISTS boot_jobs_state ON boot_jobs (state);
