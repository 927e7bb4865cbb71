-- How far a checkpoint is behind: events of its types committed after it,
-- counted exactly up to a bound (so a far-behind projection, e.g. one
-- being rebuilt, costs a bounded scan; beyond the bound the caller
-- estimates from head_position), and the age of the oldest of them.
SELECT (SELECT count(*)
        FROM (SELECT 1 FROM events e
              WHERE (e.transaction_id, e.global_position) > ($1::text::xid8, $2::int8)
                AND (cardinality($3::text[]) = 0 OR e.event_type = ANY($3::text[]))
              LIMIT $4) AS pending) AS lag_events,
       (SELECT coalesce(max(global_position), 0) FROM events) AS head_position,
       coalesce((SELECT extract(epoch FROM now() - e.created_at)::float8
                 FROM events e
                 WHERE (e.transaction_id, e.global_position) > ($1::text::xid8, $2::int8)
                   AND (cardinality($3::text[]) = 0 OR e.event_type = ANY($3::text[]))
                 ORDER BY e.transaction_id, e.global_position
                 LIMIT 1), 0)::float8 AS lag_seconds
