-- 0005: a snapshot is an audit record: the database itself refuses UPDATE.
-- (DELETE stays possible, for retention policies.)
CREATE TRIGGER generation_snapshots_immutable
BEFORE UPDATE ON generation_snapshots
BEGIN
  SELECT RAISE(ABORT, 'generation_snapshots rows are immutable');
END;
