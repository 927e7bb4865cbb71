-- The $all order: (transaction_id, global_position), and only rows of
-- transactions below the horizon (older than every transaction of this
-- database still running), so an event that commits late can never land
-- behind a reader's position.
SELECT global_position, event_id, stream_id, aggregate_type, aggregate_id, event_version,
       event_type, schema_version, event_data::text AS event_data, data_binary,
       metadata::text AS metadata, correlation_id, causation_id,
       transaction_id::text::int8 AS transaction_id, created_at
FROM events
WHERE (transaction_id, global_position) > ($1::text::xid8, $2::int8)
  AND transaction_id < dbswarm_horizon()
  AND ($3::text = '' OR starts_with(stream_id, $3::text))
  AND (cardinality($4::text[]) = 0 OR event_type = ANY($4::text[]))
-- Qualified: the bare name would mean the int8 output column and defeat
-- the (transaction_id, global_position) index.
ORDER BY events.transaction_id, events.global_position
LIMIT $5
