-- The running transaction that holds the $all horizon back: the oldest one
-- with a transaction id that can write this database's events (a backend
-- of this database, or of none, or a prepared transaction of this
-- database; see migrations/0010_horizon.sql). Transactions of other
-- databases do not hold it back and are not reported.
WITH holders AS (
    SELECT a.pid, d.datname, coalesce(a.state, '') AS state, a.backend_xid AS xid,
           extract(epoch FROM now() - a.xact_start)::float8 AS age_seconds
    FROM pg_stat_activity AS a
    LEFT JOIN pg_database AS d ON d.oid = a.datid
    WHERE a.backend_xid IS NOT NULL
      AND (a.datid IS NULL OR d.datname = current_database())
    UNION ALL
    SELECT 0, p.database, 'prepared (' || p.gid || ')', p.transaction,
           extract(epoch FROM now() - p.prepared)::float8
    FROM pg_prepared_xacts AS p
    WHERE p.database = current_database()
)
SELECT pid, coalesce(datname, '') AS datname, state, age_seconds
FROM holders
ORDER BY age(xid) DESC
LIMIT 1
