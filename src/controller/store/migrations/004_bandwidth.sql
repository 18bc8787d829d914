-- Per-guest NIC traffic limits (S54): JSON Bandwidth, NULL = unlimited.
ALTER TABLE guests ADD COLUMN bandwidth TEXT;
