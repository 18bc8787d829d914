-- Password recovery by mail (S33): a user's address, and the digests of the single-use
-- links sent to it (the link itself is never stored).
ALTER TABLE users ADD COLUMN email TEXT;
CREATE TABLE IF NOT EXISTS password_resets (
    hash       TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);
