-- VNC passwords are made by each node and never leave it; console access goes through
-- short-lived tickets (`POST /guests/{id}/console`). Those kept in clear are dropped.
UPDATE guests SET vnc_password = NULL;
