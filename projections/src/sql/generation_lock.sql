-- Taken at the start of every batch: the checkpoint row is the fence that
-- lets one runner, and only one, apply the events after it.
SELECT g.status, g.transaction_id::text::int8 AS transaction_id, g.global_position,
       g.error IS NOT NULL AS failed, p.paused
FROM projection_generations g
JOIN projections p ON p.name = g.projection
WHERE g.projection = $1 AND g.generation = $2
FOR UPDATE OF g
