-- A boot job runs the script's source as it was when the job was queued: its author
-- changing the script later changes no job already queued. NULL: queued before this
-- column existed (the script's current source is used).
ALTER TABLE boot_jobs ADD COLUMN source TEXT;
