-- 0001: the core table, one row per generation (successful or failed).
-- created_at is UTC text 'YYYY-MM-DD HH:MM:SS.SSS': it sorts, it compares with
-- datetime('now', '-7 days') as text, and SQLite's date functions read it.
CREATE TABLE generation_snapshots (
  id               TEXT PRIMARY KEY NOT NULL CHECK (length(id) = 26),  -- ULID
  org_id           TEXT NOT NULL,
  user_id          TEXT NOT NULL,
  platform         TEXT NOT NULL,
  template_id      TEXT NOT NULL,
  template_version TEXT,
  status           TEXT NOT NULL DEFAULT 'completed' CHECK (status IN ('completed', 'failed')),
  content          TEXT,
  error            TEXT,
  created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
                   CHECK (created_at GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9]*'
                          AND datetime(created_at) IS NOT NULL)
);
