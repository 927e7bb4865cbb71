-- The $all horizon, per database.
--
-- Readers of the global order take only events of transactions below the
-- horizon: every transaction that could still commit events below it has
-- ended, so nothing can ever appear behind a reader's position. A
-- transaction can write this database's events only from a backend (or a
-- prepared transaction) of this database, so transactions running in other
-- databases of the cluster do not count: a batch job in the application's
-- own database must not stall dbswarm's readers.
--
-- The horizon is the oldest transaction of the caller's snapshot that is
-- still running and not known to belong to another database, or the
-- snapshot's xmax when there is none. Why that is safe:
-- - A transaction id names one transaction, and a transaction never moves
--   between databases (PREPARE keeps its database), so "(database, xid)"
--   pairs read from the backend status are true whenever the xid is in the
--   snapshot: the status is read after the snapshot is taken (its cached
--   copy cleared first), so a backend slot reused after the snapshot shows
--   only xids assigned after it, which are not in the snapshot's list.
-- - A running transaction whose database is not known (it ended before the
--   status was read, a process without a database) counts as this
--   database's: the horizon may then stay lower than it need be for one
--   call, never higher.
-- - Transactions not in the snapshot are below xmin (ended) or at/after
--   xmax (excluded: the horizon is at most xmax, and new transaction ids
--   only grow).
-- - Prepared transactions of this database count, although one that wrote
--   events cannot be prepared (the events trigger sends NOTIFY).
-- STABLE: it uses the calling statement's snapshot, so a query can compare
-- its rows with it (read_all.sql) and see exactly the transactions it
-- judged. Clearing the status snapshot is the only side effect.
CREATE FUNCTION dbswarm_horizon() RETURNS xid8
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED AS $$
DECLARE
    snap pg_snapshot := pg_current_snapshot();
    horizon xid8;
BEGIN
    IF pg_snapshot_xmin(snap) = pg_snapshot_xmax(snap) THEN
        RETURN pg_snapshot_xmax(snap); -- nothing running at all
    END IF;
    PERFORM pg_stat_clear_snapshot();
    SELECT min(running) INTO horizon
    FROM pg_snapshot_xip(snap) AS running
    WHERE xid(running) NOT IN (
        SELECT a.backend_xid
        FROM pg_stat_get_activity(NULL) AS a
        WHERE a.backend_xid IS NOT NULL
          AND a.datid IS NOT NULL
          AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())
        UNION ALL
        SELECT p.transaction
        FROM pg_prepared_xacts AS p
        WHERE p.database <> current_database());
    RETURN coalesce(horizon, pg_snapshot_xmax(snap));
END
$$;
