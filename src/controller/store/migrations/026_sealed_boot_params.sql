-- The values of the parameters a boot script declares secret (its `fn secrets()`) are kept
-- sealed here, apart from `params` (which shows them as "***"), and deleted once the job
-- has ended. Jobs that ended before this version lose the one secret corral's own jobs
-- carried in clear: a reset's password hash.
ALTER TABLE boot_jobs ADD COLUMN sealed_params TEXT;
UPDATE boot_jobs SET params = json_set(params, '$.password_hash', '***')
 WHERE json_valid(params)
   AND json_extract(params, '$.password_hash') IS NOT NULL
   AND state IN ('done', 'failed', 'cancelled');
