-- A guest's ceiling for live resizing (S75): the vCPUs and memory its domain is defined
-- with, up to which it can grow while running (vCPU hot-plug, balloon). NULL: the same
-- as its current size, i.e. no live growth (guests from before this column).
ALTER TABLE guests ADD COLUMN max_cpus INTEGER;
ALTER TABLE guests ADD COLUMN max_memory_mib INTEGER;
