-- Enrolled nodes (issue: nodes obey only the controller). Each has its own Redis ACL
-- user; only the SHA-256 of its secret is kept, the form `ACL SETUSER #<hash>` takes,
-- so the controller can re-install the user after Redis lost it without knowing the
-- secret. The controller reads the event streams of these nodes only.
CREATE TABLE IF NOT EXISTS node_credentials (
    node_id       TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    rotated_at    INTEGER NOT NULL
);
