-- HA (S74): a guest's flag, why its state is what it is when corral could not act (for
-- example "its node's fence failed"), and each node's fence command (JSON argv, its
-- program a file in the controller's fence directory) with when it was last fenced and
-- when a failover was last started for it.
ALTER TABLE guests ADD COLUMN ha INTEGER NOT NULL DEFAULT 0;
ALTER TABLE guests ADD COLUMN state_reason TEXT;
ALTER TABLE nodes ADD COLUMN fence_command TEXT;
ALTER TABLE nodes ADD COLUMN fenced_at INTEGER;
ALTER TABLE nodes ADD COLUMN failover_at INTEGER;
