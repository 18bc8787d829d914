-- Ownership by immutable user id: a user deleted and another created with the same name
-- must not inherit anything. Rows from before are matched to the user who had the name
-- when this migration ran; a name no user has any more matches nobody.
ALTER TABLE operations ADD COLUMN requested_by_id TEXT;
UPDATE operations SET requested_by_id = (SELECT id FROM users WHERE users.name = operations.requested_by);
CREATE INDEX IF NOT EXISTS operations_requested_by_id ON operations (requested_by_id, created_at, id);
ALTER TABLE boot_jobs ADD COLUMN requested_by_id TEXT;
UPDATE boot_jobs SET requested_by_id = (SELECT id FROM users WHERE users.name = boot_jobs.requested_by);
ALTER TABLE scripts ADD COLUMN owner_id TEXT;
UPDATE scripts SET owner_id = (SELECT id FROM users WHERE users.name = scripts.created_by);
ALTER TABLE scripts ADD COLUMN public INTEGER NOT NULL DEFAULT 0;
