-- When a guest's state last changed (ms, the controller's clock), kept by a trigger for
-- every writer: a node's observation made before that moment is stale and ignored (an
-- inventory listed just before a start must not turn the started guest back to shutoff).
ALTER TABLE guests ADD COLUMN state_at INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER IF NOT EXISTS guests_state_at AFTER UPDATE OF state ON guests
WHEN OLD.state != NEW.state
BEGIN
    UPDATE guests SET state_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE id = NEW.id;
END;
