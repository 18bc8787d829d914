-- What each node's guests take, kept by triggers in the same transaction as every change
-- to a guest row: placement reads one row per node instead of summing every guest.
-- Guests in state 'error' hold no memory or CPUs (they do not run), but count as guests.
CREATE TABLE IF NOT EXISTS node_usage (
    node_id    TEXT PRIMARY KEY,
    memory_mib INTEGER NOT NULL DEFAULT 0,
    cpus       INTEGER NOT NULL DEFAULT 0,
    guests     INTEGER NOT NULL DEFAULT 0
);

DELETE FROM node_usage;
INSERT INTO node_usage (node_id, memory_mib, cpus, guests)
SELECT node_id,
       COALESCE(SUM(CASE WHEN state != 'error' THEN memory_mib ELSE 0 END), 0),
       COALESCE(SUM(CASE WHEN state != 'error' THEN cpus ELSE 0 END), 0),
       COUNT(*)
FROM guests WHERE node_id IS NOT NULL GROUP BY node_id;

CREATE TRIGGER IF NOT EXISTS node_usage_insert AFTER INSERT ON guests
WHEN NEW.node_id IS NOT NULL
BEGIN
    INSERT INTO node_usage (node_id, memory_mib, cpus, guests)
    VALUES (NEW.node_id,
            CASE WHEN NEW.state != 'error' THEN NEW.memory_mib ELSE 0 END,
            CASE WHEN NEW.state != 'error' THEN NEW.cpus ELSE 0 END, 1)
    ON CONFLICT(node_id) DO UPDATE SET
        memory_mib = memory_mib + excluded.memory_mib,
        cpus = cpus + excluded.cpus,
        guests = guests + 1;
END;

CREATE TRIGGER IF NOT EXISTS node_usage_delete AFTER DELETE ON guests
WHEN OLD.node_id IS NOT NULL
BEGIN
    UPDATE node_usage SET
        memory_mib = memory_mib - CASE WHEN OLD.state != 'error' THEN OLD.memory_mib ELSE 0 END,
        cpus = cpus - CASE WHEN OLD.state != 'error' THEN OLD.cpus ELSE 0 END,
        guests = guests - 1
    WHERE node_id = OLD.node_id;
END;

CREATE TRIGGER IF NOT EXISTS node_usage_update AFTER UPDATE OF node_id, state, memory_mib, cpus ON guests
WHEN OLD.node_id IS NOT NEW.node_id OR (OLD.state = 'error') != (NEW.state = 'error')
     OR OLD.memory_mib != NEW.memory_mib OR OLD.cpus != NEW.cpus
BEGIN
    UPDATE node_usage SET
        memory_mib = memory_mib - CASE WHEN OLD.state != 'error' THEN OLD.memory_mib ELSE 0 END,
        cpus = cpus - CASE WHEN OLD.state != 'error' THEN OLD.cpus ELSE 0 END,
        guests = guests - 1
    WHERE OLD.node_id IS NOT NULL AND node_id = OLD.node_id;
    INSERT INTO node_usage (node_id, memory_mib, cpus, guests)
    SELECT NEW.node_id,
           CASE WHEN NEW.state != 'error' THEN NEW.memory_mib ELSE 0 END,
           CASE WHEN NEW.state != 'error' THEN NEW.cpus ELSE 0 END, 1
    WHERE NEW.node_id IS NOT NULL
    ON CONFLICT(node_id) DO UPDATE SET
        memory_mib = memory_mib + excluded.memory_mib,
        cpus = cpus + excluded.cpus,
        guests = guests + 1;
END;
