-- Why WAL is not arriving in the archive, when it is not.
SELECT failed_count, last_failed_wal FROM pg_stat_archiver
