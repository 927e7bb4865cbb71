-- Saves a snapshot in one statement (one round trip, atomic):
-- - refuses a version the stream does not have yet. `current_version` is
--   the stream's version now; versions only grow, so a snapshot accepted
--   here is never ahead of its stream, now or later;
-- - deletes the stream's older snapshots (only the newest is kept, see
--   migrations/0006_snapshots.sql) and any ahead of the stream (corrupt:
--   written by hand, or restored from another database);
-- - replaces a snapshot at the same version (e.g. of another schema
--   version).
-- Returns the stream's current version (0 = no such stream) and whether the
-- snapshot was written; when it was refused nothing is written or deleted.
WITH current_version AS (
    SELECT coalesce((SELECT event_version
                     FROM events
                     WHERE stream_id = $1
                     ORDER BY event_version DESC
                     LIMIT 1), 0) AS version
),
removed AS (
    DELETE FROM snapshots s
    USING current_version c
    WHERE s.stream_id = $1
      AND $2 <= c.version
      AND (s.stream_version < $2 OR s.stream_version > c.version)
),
saved AS (
    INSERT INTO snapshots (stream_id, stream_version, schema_version, state)
    SELECT $1, $2, $3, $4::text::jsonb
    FROM current_version c
    WHERE $2 <= c.version
    ON CONFLICT (stream_id, stream_version) DO UPDATE
       SET schema_version = EXCLUDED.schema_version,
           state = EXCLUDED.state,
           created_at = now()
    RETURNING 1
)
SELECT c.version, EXISTS (SELECT 1 FROM saved) AS saved
FROM current_version c
