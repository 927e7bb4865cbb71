-- Whether PostgreSQL's archiver is failing: failures so far, and the last
-- one's segment and time.
SELECT failed_count, last_failed_wal, last_failed_time::text AS last_failed_time FROM pg_stat_archiver
