-- Roles and ownership. Records from before owners existed belong to no user: only
-- administrators and operators see them.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'user'
    CHECK (role IN ('admin', 'operator', 'user'));
UPDATE users SET role = 'admin' WHERE is_admin = 1;
ALTER TABLE guests ADD COLUMN owner_id TEXT;
CREATE INDEX IF NOT EXISTS guests_owner ON guests (owner_id, created_at, name);
ALTER TABLE templates ADD COLUMN owner_id TEXT;
ALTER TABLE templates ADD COLUMN public INTEGER NOT NULL DEFAULT 1;
CREATE INDEX IF NOT EXISTS operations_requested_by ON operations (requested_by, created_at, id);
