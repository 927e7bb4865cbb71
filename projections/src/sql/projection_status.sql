-- A projection's generations that are not retired, newest first.
SELECT p.name, p.paused, p.live_generation, g.generation, g.status, g.definition::text AS definition,
       g.transaction_id::text::int8 AS transaction_id, g.global_position, g.events_applied,
       g.last_event_at, g.failed_event_id, g.failed_position, g.error, g.failed_at,
       g.started_at, g.caught_up_at
FROM projections p
JOIN projection_generations g ON g.projection = p.name AND g.status <> 'retired'
WHERE ($1::text IS NULL OR p.name = $1)
ORDER BY p.name, g.generation DESC
