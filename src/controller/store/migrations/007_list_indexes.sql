-- Lists read one page, not the table: each list order (and each filter it is read with)
-- has an index in that order, so SQLite walks it and stops after LIMIT + OFFSET rows
-- instead of scanning and sorting every row.
CREATE INDEX IF NOT EXISTS guests_list ON guests (created_at, name);
CREATE INDEX IF NOT EXISTS guests_state_list ON guests (state, created_at, name);
CREATE INDEX IF NOT EXISTS guests_node_list ON guests (node_id, created_at, name);
-- guests_node_list leads with node_id: it serves what guests_node did.
DROP INDEX IF EXISTS guests_node;
CREATE INDEX IF NOT EXISTS operations_list ON operations (created_at, id);
CREATE INDEX IF NOT EXISTS operations_state_list ON operations (state, created_at, id);
CREATE INDEX IF NOT EXISTS operations_kind_list ON operations (kind, created_at, id);

-- A page of guests reads its disks by guest; a pool's figures read its leases and marks.
CREATE INDEX IF NOT EXISTS disks_guest ON disks (guest_id);
CREATE INDEX IF NOT EXISTS ip_leases_pool ON ip_leases (pool_id);
CREATE INDEX IF NOT EXISTS ip_marks_pool ON ip_marks (pool_id);

-- Deleting a guest returns its leases: found by guest, not by scanning every lease.
CREATE INDEX IF NOT EXISTS ip_leases_guest ON ip_leases (guest_id);
CREATE INDEX IF NOT EXISTS vnc_leases_guest ON vnc_leases (guest_id);
CREATE INDEX IF NOT EXISTS mac_leases_guest ON mac_leases (guest_id);
