-- The progress comment on a migration's version schema; no row when the
-- schema does not exist.
SELECT coalesce(obj_description(oid, 'pg_namespace'), '') FROM pg_namespace WHERE nspname = $1
