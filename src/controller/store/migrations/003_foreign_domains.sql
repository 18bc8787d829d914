-- Domains on a node that corral does not manage (S16, S17), from its last inventory:
-- JSON [{"uuid", "name", "state"}]. Listed, never touched.
ALTER TABLE nodes ADD COLUMN foreign_domains TEXT NOT NULL DEFAULT '[]';
