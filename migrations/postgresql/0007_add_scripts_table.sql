-- 0007: the exact code that took part in a generation. Every template, rule
-- and policy script a snapshot names in repair_metrics.scripts is stored here
-- once, under the SHA-256 of its bytes (content-addressed): `source` is the
-- bytes themselves (encoding 'text': UTF-8 without NUL) or their base64
-- (encoding 'base64'); the digest is always over the raw bytes. first_seen is
-- text in the SQLite store's format (YYYY-MM-DD HH:MM:SS.mmm, UTC). Rows are
-- audit records like the snapshots: UPDATE, DELETE and TRUNCATE are refused.
CREATE TABLE scripts (
  digest text COLLATE "C" PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{64}$'),
  path text NOT NULL,
  encoding text COLLATE "C" NOT NULL CHECK (encoding IN ('text', 'base64')),
  source text NOT NULL,
  first_seen text COLLATE "C" NOT NULL
    DEFAULT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')
);
CREATE FUNCTION scripts_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'scripts rows are immutable';
END
$$;
CREATE TRIGGER scripts_immutable
BEFORE UPDATE OR DELETE ON scripts
FOR EACH ROW EXECUTE FUNCTION scripts_immutable();
CREATE TRIGGER scripts_no_truncate
BEFORE TRUNCATE ON scripts
FOR EACH STATEMENT EXECUTE FUNCTION scripts_immutable();
