-- Moves the checkpoint past exactly the failed event (the caller has
-- recorded the skip as an event first) and clears the failure.
UPDATE projection_generations
SET transaction_id = failed_transaction_id, global_position = failed_position,
    failed_event_id = NULL, failed_position = NULL, failed_transaction_id = NULL,
    error = NULL, failed_at = NULL, updated_at = now()
WHERE projection = $1 AND generation = $2 AND failed_event_id = $3
