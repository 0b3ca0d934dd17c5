-- 0002: the spec's columns. Final prompts exactly as sent (TEXT: SQLite's
-- LONGTEXT); the three metric documents must be valid JSON.
ALTER TABLE generation_snapshots ADD COLUMN final_system_prompt TEXT;
ALTER TABLE generation_snapshots ADD COLUMN final_user_prompt TEXT;
ALTER TABLE generation_snapshots ADD COLUMN token_metrics TEXT
  CHECK (token_metrics IS NULL OR json_valid(token_metrics));
ALTER TABLE generation_snapshots ADD COLUMN performance_metrics TEXT
  CHECK (performance_metrics IS NULL OR json_valid(performance_metrics));
ALTER TABLE generation_snapshots ADD COLUMN repair_metrics TEXT
  CHECK (repair_metrics IS NULL OR json_valid(repair_metrics));
