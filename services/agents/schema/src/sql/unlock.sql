-- Releases the session advisory lock of schema changes on a target.
SELECT pg_advisory_unlock($1)
