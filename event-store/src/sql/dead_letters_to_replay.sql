SELECT id, event_id
FROM dead_letters
WHERE consumer = $1 AND replay_requested_at IS NOT NULL AND replayed_at IS NULL
ORDER BY id
LIMIT $2
