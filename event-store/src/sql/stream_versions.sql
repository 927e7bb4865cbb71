-- The current version of each stream that has events: one backwards probe
-- of the (stream_id, event_version) index per stream.
SELECT s.stream_id, v.event_version
FROM unnest($1::text[]) AS s(stream_id)
CROSS JOIN LATERAL (
    SELECT e.event_version
    FROM events e
    WHERE e.stream_id = s.stream_id
    ORDER BY e.event_version DESC
    LIMIT 1
) AS v
