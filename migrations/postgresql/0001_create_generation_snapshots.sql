-- 0001: the core table, one row per generation (successful or failed).
-- created_at is a timestamptz at millisecond precision; genaudit's
-- connections run in UTC and return it as 'YYYY-MM-DD HH:MM:SS.SSS', the
-- SQLite store's text, so reports and exports read the same on both stores.
-- Identifiers compare and sort bytewise (COLLATE "C"), as in SQLite, whatever
-- the database's locale.
CREATE TABLE generation_snapshots (
  id               text COLLATE "C" PRIMARY KEY CHECK (length(id) = 26),  -- ULID
  org_id           text COLLATE "C" NOT NULL,
  user_id          text COLLATE "C" NOT NULL,
  platform         text COLLATE "C" NOT NULL,
  template_id      text COLLATE "C" NOT NULL,
  template_version text COLLATE "C",
  status           text COLLATE "C" NOT NULL DEFAULT 'completed' CHECK (status IN ('completed', 'failed')),
  content          text,
  error            text,
  created_at       timestamptz(3) NOT NULL DEFAULT now()
);
