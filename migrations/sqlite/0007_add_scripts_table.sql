-- 0007: the exact code that took part in a generation. Every template, rule
-- and policy script a snapshot names in repair_metrics.scripts is stored here
-- once, under the SHA-256 of its bytes (content-addressed): `source` is the
-- bytes themselves (encoding 'text': UTF-8 without NUL) or their base64
-- (encoding 'base64'); the digest is always over the raw bytes. Rows are
-- audit records like the snapshots: UPDATE and DELETE are refused.
CREATE TABLE scripts (
  digest TEXT PRIMARY KEY NOT NULL CHECK (length(digest) = 64 AND digest NOT GLOB '*[^0-9a-f]*'),
  path TEXT NOT NULL,
  encoding TEXT NOT NULL CHECK (encoding IN ('text', 'base64')),
  source TEXT NOT NULL,
  first_seen TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
CREATE TRIGGER scripts_immutable
BEFORE UPDATE ON scripts
BEGIN
  SELECT RAISE(ABORT, 'scripts rows are immutable');
END;
CREATE TRIGGER scripts_undeletable
BEFORE DELETE ON scripts
BEGIN
  SELECT RAISE(ABORT, 'scripts rows are immutable');
END;
