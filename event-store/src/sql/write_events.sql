-- Writes a batch's events and advances its streams in one statement, so
-- that outside a transaction it is one round trip and one commit.
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
), moved AS (
    -- A stream's version only moves forwards; a row that would not move
    -- is not returned, and the check below aborts the statement.
    INSERT INTO streams AS s (stream_id, version)
    SELECT stream_id, version
    FROM unnest($13::text[], $14::int8[]) AS u(stream_id, version)
    ON CONFLICT (stream_id) DO UPDATE
       SET version = EXCLUDED.version, updated_at = now()
     WHERE s.version < EXCLUDED.version
    RETURNING 1
)
SELECT ins.event_id, ins.global_position
FROM ins,
     -- once per statement, not per row: a volatile function in FROM
     (SELECT dbswarm_check((SELECT count(*) FROM moved) = cardinality($13::text[]),
                           'a stream version would not move forwards')) AS checked(ok)
