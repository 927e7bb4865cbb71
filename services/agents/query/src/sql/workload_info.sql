-- Entries pg_stat_statements evicted so far, and when it was last reset.
SELECT dealloc, stats_reset::text FROM pg_stat_statements_info
