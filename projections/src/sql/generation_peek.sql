-- A runner's look before it reads a page: no lock, so no transaction id
-- (an idle runner must not hold the database's $all horizon back).
SELECT g.status, g.transaction_id::text::int8 AS transaction_id, g.global_position,
       g.error IS NOT NULL AS failed, p.paused
FROM projection_generations g
JOIN projections p ON p.name = g.projection
WHERE g.projection = $1 AND g.generation = $2
