SELECT event_version
FROM events
WHERE stream_id = $1
ORDER BY event_version DESC
LIMIT 1
