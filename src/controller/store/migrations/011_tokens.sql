-- Named API tokens with an expiry, listed and revoked by id (the bearer value itself is
-- never stored: `hash` is its SHA-256).
ALTER TABLE tokens ADD COLUMN id TEXT;
ALTER TABLE tokens ADD COLUMN name TEXT NOT NULL DEFAULT 'login';
ALTER TABLE tokens ADD COLUMN expires_at INTEGER;   -- ms since the epoch; NULL: never
UPDATE tokens SET id = lower(hex(randomblob(16))) WHERE id IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS tokens_id ON tokens (id);
CREATE INDEX IF NOT EXISTS tokens_user ON tokens (user_id);
