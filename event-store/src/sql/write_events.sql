-- Writes a batch's events in one statement, so that outside a transaction
-- it is one round trip and one commit.
-- Positions follow the array order (ORDER BY ord): within a stream, higher
-- versions get higher positions. The versions were decided from a cached or
-- locked view of each stream; (stream_id, event_version) being unique makes
-- a stale view fail the whole statement instead of leaving a gap.
WITH ins AS (
    INSERT INTO events (event_id, stream_id, aggregate_type, aggregate_id, event_version,
                        event_type, schema_version, event_data, data_binary, metadata,
                        correlation_id, causation_id)
    SELECT event_id, stream_id, aggregate_type, aggregate_id, event_version,
           event_type, schema_version, event_data::jsonb, data_binary, metadata::jsonb,
           correlation_id, causation_id
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::int8[],
                $6::text[], $7::int4[], $8::text[], $9::bytea[], $10::text[],
                $11::uuid[], $12::uuid[])
           WITH ORDINALITY
           AS i(event_id, stream_id, aggregate_type, aggregate_id, event_version,
                event_type, schema_version, event_data, data_binary, metadata,
                correlation_id, causation_id, ord)
    ORDER BY ord
    RETURNING event_id, global_position
)
SELECT ins.event_id, ins.global_position
FROM ins,
     -- Write-side contiguity, once per statement (a volatile function in
     -- FROM is not evaluated per row): each stream's first new version is
     -- 1 or follows a stored version.
     (SELECT dbswarm_check(
                 NOT EXISTS (SELECT 1
                             FROM unnest($13::text[], $14::int8[]) AS f(stream_id, first_version)
                             WHERE f.first_version > 1
                               AND NOT EXISTS (SELECT 1 FROM events e
                                               WHERE e.stream_id = f.stream_id
                                                 AND e.event_version = f.first_version - 1)),
                 'a stream''s new events do not follow its last stored version')) AS checked(ok)
