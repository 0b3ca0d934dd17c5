-- 0008: tamper evidence (README, "Tamper evidence"). Every row written from
-- now on is sealed: the digests of its payloads (prompts, content, drafts),
-- its place in its writer's hash chain and its record hash. Rows written
-- before stay as they are ("legacy" rows); their number is recorded here so
-- that a row slipped in later without a seal is seen, and the first signed
-- checkpoint seals them (README, "Rows older than the chain").
ALTER TABLE generation_snapshots ADD COLUMN drafts json;
ALTER TABLE generation_snapshots ADD COLUMN final_system_prompt_sha256 text COLLATE "C";
ALTER TABLE generation_snapshots ADD COLUMN final_user_prompt_sha256 text COLLATE "C";
ALTER TABLE generation_snapshots ADD COLUMN content_sha256 text COLLATE "C";
ALTER TABLE generation_snapshots ADD COLUMN drafts_sha256 text COLLATE "C";
ALTER TABLE generation_snapshots ADD COLUMN chain_id text COLLATE "C";
ALTER TABLE generation_snapshots ADD COLUMN chain_seq bigint;
ALTER TABLE generation_snapshots ADD COLUMN prev_hash text COLLATE "C";
ALTER TABLE generation_snapshots ADD COLUMN record_hash text COLLATE "C";
ALTER TABLE generation_snapshots ADD COLUMN purged_at timestamptz(3);
ALTER TABLE generation_snapshots ADD COLUMN purged_by bigint; -- purges.purge_id

CREATE UNIQUE INDEX snapshots_chain ON generation_snapshots (chain_id, chain_seq) WHERE chain_id IS NOT NULL;

-- one row per chain, written in the transaction of the chain's first row
CREATE TABLE chains (
  chain_id   text COLLATE "C" PRIMARY KEY CHECK (length(chain_id) = 26),
  started_at timestamptz(3) NOT NULL DEFAULT now(),
  host       text,
  pid        integer
);

CREATE TABLE chain_genesis (
  legacy_rows bigint NOT NULL,
  sealed_at   timestamptz(3) NOT NULL DEFAULT now()
);
INSERT INTO chain_genesis (legacy_rows) SELECT count(*) FROM generation_snapshots;

-- every purge, as its own record
CREATE TABLE purges (
  purge_id   bigserial PRIMARY KEY,
  purged_at  timestamptz(3) NOT NULL DEFAULT now(),
  older_than text COLLATE "C" NOT NULL CHECK (older_than ~ '^[0-9]{4}-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9]$'),
  what       text NOT NULL CHECK (what = 'payloads'),
  rows       bigint NOT NULL
);

-- A new row is sealed, or refused.
CREATE FUNCTION generation_snapshots_sealed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.record_hash IS NULL OR NEW.chain_id IS NULL OR NEW.chain_seq IS NULL OR NEW.prev_hash IS NULL THEN
    RAISE EXCEPTION 'generation_snapshots rows must be sealed (chain_id, chain_seq, prev_hash, record_hash)';
  END IF;
  RETURN NEW;
END
$$;
CREATE TRIGGER generation_snapshots_sealed
BEFORE INSERT ON generation_snapshots
FOR EACH ROW EXECUTE FUNCTION generation_snapshots_sealed();

