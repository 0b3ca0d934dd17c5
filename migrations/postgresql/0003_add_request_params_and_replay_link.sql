-- 0003: what a replay needs — the request parameters sent with the prompts
-- (temperature, max_tokens, seed, ...) and, on a replay's own snapshot, the id
-- of the snapshot it replayed.
ALTER TABLE generation_snapshots ADD COLUMN request_params json;
ALTER TABLE generation_snapshots ADD COLUMN replay_of text COLLATE "C";
