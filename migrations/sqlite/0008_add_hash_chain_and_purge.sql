-- 0008: tamper evidence (README, "Tamper evidence"). Every row written from
-- now on is sealed: the digests of its payloads (prompts, content, drafts),
-- its place in its writer's hash chain and its record hash. Rows written
-- before stay as they are ("legacy" rows); their number is recorded here so
-- that a row slipped in later without a seal is seen, and the first signed
-- checkpoint seals them (README, "Rows older than the chain").
ALTER TABLE generation_snapshots ADD COLUMN drafts TEXT CHECK (drafts IS NULL OR json_valid(drafts));
ALTER TABLE generation_snapshots ADD COLUMN final_system_prompt_sha256 TEXT;
ALTER TABLE generation_snapshots ADD COLUMN final_user_prompt_sha256 TEXT;
ALTER TABLE generation_snapshots ADD COLUMN content_sha256 TEXT;
ALTER TABLE generation_snapshots ADD COLUMN drafts_sha256 TEXT;
ALTER TABLE generation_snapshots ADD COLUMN chain_id TEXT;
ALTER TABLE generation_snapshots ADD COLUMN chain_seq INTEGER;
ALTER TABLE generation_snapshots ADD COLUMN prev_hash TEXT;
ALTER TABLE generation_snapshots ADD COLUMN record_hash TEXT;
ALTER TABLE generation_snapshots ADD COLUMN purged_at TEXT;
ALTER TABLE generation_snapshots ADD COLUMN purged_by INTEGER; -- purges.purge_id

CREATE UNIQUE INDEX snapshots_chain ON generation_snapshots (chain_id, chain_seq) WHERE chain_id IS NOT NULL;

-- one row per chain, written in the transaction of the chain's first row
CREATE TABLE chains (
  chain_id   TEXT PRIMARY KEY NOT NULL CHECK (length(chain_id) = 26),
  started_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  host       TEXT,
  pid        INTEGER
);

CREATE TABLE chain_genesis (
  legacy_rows INTEGER NOT NULL,
  sealed_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
INSERT INTO chain_genesis (legacy_rows) SELECT count(*) FROM generation_snapshots;
CREATE TRIGGER chain_genesis_immutable BEFORE UPDATE ON chain_genesis
BEGIN SELECT RAISE(ABORT, 'chain_genesis is written once, by migration 0008'); END;
CREATE TRIGGER chain_genesis_no_delete BEFORE DELETE ON chain_genesis
BEGIN SELECT RAISE(ABORT, 'chain_genesis is written once, by migration 0008'); END;
CREATE TRIGGER chain_genesis_no_insert BEFORE INSERT ON chain_genesis
BEGIN SELECT RAISE(ABORT, 'chain_genesis is written once, by migration 0008'); END;

-- every purge, as its own record
CREATE TABLE purges (
  purge_id   INTEGER PRIMARY KEY,
  purged_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  older_than TEXT NOT NULL CHECK (older_than GLOB '[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9]'),
  what       TEXT NOT NULL CHECK (what = 'payloads'),
  rows       INTEGER NOT NULL
);

-- A new row is sealed, or refused.
CREATE TRIGGER generation_snapshots_sealed
BEFORE INSERT ON generation_snapshots
WHEN NEW.record_hash IS NULL OR NEW.chain_id IS NULL OR NEW.chain_seq IS NULL OR NEW.prev_hash IS NULL
BEGIN
  SELECT RAISE(ABORT, 'generation_snapshots rows must be sealed (chain_id, chain_seq, prev_hash, record_hash)');
END;

-- The one change a row may see: a purge of its payloads (prompts, content,
-- drafts set to NULL, purged_at set once, purged_by naming a recorded purge
-- whose cutoff is after the row's created_at), everything else unchanged.
DROP TRIGGER generation_snapshots_immutable;
CREATE TRIGGER generation_snapshots_immutable
BEFORE UPDATE ON generation_snapshots
WHEN NOT (
  OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL AND OLD.record_hash IS NOT NULL
  AND OLD.purged_by IS NULL AND NEW.purged_by IS NOT NULL
  AND EXISTS (SELECT 1 FROM purges p WHERE p.purge_id = NEW.purged_by AND p.older_than > OLD.created_at)
  AND NEW.final_system_prompt IS NULL AND NEW.final_user_prompt IS NULL
  AND NEW.content IS NULL AND NEW.drafts IS NULL
  AND NEW.id IS OLD.id AND NEW.created_at IS OLD.created_at AND NEW.org_id IS OLD.org_id
  AND NEW.user_id IS OLD.user_id AND NEW.platform IS OLD.platform AND NEW.template_id IS OLD.template_id
  AND NEW.template_version IS OLD.template_version AND NEW.status IS OLD.status AND NEW.error IS OLD.error
  AND NEW.token_metrics IS OLD.token_metrics AND NEW.performance_metrics IS OLD.performance_metrics
  AND NEW.repair_metrics IS OLD.repair_metrics AND NEW.request_params IS OLD.request_params
  AND NEW.replay_of IS OLD.replay_of
  AND NEW.final_system_prompt_sha256 IS OLD.final_system_prompt_sha256
  AND NEW.final_user_prompt_sha256 IS OLD.final_user_prompt_sha256
  AND NEW.content_sha256 IS OLD.content_sha256 AND NEW.drafts_sha256 IS OLD.drafts_sha256
  AND NEW.chain_id IS OLD.chain_id AND NEW.chain_seq IS OLD.chain_seq
  AND NEW.prev_hash IS OLD.prev_hash AND NEW.record_hash IS OLD.record_hash)
BEGIN
  SELECT RAISE(ABORT, 'generation_snapshots rows are immutable (a purge of payloads is the one change allowed)');
END;

-- Rows are not deleted (a purge removes what retention requires); the chain
-- would show a deletion anyway.
CREATE TRIGGER generation_snapshots_no_delete
BEFORE DELETE ON generation_snapshots
BEGIN
  SELECT RAISE(ABORT, 'generation_snapshots rows are not deleted (genaudit purge removes payloads)');
END;
CREATE TRIGGER chains_immutable BEFORE UPDATE ON chains
BEGIN SELECT RAISE(ABORT, 'chains rows are immutable'); END;
CREATE TRIGGER chains_no_delete BEFORE DELETE ON chains
BEGIN SELECT RAISE(ABORT, 'chains rows are not deleted'); END;
CREATE TRIGGER purges_immutable BEFORE UPDATE ON purges
BEGIN SELECT RAISE(ABORT, 'purges rows are immutable'); END;
CREATE TRIGGER purges_no_delete BEFORE DELETE ON purges
BEGIN SELECT RAISE(ABORT, 'purges rows are not deleted'); END;
