-- How far a checkpoint is behind, from a bounded window of the events
-- after it (a status request must not scan a million rows: for a building
-- generation, or a projection whose types are rare): how many of the
-- window are of its types, the age of the oldest of those, and the head
-- position, from which the caller estimates beyond the window.
WITH next AS (
    SELECT e.event_type, e.created_at
    FROM events e
    WHERE (e.transaction_id, e.global_position) > ($1::text::xid8, $2::int8)
    ORDER BY e.transaction_id, e.global_position
    LIMIT $4
), matching AS (
    SELECT * FROM next WHERE cardinality($3::text[]) = 0 OR event_type = ANY($3::text[])
)
SELECT (SELECT count(*) FROM next) AS scanned,
       (SELECT count(*) FROM matching) AS matched,
       (SELECT coalesce(max(global_position), 0) FROM events) AS head_position,
       coalesce((SELECT extract(epoch FROM now() - min(created_at))::float8 FROM matching), 0)::float8 AS lag_seconds
