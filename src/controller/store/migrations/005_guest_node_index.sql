-- Placement sums each node's guests: index them by node.
CREATE INDEX IF NOT EXISTS guests_node ON guests (node_id);
