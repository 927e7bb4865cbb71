SELECT global_position, event_id, stream_id, aggregate_type, aggregate_id, event_version,
       event_type, schema_version, event_data::text AS event_data, data_binary,
       metadata::text AS metadata, correlation_id, causation_id,
       transaction_id::text::int8 AS transaction_id, created_at
FROM events
WHERE event_id = $1
