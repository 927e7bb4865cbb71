-- The session advisory lock of schema changes on a target (released when the session ends).
SELECT pg_try_advisory_lock($1)
