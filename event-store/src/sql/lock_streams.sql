-- Current versions of the batch's streams, locked until commit. Sorted so
-- that two batches locking overlapping streams cannot deadlock.
SELECT stream_id, version
FROM streams
WHERE stream_id = ANY($1::text[])
ORDER BY stream_id
FOR UPDATE
