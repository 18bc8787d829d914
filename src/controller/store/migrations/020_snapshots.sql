-- Guest snapshots (S80): internal qcow2 snapshots taken through libvirt, one row each.
-- Their operations hold the guest, so snapshot work on one guest is exclusive (S83).
CREATE TABLE IF NOT EXISTS snapshots (
    id          TEXT PRIMARY KEY,
    guest_id    TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT,
    state       TEXT NOT NULL,          -- creating | ready
    vm_state    TEXT,                   -- the guest's state it holds: running or shutoff
    quiesced    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    UNIQUE (guest_id, name)
);
