-- One statement for the whole batch. ORDER BY ord makes positions follow
-- the array order, so within a stream higher versions get higher positions.
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
