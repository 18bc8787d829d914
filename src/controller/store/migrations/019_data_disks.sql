-- Data disks (day-2 storage): a disk of kind `data` lives on its own. It has an owner, a
-- name, a size and I/O limits; while attached it names its guest (guest_id) and the
-- device the guest sees (target). `lock_op` is the operation working on it, so two
-- operations never act on one disk at once.
ALTER TABLE disks ADD COLUMN name TEXT;
ALTER TABLE disks ADD COLUMN owner_id TEXT;
ALTER TABLE disks ADD COLUMN size_mib INTEGER;
ALTER TABLE disks ADD COLUMN target TEXT;
ALTER TABLE disks ADD COLUMN iotune TEXT;
ALTER TABLE disks ADD COLUMN state TEXT NOT NULL DEFAULT 'ready';
ALTER TABLE disks ADD COLUMN lock_op TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS disks_owner_name ON disks (owner_id, name) WHERE kind = 'data';
