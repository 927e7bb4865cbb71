SELECT transaction_id::text::int8, global_position
FROM relay_checkpoints
WHERE relay = $1
