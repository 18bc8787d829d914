-- A node is trusted for its work, not for its claims. `accepted` is what an administrator
-- accepted of a node's capacity and directories (first: what it showed at its first
-- heartbeat after enrollment); `claimed` is its latest heartbeat as sent. `facts` is what
-- placement and every other reader use: the claim bounded by what was accepted.
ALTER TABLE nodes ADD COLUMN accepted TEXT;
ALTER TABLE nodes ADD COLUMN claimed TEXT;
