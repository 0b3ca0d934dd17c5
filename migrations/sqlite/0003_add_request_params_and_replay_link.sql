-- 0003: what a replay needs — the request parameters sent with the prompts
-- (temperature, max_tokens, seed, ...) and, on a replay's own snapshot, the id
-- of the snapshot it replayed.
ALTER TABLE generation_snapshots ADD COLUMN request_params TEXT
  CHECK (request_params IS NULL OR json_valid(request_params));
ALTER TABLE generation_snapshots ADD COLUMN replay_of TEXT;