-- The one change a row may see: a purge of its payloads (prompts, content,
-- drafts set to NULL, purged_at set once), everything else unchanged.
CREATE OR REPLACE FUNCTION generation_snapshots_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.purged_at IS NULL AND NEW.purged_at IS NOT NULL AND OLD.record_hash IS NOT NULL
     AND OLD.purged_by IS NULL AND NEW.purged_by IS NOT NULL
     AND EXISTS (SELECT 1 FROM purges p WHERE p.purge_id = NEW.purged_by
                 AND (p.older_than::timestamp AT TIME ZONE 'UTC') > OLD.created_at)
     AND NEW.final_system_prompt IS NULL AND NEW.final_user_prompt IS NULL
     AND NEW.content IS NULL AND NEW.drafts IS NULL
     AND NEW.id IS NOT DISTINCT FROM OLD.id AND NEW.created_at IS NOT DISTINCT FROM OLD.created_at AND NEW.org_id IS NOT DISTINCT FROM OLD.org_id
     AND NEW.user_id IS NOT DISTINCT FROM OLD.user_id AND NEW.platform IS NOT DISTINCT FROM OLD.platform AND NEW.template_id IS NOT DISTINCT FROM OLD.template_id
     AND NEW.template_version IS NOT DISTINCT FROM OLD.template_version AND NEW.status IS NOT DISTINCT FROM OLD.status AND NEW.error IS NOT DISTINCT FROM OLD.error
     AND NEW.replay_of IS NOT DISTINCT FROM OLD.replay_of AND NEW.final_system_prompt_sha256 IS NOT DISTINCT FROM OLD.final_system_prompt_sha256 AND NEW.final_user_prompt_sha256 IS NOT DISTINCT FROM OLD.final_user_prompt_sha256
     AND NEW.content_sha256 IS NOT DISTINCT FROM OLD.content_sha256 AND NEW.drafts_sha256 IS NOT DISTINCT FROM OLD.drafts_sha256 AND NEW.chain_id IS NOT DISTINCT FROM OLD.chain_id
     AND NEW.chain_seq IS NOT DISTINCT FROM OLD.chain_seq AND NEW.prev_hash IS NOT DISTINCT FROM OLD.prev_hash AND NEW.record_hash IS NOT DISTINCT FROM OLD.record_hash
     AND NEW.token_metrics::text IS NOT DISTINCT FROM OLD.token_metrics::text
     AND NEW.performance_metrics::text IS NOT DISTINCT FROM OLD.performance_metrics::text
     AND NEW.repair_metrics::text IS NOT DISTINCT FROM OLD.repair_metrics::text
     AND NEW.request_params::text IS NOT DISTINCT FROM OLD.request_params::text THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'generation_snapshots rows are immutable (a purge of payloads is the one change allowed)';
END
$$;

-- Rows are not deleted or truncated (a purge removes what retention
-- requires); the chain would show a deletion anyway.
CREATE FUNCTION genaudit_refuse_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% rows are not deleted (genaudit purge removes payloads)', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER generation_snapshots_no_delete BEFORE DELETE ON generation_snapshots
FOR EACH ROW EXECUTE FUNCTION genaudit_refuse_delete();
CREATE TRIGGER generation_snapshots_no_truncate BEFORE TRUNCATE ON generation_snapshots
FOR EACH STATEMENT EXECUTE FUNCTION genaudit_refuse_delete();
CREATE FUNCTION genaudit_refuse_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% rows are immutable', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER chains_immutable BEFORE UPDATE ON chains FOR EACH ROW EXECUTE FUNCTION genaudit_refuse_update();
CREATE TRIGGER chains_no_delete BEFORE DELETE ON chains FOR EACH ROW EXECUTE FUNCTION genaudit_refuse_delete();
CREATE TRIGGER purges_immutable BEFORE UPDATE ON purges FOR EACH ROW EXECUTE FUNCTION genaudit_refuse_update();
CREATE FUNCTION genaudit_written_once() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is written once, by migration 0008', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER chain_genesis_immutable BEFORE INSERT OR UPDATE OR DELETE ON chain_genesis
FOR EACH ROW EXECUTE FUNCTION genaudit_written_once();
CREATE TRIGGER chain_genesis_no_truncate BEFORE TRUNCATE ON chain_genesis
FOR EACH STATEMENT EXECUTE FUNCTION genaudit_written_once();
CREATE TRIGGER purges_no_delete BEFORE DELETE ON purges FOR EACH ROW EXECUTE FUNCTION genaudit_refuse_delete();
