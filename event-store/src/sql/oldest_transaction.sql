-- The running transaction that holds the $all horizon back: the oldest one
-- that has a transaction id, anywhere in the cluster.
SELECT pid,
       coalesce(datname, '') AS datname,
       coalesce(state, '') AS state,
       extract(epoch FROM now() - xact_start)::float8 AS age_seconds
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL
ORDER BY age(backend_xid) DESC
LIMIT 1
