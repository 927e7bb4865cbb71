-- Stored events sharing an id with the request, and whether their content
-- (stream, type, payload, metadata) equals the request's. jsonb equality
-- ignores key order and whitespace, as a retried request may differ in both.
SELECT e.event_id,
       e.stream_id,
       e.event_version,
       e.global_position,
       (e.stream_id = i.stream_id
        AND e.event_type = i.event_type
        AND e.event_data IS NOT DISTINCT FROM i.event_data::jsonb
        AND e.data_binary IS NOT DISTINCT FROM i.data_binary
        AND e.metadata = i.metadata::jsonb) AS same_content
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])
       AS i(event_id, stream_id, event_type, event_data, data_binary, metadata)
JOIN events e ON e.event_id = i.event_id
