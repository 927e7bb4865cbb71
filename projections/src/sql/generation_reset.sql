-- Reset: the generation starts again from the beginning of $all (its table
-- is truncated in the same transaction).
UPDATE projection_generations
SET transaction_id = '0'::xid8, global_position = 0, events_applied = 0, last_event_at = NULL,
    failed_event_id = NULL, failed_position = NULL, failed_transaction_id = NULL,
    error = NULL, failed_at = NULL, caught_up_at = NULL, started_at = now(), updated_at = now()
WHERE projection = $1 AND generation = $2
