SELECT id, consumer, event_id, stream_id, event_version, error, deliveries, created_at,
       replay_requested_at, replayed_at
FROM dead_letters
WHERE ($1::text = '' OR consumer = $1) AND id > $2
ORDER BY id
LIMIT $3
