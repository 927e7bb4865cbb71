-- For the user tables of the current database: the planner's row count
-- (pg_class.reltuples, -1 before the first ANALYZE/VACUUM), the live rows
-- the statistics system counts, rows changed since the last ANALYZE, and
-- whether the table was ever analyzed.
SELECT s.schemaname || '.' || s.relname AS table_name,
       c.reltuples::float8 AS planner_rows,
       s.n_live_tup::float8 AS live_rows,
       s.n_mod_since_analyze::float8 AS modified_since_analyze,
       (s.last_analyze IS NOT NULL OR s.last_autoanalyze IS NOT NULL) AS analyzed
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
ORDER BY 1
LIMIT $1
