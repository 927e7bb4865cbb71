-- Events not yet released, and the age of the oldest of them (seconds).
SELECT count(*)::int8 AS events,
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS seconds
FROM events
WHERE (transaction_id, global_position) > ($1::text::xid8, $2::int8)
