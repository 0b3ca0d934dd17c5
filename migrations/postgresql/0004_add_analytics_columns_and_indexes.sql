-- 0004: STORED generated columns over the metric documents (computed once, at
-- insert), and the same covering indexes as the SQLite store, for the reports.
ALTER TABLE generation_snapshots ADD COLUMN estimated_cost double precision
  GENERATED ALWAYS AS ((token_metrics ->> 'estimated_cost')::double precision) STORED;
ALTER TABLE generation_snapshots ADD COLUMN total_tokens bigint
  GENERATED ALWAYS AS ((token_metrics ->> 'total_tokens')::bigint) STORED;
ALTER TABLE generation_snapshots ADD COLUMN total_latency_ms double precision
  GENERATED ALWAYS AS ((performance_metrics ->> 'total_latency_ms')::double precision) STORED;
ALTER TABLE generation_snapshots ADD COLUMN provider_latency_ms double precision
  GENERATED ALWAYS AS ((performance_metrics ->> 'provider_latency_ms')::double precision) STORED;
ALTER TABLE generation_snapshots ADD COLUMN model_identifier text COLLATE "C"
  GENERATED ALWAYS AS (performance_metrics ->> 'model_identifier') STORED;
ALTER TABLE generation_snapshots ADD COLUMN repair_count integer
  GENERATED ALWAYS AS ((repair_metrics ->> 'repair_count')::integer) STORED;
ALTER TABLE generation_snapshots ADD COLUMN initial_validation_score double precision
  GENERATED ALWAYS AS ((repair_metrics ->> 'initial_validation_score')::double precision) STORED;

-- Financial Test: avg(estimated_cost) WHERE template_id = ? [AND created_at >= ?]
CREATE INDEX snapshots_template_time ON generation_snapshots
  (template_id, created_at, estimated_cost, total_tokens, repair_count);
-- Stability Test: WHERE created_at >= ? GROUP BY template_id ORDER BY sum(repair_count);
-- initial_validation_score too, so the repairs report never reads a whole row
CREATE INDEX snapshots_time_template ON generation_snapshots
  (created_at, template_id, repair_count, initial_validation_score, estimated_cost);
-- per-tenant reports
CREATE INDEX snapshots_org_time ON generation_snapshots
  (org_id, created_at, template_id, estimated_cost, repair_count);
