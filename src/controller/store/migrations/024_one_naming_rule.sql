-- One naming rule for every kind of object: a name is unique across the cloud (users,
-- pools, guests, templates and scripts were already; data disks were unique per owner).
-- A lookup by name then lands on one object or none: never on another user's by chance.
-- Data disks that shared a name get their id's first 8 hex digits appended.
UPDATE disks SET name = name || '-' || substr(id, 1, 8)
 WHERE kind = 'data'
   AND rowid NOT IN (SELECT min(rowid) FROM disks WHERE kind = 'data' GROUP BY name);
DROP INDEX IF EXISTS disks_owner_name;
CREATE UNIQUE INDEX IF NOT EXISTS disks_name ON disks (name) WHERE kind = 'data';
