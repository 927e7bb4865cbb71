INSERT INTO dead_letters (consumer, event_id, stream_id, event_version, error, deliveries)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (consumer, event_id) DO UPDATE
   SET error = EXCLUDED.error,
       deliveries = EXCLUDED.deliveries,
       created_at = now(),
       replay_requested_at = NULL,
       replayed_at = NULL
