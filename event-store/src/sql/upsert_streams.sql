-- Advances each stream's version. The WHERE refuses to move a version
-- backwards or sideways; the caller checks that every row was written.
INSERT INTO streams AS s (stream_id, version)
SELECT stream_id, version
FROM unnest($1::text[], $2::int8[]) AS u(stream_id, version)
ON CONFLICT (stream_id) DO UPDATE
   SET version = EXCLUDED.version, updated_at = now()
 WHERE s.version < EXCLUDED.version
