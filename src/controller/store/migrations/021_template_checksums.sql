-- Templates made by corral (from a guest or a snapshot) carry the SHA-256 and size of
-- their image, computed by the node that wrote it.
ALTER TABLE templates ADD COLUMN sha256 TEXT;
ALTER TABLE templates ADD COLUMN size_bytes INTEGER;
