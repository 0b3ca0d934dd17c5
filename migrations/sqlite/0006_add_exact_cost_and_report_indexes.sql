-- 0006: the exact cost, and indexes for the reports' default filters.
-- estimated_cost_picousd: the cost in integer picodollars (1e-12 USD), as the
-- meter wrote it (token_metrics.estimated_cost_picousd, an exact sum of the
-- calls' costs); for a row written before it (schema 5 and older, or a caller
-- that gave only estimated_cost), the recorded float cost * 1e12 rounded half
-- up (CAST truncates; costs are never negative); NULL when the cost is
-- unknown, never 0. Reports sum this integer, so totals are exact.
ALTER TABLE generation_snapshots ADD COLUMN estimated_cost_picousd INTEGER
  GENERATED ALWAYS AS (coalesce(json_extract(token_metrics, '$.estimated_cost_picousd'),
    CAST(json_extract(token_metrics, '$.estimated_cost') * 1e12 + 0.5 AS INTEGER))) VIRTUAL;

-- The reports count status = 'completed' AND replay_of IS NULL by default:
-- status and replay_of join the covering indexes (same names, same leading
-- columns as 0004), with the exact cost beside the float one.
DROP INDEX snapshots_template_time;
DROP INDEX snapshots_time_template;
DROP INDEX snapshots_org_time;
-- Financial Test: per template [and period], completed non-replays
CREATE INDEX snapshots_template_time ON generation_snapshots
  (template_id, created_at, status, replay_of, estimated_cost_picousd, total_tokens, repair_count, estimated_cost);
-- Stability Test and every report over a period
CREATE INDEX snapshots_time_template ON generation_snapshots
  (created_at, template_id, status, replay_of, repair_count, initial_validation_score, estimated_cost_picousd,
   total_tokens, estimated_cost);
-- per-tenant reports
CREATE INDEX snapshots_org_time ON generation_snapshots
  (org_id, created_at, template_id, status, replay_of, estimated_cost_picousd, repair_count, estimated_cost,
   total_tokens);
