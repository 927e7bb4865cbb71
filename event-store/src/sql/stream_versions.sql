-- Current versions of streams, without locking (the optimistic path).
SELECT stream_id, version
FROM streams
WHERE stream_id = ANY($1::text[])
