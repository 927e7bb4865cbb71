SELECT transaction_id::text::int8 AS transaction_id, global_position FROM events WHERE event_id = $1
