-- The runner stops at this event until resumed, reset, or told to skip it.
UPDATE projection_generations
SET failed_event_id = $3, failed_position = $4, failed_transaction_id = $5::text::xid8,
    error = $6, failed_at = now(), updated_at = now()
WHERE projection = $1 AND generation = $2
