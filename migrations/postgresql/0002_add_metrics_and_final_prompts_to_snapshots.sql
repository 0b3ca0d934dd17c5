-- 0002: the spec's columns. Final prompts exactly as sent (text: PostgreSQL
-- text holds any UTF-8 except NUL, which genaudit refuses up front). The metric
-- documents are json, not jsonb: json validates the document and keeps its
-- text as written (key order, every digit of a cost), so the stored record is
-- the bytes genaudit built; jsonb would re-order keys and re-format numbers.
ALTER TABLE generation_snapshots ADD COLUMN final_system_prompt text;
ALTER TABLE generation_snapshots ADD COLUMN final_user_prompt text;
ALTER TABLE generation_snapshots ADD COLUMN token_metrics json;
ALTER TABLE generation_snapshots ADD COLUMN performance_metrics json;
ALTER TABLE generation_snapshots ADD COLUMN repair_metrics json;
