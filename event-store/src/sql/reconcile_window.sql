-- The last $1-limited events released by the relay (at or before its
-- checkpoint), newest first: the window a reconciliation checks.
SELECT global_position, event_id, stream_id, aggregate_type, aggregate_id, event_version,
       event_type, schema_version, event_data::text AS event_data, data_binary,
       metadata::text AS metadata, correlation_id, causation_id,
       transaction_id::text::int8 AS transaction_id, created_at
FROM events
WHERE (transaction_id, global_position) <= ($1::text::xid8, $2::int8)
ORDER BY events.transaction_id DESC, events.global_position DESC
LIMIT $3
