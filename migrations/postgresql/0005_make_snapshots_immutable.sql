-- 0005: a snapshot is an audit record: the database itself refuses UPDATE.
-- (DELETE and TRUNCATE stay possible, for retention policies.)
CREATE FUNCTION generation_snapshots_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'generation_snapshots rows are immutable';
END
$$;
CREATE TRIGGER generation_snapshots_immutable
BEFORE UPDATE ON generation_snapshots
FOR EACH ROW EXECUTE FUNCTION generation_snapshots_immutable();
