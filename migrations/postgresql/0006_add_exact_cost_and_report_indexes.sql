-- 0006: the exact cost, and indexes for the reports' default filters (the
-- same as the SQLite store's; see migrations/sqlite/0006).
-- estimated_cost_picousd: token_metrics.estimated_cost_picousd (integer
-- picodollars, 1e-12 USD, the meter's exact sum); for a row written before
-- it, the recorded float cost * 1e12 rounded half up (trunc(x + 0.5): the
-- same double arithmetic as SQLite's CAST, so both stores agree); NULL when
-- the cost is unknown, never 0.
ALTER TABLE generation_snapshots ADD COLUMN estimated_cost_picousd bigint
  GENERATED ALWAYS AS (coalesce((token_metrics ->> 'estimated_cost_picousd')::bigint,
    trunc((token_metrics ->> 'estimated_cost')::double precision * 1e12::double precision
      + 0.5::double precision)::bigint)) STORED;

DROP INDEX snapshots_template_time;
DROP INDEX snapshots_time_template;
DROP INDEX snapshots_org_time;
CREATE INDEX snapshots_template_time ON generation_snapshots
  (template_id, created_at, status, replay_of, estimated_cost_picousd, total_tokens, repair_count, estimated_cost);
CREATE INDEX snapshots_time_template ON generation_snapshots
  (created_at, template_id, status, replay_of, repair_count, initial_validation_score, estimated_cost_picousd,
   total_tokens, estimated_cost);
CREATE INDEX snapshots_org_time ON generation_snapshots
  (org_id, created_at, template_id, status, replay_of, estimated_cost_picousd, repair_count, estimated_cost,
   total_tokens);
