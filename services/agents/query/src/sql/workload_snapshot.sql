-- The statements of the current database by total execution time, the
-- most time-consuming first (pg_stat_statements, PostgreSQL 15 columns).
SELECT queryid,
       left(query, $2) AS query,
       sum(calls)::int8 AS calls,
       sum(total_exec_time)::float8 AS total_exec_ms,
       (sum(total_exec_time) / greatest(sum(calls), 1))::float8 AS mean_exec_ms,
       max(stddev_exec_time)::float8 AS stddev_exec_ms,
       sum(rows)::int8 AS rows
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND queryid IS NOT NULL
GROUP BY queryid, query
ORDER BY sum(total_exec_time) DESC
LIMIT $1
