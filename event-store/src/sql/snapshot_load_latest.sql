-- The newest snapshot of a stream with exactly the schema version asked
-- for: a snapshot of another schema version is never returned (its state
-- may have another shape or meaning). The primary key is scanned backwards.
SELECT stream_id, stream_version, schema_version, state::text AS state, created_at
FROM snapshots
WHERE stream_id = $1 AND schema_version = $2
ORDER BY stream_version DESC
LIMIT 1
