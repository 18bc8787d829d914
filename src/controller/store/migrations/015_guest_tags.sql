-- Tags on guests (S61): a JSON array of short labels, for grouping and filtering lists.
ALTER TABLE guests ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
