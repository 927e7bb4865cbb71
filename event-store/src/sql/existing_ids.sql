-- Which of these event ids are already stored.
SELECT event_id
FROM events
WHERE event_id = ANY($1::uuid[])
