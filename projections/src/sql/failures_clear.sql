-- Resume: every generation of the projection tries its failed event again.
UPDATE projection_generations
SET failed_event_id = NULL, failed_position = NULL, failed_transaction_id = NULL,
    error = NULL, failed_at = NULL, updated_at = now()
WHERE projection = $1 AND status <> 'retired' AND error IS NOT NULL
